"""Train the embedded demo model from scratch on synthetic aerial scenes, with one command.

    python -m edgetile.train.demo_model --out runs/demo

No pretrained weights can be downloaded where edgetile is built, so the demo model is a YOLOv8n built
from its YAML (random initialisation) and trained on tiles cut from synthetic scenes the way the
runtime cuts them (1024 px windows, overlap 0.2), at a 512 px model input, so a 1024 tile is seen at
half resolution. It is a demonstration model: it finds the synthetic people of its training
distribution and nothing more. The ONNX it exports (dynamic batch, Ultralytics metadata) is what
``edgetile demo`` and ``edgetile detect`` use by default when copied to ``runtime/data/demo.onnx``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import cv2

from .synth import CLASS_NAMES, SceneConfig, make_scene
from .tiles import Photo, write_tile_dataset

# People from 24 to 130 px long: drone altitudes of roughly 40-100 m with a 4000x3000 camera.
DEMO_SCENES = SceneConfig(width=2048, height=1536, people=(3, 9), person_px=(24, 130), empty_fraction=0.05)


def build_dataset(out: Path, train_scenes: int, val_scenes: int, seed: int, negatives: int) -> Path:
    """Write synthetic scenes cut into 1024 px tiles as an Ultralytics dataset; return data.yaml."""

    def photo(i: int, split: str) -> Photo:
        sc = make_scene(seed + i, DEMO_SCENES)
        return Photo(
            f"scene_{seed + i:05d}",
            lambda sc=sc: sc.image,
            DEMO_SCENES.width,
            DEMO_SCENES.height,
            sc.boxes,
            sc.class_ids,
            split,
        )

    photos = [photo(i, "train") for i in range(train_scenes)]
    photos += [photo(train_scenes + i, "val") for i in range(val_scenes)]
    return write_tile_dataset(
        photos,
        out / "tiles",
        CLASS_NAMES,
        tile=1024,
        overlap=0.2,
        min_visible=0.5,
        negatives=negatives,
        seed=seed,
        progress=True,
    )


HELDOUT_SEED = 900_000  # far from the training seeds: scenes the model has never seen


def evaluate_demo(onnx_path: Path, out: Path, count: int) -> dict:
    """Full-photo accuracy of a demo ONNX on held-out 4000x3000 synthetic scenes, via the tiled runtime.

    Returns the metrics dict (also written to out/heldout_metrics.json).
    """
    from edgetile.runtime.detector import DetectConfig, Detector
    from edgetile.runtime.evaluation.annotations import load_dataset
    from edgetile.runtime.evaluation.metrics import evaluate
    from edgetile.runtime.files import write_json_atomic

    from .synth import write_dataset

    heldout = out / "heldout"
    if not (heldout / "annotations.json").exists():
        write_dataset(
            heldout,
            count,
            seed=HELDOUT_SEED,
            config=SceneConfig(width=4000, height=3000, people=(3, 9), person_px=(24, 130)),
            progress=True,
        )
    data = load_dataset(heldout, format="voc")
    with Detector(onnx_path, config=DetectConfig(conf=0.001)) as det:
        result = evaluate(det, data, score_thr=0.25, progress=True)
    metrics = {
        "model": str(onnx_path),
        "photos": len(data),
        "people": data.box_count,
        "tiling": "1024 px tiles, overlap 0.2, IOS merge 0.5",
        **result.to_dict(),
    }
    write_json_atomic(out / "heldout_metrics.json", metrics)
    print(result.summary())
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m edgetile.train.demo_model",
        description="Train the demo model from scratch on synthetic scenes and export its ONNX.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="work folder (default: runs/demo)")
    p.add_argument(
        "--train-scenes", type=int, default=48, help="synthetic 2048x1536 training photos (default: 48)"
    )
    p.add_argument("--val-scenes", type=int, default=8, help="synthetic validation photos (default: 8)")
    p.add_argument("--negatives", type=int, default=40, help="empty tiles kept in all (default: 40)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    p.add_argument("--imgsz", type=int, default=512, help="model input size (default: 512)")
    p.add_argument("--batch", type=int, default=16, help="training batch (default: 16)")
    p.add_argument("--seed", type=int, default=1000, help="scene seed (default: 1000)")
    p.add_argument("--device", default="cpu", help="training device: cpu or a CUDA index (default: cpu)")
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
        default=12,
        help="held-out 4000x3000 scenes for the full-photo mAP report; 0 skips it (default: 12)",
    )
    a = p.parse_args(argv)

    from ultralytics import YOLO

    if a.export_only is None:
        data = a.out / "tiles" / "data.yaml"
        if not data.exists():
            data = build_dataset(a.out, a.train_scenes, a.val_scenes, a.seed, a.negatives)
        model = YOLO("yolov8n.yaml")
        model.train(
            data=str(data),
            epochs=a.epochs,
            imgsz=a.imgsz,
            batch=a.batch,
            device=a.device,
            workers=1,
            project=str(a.out.resolve()),
            name="train",
            exist_ok=True,
            seed=0,
            deterministic=False,
            amp=False,
            plots=False,
            save_period=1,
            patience=100,
            verbose=False,
            cache=True,
        )
        best = a.out / "train" / "weights" / "best.pt"
    else:
        best = a.export_only
    onnx_path = Path(
        YOLO(str(best)).export(format="onnx", imgsz=a.imgsz, dynamic=True, simplify=True, opset=17, batch=8)
    )
    print(f"exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB)")
    if a.eval_scenes:
        evaluate_demo(onnx_path, a.out, a.eval_scenes)
    if a.install:
        dest = Path(__file__).resolve().parent.parent / "runtime" / "data" / "demo.onnx"
        shutil.copyfile(onnx_path, dest)
        print(f"installed {dest}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    cv2.setNumThreads(1)
    sys.exit(main())
