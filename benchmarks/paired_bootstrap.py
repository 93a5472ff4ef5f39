"""Are two detectors' full-photo mAPs different beyond the photos' sampling noise? A paired bootstrap.

Every model runs once over the same annotated photos (the runtime's tiled path, conf 0.001, tiles of
each model's own input size); then the photos are resampled with replacement, the same resample for
every model, and COCO mAP@0.5 and mAP@0.75 (pycocotools, as `edgetile eval` computes them) are
recomputed on each resample. For every pair of models the 95% percentile interval of the difference
says whether a gap is more than which photos happened to be drawn: an interval that holds 0 does not
tell the two apart. The models' detections are saved in OUT/detections_K.json (re-scored with
--reuse, without running the models again).

    python benchmarks/paired_bootstrap.py --data heldout_limbs --model a.onnx b.onnx --out runs/boot

Only the photos are resampled: the spread over training seeds is another, unmeasured, noise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.evaluation.annotations import load_dataset
from edgetile.runtime.evaluation.metrics import PhotoDetections, coco_map, evaluate
from edgetile.runtime.files import write_json_atomic
from edgetile.runtime.results import Detections


def detect_all(model: Path, data, cache: Path, reuse: bool) -> list[PhotoDetections]:
    """Each photo's detections by one model, from the cache file when --reuse finds it."""
    photos = data.photos
    if reuse and cache.is_file():
        saved = json.loads(cache.read_text())
        if saved["model"] != str(model) or saved["photos"] != [p.path.name for p in photos]:
            raise SystemExit(f"{cache}: expected detections of {model} on these photos, found another run's")
        return [
            PhotoDetections(
                p,
                Detections(
                    np.asarray(d["xyxy"], np.float32).reshape(-1, 4),
                    np.asarray(d["scores"], np.float32),
                    np.asarray(d["class_ids"], np.int64),
                ),
            )
            for p, d in zip(photos, saved["detections"])
        ]
    with Detector(model, config=DetectConfig(conf=0.001)) as det:
        result = evaluate(det, data, score_thr=0.1, progress=True)
    per_photo = result.per_photo
    write_json_atomic(
        cache,
        {
            "model": str(model),
            "photos": [p.photo.path.name for p in per_photo],
            "detections": [
                {
                    "xyxy": p.detections.xyxy.tolist(),
                    "scores": p.detections.scores.tolist(),
                    "class_ids": p.detections.class_ids.tolist(),
                }
                for p in per_photo
            ],
        },
    )
    return per_photo


def maps(per_photo: list[PhotoDetections], names) -> tuple[float, float]:
    stats, _ = coco_map(per_photo, names)
    return stats[1], stats[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, required=True, help="annotated photos (a VOC folder, as edgetile eval reads)"
    )
    p.add_argument("--format", default="voc", help="annotation format of --data (default: voc)")
    p.add_argument("--model", type=Path, nargs="+", required=True, help="two or more ONNX models")
    p.add_argument("--out", type=Path, required=True, help="folder for bootstrap.json and the detections")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="resampling seed (default: 0)")
    p.add_argument(
        "--reuse", action="store_true", help="score the saved detections instead of running the models"
    )
    a = p.parse_args(argv)
    if len(a.model) < 2:
        p.error(f"--model: expected two or more models to compare, found {len(a.model)}")
    a.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(a.data, format=a.format)
    names = data.class_names
    runs = [detect_all(m, data, a.out / f"detections_{k}.json", a.reuse) for k, m in enumerate(a.model)]
    n = len(runs[0])
    observed = [maps(r, names) for r in runs]
    rng = np.random.default_rng(a.seed)
    draws = np.empty((a.resamples, len(runs), 2))
    for i in range(a.resamples):
        pick = rng.integers(0, n, n)
        for k, r in enumerate(runs):
            draws[i, k] = maps([r[j] for j in pick], names)
    report: dict = {
        "command": "python benchmarks/paired_bootstrap.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "photos": n,
        "people": int(sum(len(pd.photo.boxes) for pd in runs[0])),
        "resamples": a.resamples,
        "models": [
            {"model": str(m), "map50": round(o[0], 4), "map75": round(o[1], 4)}
            for m, o in zip(a.model, observed)
        ],
        "pairs": [],
    }
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            pair: dict = {"a": str(a.model[i]), "b": str(a.model[j])}
            for m, metric in enumerate(("map50", "map75")):
                diff = draws[:, i, m] - draws[:, j, m]
                diff = diff[~np.isnan(diff)]
                lo, hi = np.percentile(diff, [2.5, 97.5])
                pair[metric] = {
                    "a_minus_b": round(observed[i][m] - observed[j][m], 4),
                    "ci95": [round(float(lo), 4), round(float(hi), 4)],
                    "share_a_above_b": round(float(np.mean(diff > 0)), 3),
                    "tells_apart": bool(lo > 0 or hi < 0),
                }
            report["pairs"].append(pair)
            print(
                f"{a.model[i]} - {a.model[j]}: "
                + "; ".join(
                    f"{m} {pair[m]['a_minus_b']:+.3f} [{pair[m]['ci95'][0]:+.3f}, {pair[m]['ci95'][1]:+.3f}]"
                    for m in ("map50", "map75")
                ),
                flush=True,
            )
    write_json_atomic(a.out / "bootstrap.json", report)
    return 0 if all(not math.isnan(o[0]) for o in observed) else 1


if __name__ == "__main__":
    sys.exit(main())
