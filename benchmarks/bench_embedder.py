"""What `detect --embed` costs per photo on this machine: the same photos with and without, same run.

Two Detectors of the same model and settings, one with the embedder, take turns photo by photo (so
a change in the machine's load falls on both alike); every photo is read once and detected by each
``--repeat`` times. By default the photos are synthetic scenes with groups of people (the embedder's
work grows with the detections of a photo) made here, plus the bundled sample:

    python benchmarks/bench_embedder.py --embed runs/embedder/embedder.onnx
    python benchmarks/bench_embedder.py --embed E.onnx --model person.onnx --photos flight_07/

With ``--crops DIR`` (a folder per person, ``ID/*.png``, e.g. ``edgetile synth flight --crops``) it
measures instead how well the model tells those people apart: same/different pairs, the accuracy at
the model's stored threshold and at the best one for them, ROC AUC:

    python benchmarks/bench_embedder.py --embed E.onnx --crops flights/crops/

Prints a table and one JSON line (``--json`` writes it to a file too).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.embedder import Embedder
from edgetile.runtime.images import expand_sources, read_image

DATA = Path(__file__).resolve().parents[1] / "runtime" / "data"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embed", required=True, metavar="ONNX", help="the embedder from train-embedder")
    p.add_argument(
        "--model", default=str(DATA / "demo.onnx"), help="detector (default: the bundled demo model)"
    )
    p.add_argument(
        "--conf", type=float, default=0.1, help="the detector's threshold (default: 0.1, the demo's)"
    )
    p.add_argument("--tile", type=int, default=1024, help="tile side (default: 1024)")
    p.add_argument(
        "--photos", help="photos to detect in (default: synthetic scenes made here and the sample)"
    )
    p.add_argument("--scenes", type=int, default=8, help="synthetic scenes without --photos (default: 8)")
    p.add_argument("--seed", type=int, default=9100, help="first scene seed (default: 9100)")
    p.add_argument("--repeat", type=int, default=3, help="detections of every photo by each (default: 3)")
    p.add_argument("--crops", help="measure verification on these people's crops (ID/*.png) instead")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    if a.crops is not None:
        return verification(a)

    with tempfile.TemporaryDirectory(prefix="edgetile-bench-embedder-") as tmp:
        if a.photos is not None:
            paths = expand_sources([a.photos])
        else:
            from edgetile.train.synth import SceneConfig, write_dataset

            cfg = SceneConfig(width=1024, height=1024, people=(6, 14))
            root = write_dataset(Path(tmp) / "scenes", a.scenes, seed=a.seed, config=cfg)
            paths = sorted(str(q) for q in Path(root).rglob("*.jpg")) + [str(DATA / "sample.jpg")]
        config = DetectConfig(tile=a.tile, conf=a.conf)
        plain_ms: list[float] = []
        with_ms: list[float] = []
        embed_ms: list[float] = []
        found: list[int] = []
        with Detector(a.model, config=config) as plain, Detector(
            a.model, config=config, embedder=Embedder(a.embed)
        ) as embedding:
            plain.detect(read_image(paths[0]))  # the first call of each session allocates: not timed
            embedding.detect(read_image(paths[0]))
            calls0 = embedding.embedder.batches if embedding.embedder is not None else 0
            for path in paths:
                image = read_image(path)
                for _ in range(a.repeat):
                    t0 = time.perf_counter()
                    plain.detect(image)
                    t1 = time.perf_counter()
                    timings: dict[str, float] = {}
                    dets = embedding.detect(image, timings)
                    t2 = time.perf_counter()
                    plain_ms.append((t1 - t0) * 1000)
                    with_ms.append((t2 - t1) * 1000)
                    embed_ms.append(timings.get("embed", 0.0))
                    found.append(len(dets))
            calls = (embedding.embedder.batches if embedding.embedder is not None else 0) - calls0
    result = {
        "photos": len(paths),
        "repeat": a.repeat,
        "detections_per_photo": statistics.mean(found),
        "detect_ms": statistics.mean(plain_ms),
        "detect_with_embed_ms": statistics.mean(with_ms),
        "extra_ms": statistics.mean(with_ms) - statistics.mean(plain_ms),
        # Medians: on a shared machine one slow detection moves a mean by more than the embedder costs.
        "detect_median_ms": statistics.median(plain_ms),
        "detect_with_embed_median_ms": statistics.median(with_ms),
        "extra_median_ms": statistics.median(w - q for w, q in zip(with_ms, plain_ms)),
        "embed_stage_ms": statistics.mean(embed_ms),
        "embed_stage_ms_per_detection": sum(embed_ms) / max(sum(found), 1),
        "embedder_calls": calls,
        "detections_timed": len(found),
        "model": a.model,
        "embed": a.embed,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }
    print(
        f"{len(paths)} photo(s) x {a.repeat}: {result['detections_per_photo']:.1f} detections per photo; "
        f"detect {result['detect_ms']:.1f} ms, with --embed {result['detect_with_embed_ms']:.1f} ms "
        f"(+{result['extra_ms']:.1f} ms; median of the differences +{result['extra_median_ms']:.1f} ms; "
        f"the embed stage {result['embed_stage_ms']:.1f} ms, "
        f"{result['embed_stage_ms_per_detection']:.2f} ms per detection); {calls} embedder call(s) for "
        f"{len(found)} detection run(s)",
        file=sys.stderr,
    )
    line = json.dumps(result)
    print(line)
    if a.json:
        Path(a.json).write_text(line + "\n")
    return 0


def verification(a: argparse.Namespace) -> int:
    """The model's verification accuracy on a folder of crops per person, through the runtime."""
    import numpy as np

    from edgetile.runtime.backends import create_backend
    from edgetile.train.embedder import load_identity_crops, verification_report

    with Embedder(a.embed) as e:
        threshold, hw = e.threshold, e.input_hw
    crops = load_identity_crops(a.crops, hw[0])
    x = np.ascontiguousarray(crops.images[..., ::-1].transpose(0, 3, 1, 2)).astype(np.float32) / 255
    with create_backend("onnxruntime", a.embed) as be:
        vectors = np.concatenate([np.asarray(be.infer(x[i : i + 256])[0]) for i in range(0, len(x), 256)])
    result = {
        "stored_threshold": verification_report(vectors, crops, threshold=threshold),
        "best_threshold": verification_report(vectors, crops),
        "problems": len(crops.problems),
        "crops": a.crops,
        "embed": a.embed,
    }
    for name, v in (("stored", result["stored_threshold"]), ("best", result["best_threshold"])):
        print(
            f"{name} threshold {v['threshold']:.4f}: {v['people']} people, {v['crops']} crops; ROC AUC "
            f"{v['roc_auc']:.4f}, balanced accuracy {v['balanced_accuracy']:.4f} (same {v['same_accuracy']:.3f}, "
            f"different {v['different_accuracy']:.3f}, look-alikes told apart {v['look_alike_accuracy']:.3f})",
            file=sys.stderr,
        )
    line = json.dumps(result)
    print(line)
    if a.json:
        Path(a.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
