"""The second look on held-out photos: false positives removed, people lost, extra milliseconds per photo.

Runs the detector at its own threshold over annotated photos (by default synthetic 1024x1024 scenes
with rocks, logs and bushes, made here from seeds no training used), then the crop classifier over
every photo's detections in one batch with the threshold stored in it, and counts at IoU 0.5:

    python benchmarks/bench_verifier.py --verify runs/verifier/verifier.onnx --conf 0.1
    python benchmarks/bench_verifier.py --verify V.onnx --model person.onnx --data LADD/ --subset test

Prints a table and one JSON line (``--json`` writes it to a file too).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.evaluation.annotations import load_dataset
from edgetile.runtime.verifier import Verifier
from edgetile.train.verifier import measure, score_photos

DEMO_MODEL = Path(__file__).resolve().parents[1] / "runtime" / "data" / "demo.onnx"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verify", required=True, metavar="ONNX", help="the crop classifier from train-verifier")
    p.add_argument("--verify-thr", type=float, default=None, help="default: the threshold stored in it")
    p.add_argument("--model", default=str(DEMO_MODEL), help="detector (default: the bundled demo model)")
    p.add_argument(
        "--conf", type=float, default=0.1, help="the detector's threshold (default: 0.1, the demo's)"
    )
    p.add_argument("--tile", type=int, default=1024, help="tile side (default: 1024)")
    p.add_argument("--data", help="annotated photos (default: synthetic scenes made here)")
    p.add_argument("--subset", help="VOC list or YOLO split of --data")
    p.add_argument("--scenes", type=int, default=20, help="synthetic scenes without --data (default: 20)")
    p.add_argument(
        "--seed", type=int, default=9000, help="first scene seed (default: 9000, unused in training)"
    )
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="edgetile-bench-verifier-") as tmp:
        data = a.data
        if data is None:
            from edgetile.train.synth import SceneConfig, write_dataset

            cfg = SceneConfig(
                width=1024, height=1024, people=(1, 4), rocks=(15, 40), logs=(8, 20), bushes=(15, 50)
            )
            data = str(write_dataset(Path(tmp) / "scenes", a.scenes, seed=a.seed, config=cfg))
        ds = load_dataset(data, subset=a.subset)
        config = DetectConfig(tile=a.tile, conf=a.conf)
        # The detector runs a little below its threshold so that both counts come from one pass; measure
        # applies conf itself.
        detector = Detector(a.model, config=replace(config, conf=min(a.conf, 0.05)))
        with detector as det, Verifier(a.verify, threshold=a.verify_thr) as ver:
            scored, timing, problems = score_photos(ds.photos, det, ver)
            threshold = ver.threshold
        # The runtime path as detect --verify runs it, at the operating threshold: the extra time per photo.
        runtime = Detector(a.model, config=config, verifier=Verifier(a.verify, threshold=a.verify_thr))
        with runtime as det:
            per_photo = []
            for photo in ds.photos:
                t: dict[str, float] = {}
                found = det.detect(photo.load(), t)
                per_photo.append((t, len(found)))
            batches = det.verifier.batches if det.verifier is not None else 0
    n = max(len(per_photo), 1)
    timing = {
        "detect_ms": sum(sum(v for k, v in t.items() if k != "verify") for t, _ in per_photo) / n,
        "verify_ms": sum(t.get("verify", 0.0) for t, _ in per_photo) / n,
        "detections_per_photo_after": sum(k for _, k in per_photo) / n,
    }
    m = measure(scored, a.conf, threshold)
    b, af = m["before"], m["after"]
    result = {
        "photos": len(scored),
        "verifier": a.verify,
        "detector": a.model,
        **m,
        "classifier_calls": batches,
        "timing_ms": timing,
        "problems": problems,
    }
    print(f"{'':<22}{'people found':>14}{'false positives':>17}{'away from people':>18}{'on people':>11}")
    for name, c in (("detector alone", b), ("with the verifier", af)):
        print(
            f"{name:<22}{c['tp']:>9} / {m['gt']:<4}{c['fp']:>17}{c['fp_off_people']:>18}{c['fp_on_people']:>11}"
        )
    print(
        f"conf {a.conf:g}, verifier threshold {threshold:.4g}: {m['false_positives_removed']} false positive(s) "
        f"removed, {m['people_lost']} person(s) lost; {len(scored)} photo(s), {batches} classifier call(s) "
        f"in detect --verify; detector {timing['detect_ms']:.1f} ms, verifier +{timing['verify_ms']:.1f} ms per photo"
    )
    line = json.dumps(result, default=float)
    print(line)
    if a.json:
        Path(a.json).write_text(line + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
