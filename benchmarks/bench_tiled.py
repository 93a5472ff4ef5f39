"""edgetile's tiled detection against SAHI's sliced prediction, and against the model-only floor.

Same ONNX model, same tiling (1024 px, overlap 0.2), same merge (suppression by intersection over the
smaller box at 0.5), no full-frame pass, batches of 8 for both, on synthetic 4000x3000 scenes held in
memory (decoding the JPEG is left out of every timing). The floor is ONNX Runtime alone running the
same number of tiles in the same batches. Each image is run by each contender in turn, interleaved,
so that a noisy machine slows them alike; ratios are what to quote.

    python benchmarks/bench_tiled.py --images 4 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edgetile.runtime.boxes import pairwise_overlap
from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.tiling import plan_tiles
from edgetile.train.synth import SceneConfig, make_scene

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "runtime" / "data" / "demo.onnx"


def match_fraction(a: np.ndarray, b: np.ndarray, thr: float = 0.5) -> tuple[int, int, int]:
    """Greedy one-to-one matching of boxes a to boxes b at IoU >= thr; returns (matched, len(a), len(b))."""
    if len(a) == 0 or len(b) == 0:
        return 0, len(a), len(b)
    iou = pairwise_overlap(a, b, "iou")
    matched = 0
    used = np.zeros(len(b), bool)
    for i in range(len(a)):
        cand = np.where(~used & (iou[i] >= thr))[0]
        if len(cand):
            j = cand[np.argmax(iou[i, cand])]
            used[j] = True
            matched += 1
    return matched, len(a), len(b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX model (default: the demo model)")
    p.add_argument("--images", type=int, default=4, help="synthetic 4000x3000 scenes (default: 4)")
    p.add_argument("--repeat", type=int, default=2, help="timed passes over the scenes (default: 2)")
    p.add_argument("--batch", type=int, default=8, help="tiles per inference call for everyone (default: 8)")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default: 0.25)")
    p.add_argument("--no-sahi", action="store_true", help="skip SAHI (edgetile and the floor only)")
    a = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")

    import onnxruntime as ort

    print(
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpu; python "
        f"{platform.python_version()}; onnxruntime {ort.__version__}; model {a.model}"
    )
    scenes = [
        make_scene(7000 + i, SceneConfig(width=4000, height=3000, person_px=(24, 130)))
        for i in range(a.images)
    ]
    images = [s.image for s in scenes]
    rgb = [np.ascontiguousarray(im[:, :, ::-1]) for im in images]
    cfg = DetectConfig(tile=1024, overlap=0.2, merge="ios", merge_thr=0.5, batch=a.batch, conf=a.conf)
    det = Detector(a.model, config=cfg)
    in_h, in_w = det.input_hw
    n_tiles = len(plan_tiles(4000, 3000, 1024, 0.2))

    # The floor: the model alone, same tiles, same batches, same session options as edgetile's backend.
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(a.model), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    batches = [min(a.batch, n_tiles - s) for s in range(0, n_tiles, a.batch)]
    dummy = {b: np.random.default_rng(0).random((b, 3, in_h, in_w), dtype=np.float32) for b in set(batches)}

    sahi_model = None
    if not a.no_sahi:
        from sahi import AutoDetectionModel
        from sahi.predict import get_sliced_prediction

        sahi_model = AutoDetectionModel.from_pretrained(
            model_type="ultralytics",
            model_path=str(a.model),
            confidence_threshold=a.conf,
            device="cpu",
            image_size=in_w,
        )

    def run_sahi(img_rgb: np.ndarray) -> np.ndarray:
        res = get_sliced_prediction(
            img_rgb,
            sahi_model,
            slice_height=1024,
            slice_width=1024,
            overlap_height_ratio=0.2,
            overlap_width_ratio=0.2,
            perform_standard_pred=False,
            postprocess_type="NMS",
            postprocess_match_metric="IOS",
            postprocess_match_threshold=0.5,
            verbose=0,
            batch_size=a.batch,
        )
        return np.array([o.bbox.to_xyxy() for o in res.object_prediction_list], np.float32).reshape(-1, 4)

    # Warm-up: first calls allocate and pick kernels.
    det.detect(images[0])
    for b in set(batches):
        sess.run(None, {name: dummy[b]})
    if sahi_model is not None:
        run_sahi(rgb[0])

    t_ours, t_sahi, t_floor = [], [], []
    stages: dict[str, list[float]] = {}
    agree = [0, 0, 0]
    for _ in range(a.repeat):
        for img, img_rgb in zip(images, rgb):
            t0 = time.perf_counter()
            for b in batches:
                sess.run(None, {name: dummy[b]})
            t_floor.append(time.perf_counter() - t0)
            timings: dict[str, float] = {}
            t0 = time.perf_counter()
            ours = det.detect(img, timings)
            t_ours.append(time.perf_counter() - t0)
            for k, v in timings.items():
                stages.setdefault(k, []).append(v)
            if sahi_model is not None:
                t0 = time.perf_counter()
                theirs = run_sahi(img_rgb)
                t_sahi.append(time.perf_counter() - t0)
                m, na, nb = match_fraction(ours.xyxy, theirs)
                agree[0] += m
                agree[1] += na
                agree[2] += nb

    med = statistics.median
    print(
        f"\n{a.images} image(s) x {a.repeat} pass(es), {n_tiles} tiles of 1024 per image -> model input "
        f"{in_w}x{in_h}, batch {a.batch}"
    )
    print(f"{'':28}{'s/image':>10}{'images/s':>10}")
    print(f"{'model-only floor (ORT)':28}{med(t_floor):10.3f}{1 / med(t_floor):10.2f}")
    print(f"{'edgetile':28}{med(t_ours):10.3f}{1 / med(t_ours):10.2f}")
    if t_sahi:
        print(f"{'SAHI get_sliced_prediction':28}{med(t_sahi):10.3f}{1 / med(t_sahi):10.2f}")
        print(f"\nedgetile is {med(t_sahi) / med(t_ours):.2f}x faster than SAHI")
    print(f"edgetile whole run / model-only floor: {med(t_ours) / med(t_floor):.3f}")
    print("\nedgetile per-stage median ms per image:")
    for k, v in stages.items():
        print(f"  {k:<12}{med(v):9.2f}")
    non_model = sum(med(stages[k]) for k in ("slice", "preprocess", "decode", "merge") if k in stages)
    print(
        f"non-model stages: {non_model:.1f} ms = {100 * non_model / med(stages['infer']):.1f}% of model time"
    )
    if t_sahi:
        m, na, nb = agree
        print(
            f"\nagreement at IoU 0.5: {m} matched; {100 * m / max(na, 1):.1f}% of edgetile's {na} boxes, "
            f"{100 * m / max(nb, 1):.1f}% of SAHI's {nb} boxes"
        )
    det.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
