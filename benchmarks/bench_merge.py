"""Benchmark edgetile's merge step against the libraries it replaces.

Pairs, each timed side by side in one run (this is meant for shared, noisy machines: compare the
ratios, not the absolute figures across runs):

* ``wbf``        edgetile.runtime.merge.wbf        vs ensemble_boxes.weighted_boxes_fusion
* ``greedy_nmm`` edgetile.runtime.merge.greedy_nmm vs sahi.postprocess.combine.batched_greedy_nmm,
  once per CPU backend SAHI has (numpy, numba, torchvision on the CPU)
* ``nms``        edgetile.runtime.merge.nms        vs torchvision.ops.batched_nms on the CPU

Our call and the baseline's alternate in one loop, after one warm-up call each; the medians are
reported as CPU time of the calling thread (every contender runs in it, on one thread), which a
loaded shared machine disturbs far less than wall time, and the wall-time ratio beside it.

Inputs are synthetic but shaped like the real thing: people seen from a drone (12-64 px) in a
4000x3000 frame, some in crowds, cut into 1024-px tiles with overlap 0.2; three passes (original,
horizontal flip, a second model), each finding most people in every tile that sees them with its
own jitter, boxes cut at tile edges, false positives, 20-200 boxes per tile. The stress set is the
same scene generator over a 4x4 mosaic of such frames (16000x12000), each pass cut to its first
tiles in raster order so that the three passes hold 100,000 boxes together. Inputs for WBF are
normalized to [0, 1] (ensemble-boxes clips to that range); greedy NMM and NMS use pixels.

Example:
    python benchmarks/bench_merge.py --repeat 5
    python benchmarks/bench_merge.py --sets realistic --ops wbf,nms
"""

from __future__ import annotations

import os

# One core for everyone: NumPy's BLAS and torch must not spread over threads the others do not get.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import gc
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FRAME_W, FRAME_H = 4000, 3000
TILE, OVERLAP = 1024, 0.2
MAX_PER_TILE = 200
STRESS_BOXES = 100_000


@dataclass
class Passes:
    """Detections of several passes over one image, as the merge step receives them.

    Attributes:
        boxes: One ``(N_p, 4)`` float32 pixel array per pass.
        scores: One ``(N_p,)`` float32 array per pass.
        labels: One ``(N_p,)`` int64 array per pass.
        width: Image width in pixels.
        height: Image height in pixels.
        per_tile: Boxes found in each tile, one list per pass.
    """

    boxes: list[np.ndarray]
    scores: list[np.ndarray]
    labels: list[np.ndarray]
    width: int
    height: int
    per_tile: list[list[int]]

    def trimmed(self, total: int) -> Passes:
        """The first ``total`` boxes, split evenly over the passes (tiles in raster order)."""
        k = len(self.boxes)
        take = [total // k + (p < total % k) for p in range(k)]
        return Passes(
            [b[:t] for b, t in zip(self.boxes, take)],
            [s[:t] for s, t in zip(self.scores, take)],
            [lab[:t] for lab, t in zip(self.labels, take)],
            self.width,
            self.height,
            self.per_tile,
        )

    def concat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.concatenate(self.boxes), np.concatenate(self.scores), np.concatenate(self.labels)

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.scores)


def tile_origins(size: int, tile: int = TILE, overlap: float = OVERLAP) -> list[int]:
    """Tile offsets along one axis: stride ``tile * (1 - overlap)``, the last tile flush with the edge."""
    if size <= tile:
        return [0]
    stride = int(tile * (1 - overlap))
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def make_scene(rng: np.random.Generator, width: int, height: int, passes: int = 3) -> Passes:
    """Synthesize the detections of ``passes`` passes of tiled inference over one image.

    Args:
        rng: Random generator (seeded by the caller for repeatable inputs).
        width: Image width in pixels.
        height: Image height in pixels.
        passes: Number of passes (original, flip, second model).

    Returns:
        The detections of each pass, pixel coordinates, float32.
    """
    frames = (width / FRAME_W) * (height / FRAME_H)
    # People: a sparse background plus crowds, so tiles hold from ~20 to ~200 detections.
    # Background density varies over a coarse 1000-px grid: empty fields next to busy streets.
    gx, gy = int(np.ceil(width / 1000)), int(np.ceil(height / 1000))
    density = rng.choice([0.05, 0.3, 1.0, 2.0], size=gx * gy, p=[0.3, 0.3, 0.25, 0.15])
    cell = rng.choice(gx * gy, size=int(750 * frames), p=density / density.sum())
    bg = (np.stack([cell % gx, cell // gx], 1) + rng.random((len(cell), 2))) * 1000
    centers = [bg[(bg[:, 0] < width) & (bg[:, 1] < height)]]
    for _ in range(int(round(10 * frames))):
        c = rng.uniform([0, 0], [width, height])
        centers.append(c + rng.normal(0, 160, (int(rng.integers(80, 200)), 2)))
    ctr = np.clip(np.concatenate(centers), 0, [width - 1, height - 1])
    size = rng.uniform(12, 64, len(ctr))
    wh = np.stack([size * rng.uniform(0.6, 1.0, len(ctr)), size * rng.uniform(0.6, 1.0, len(ctr))], 1)
    truth = np.concatenate([ctr - wh / 2, ctr + wh / 2], 1)
    truth = np.clip(truth, 0, [width, height, width, height])
    label = (rng.random(len(ctr)) < 0.15).astype(np.int64)  # person / vehicle

    out_b, out_s, out_l, per_tile = [], [], [], []
    for p in range(passes):
        pb, ps, pl, counts = [], [], [], []
        for ty in tile_origins(height):
            for tx in tile_origins(width):
                tile = np.array([tx, ty, tx + TILE, ty + TILE], dtype=np.float64)
                inside = (
                    (truth[:, 0] < tile[2])
                    & (truth[:, 2] > tile[0])
                    & (truth[:, 1] < tile[3])
                    & (truth[:, 3] > tile[1])
                )
                idx = np.flatnonzero(inside & (rng.random(len(truth)) < 0.9))
                b = truth[idx] + rng.normal(0, 1, (len(idx), 4)) * (0.04 * wh[idx]).repeat(2, 1).reshape(
                    -1, 4
                )
                # boxes are cut at the tile's edge
                b = np.clip(b, [tile[0], tile[1], tile[0], tile[1]], [tile[2], tile[3], tile[2], tile[3]])
                s = np.clip(rng.beta(5, 2, len(idx)) - 0.05 * p, 0.01, 1.0)
                n_fp = int(rng.integers(1, 10))
                c = rng.uniform(tile[:2], tile[2:], (n_fp, 2))
                f_wh = rng.uniform(8, 40, (n_fp, 2))
                fp = np.clip(
                    np.concatenate([c - f_wh / 2, c + f_wh / 2], 1), tile[[0, 1, 0, 1]], tile[[2, 3, 2, 3]]
                )
                tb = np.concatenate([b, fp])
                ts = np.concatenate([s, rng.uniform(0.01, 0.5, n_fp)])
                tl = np.concatenate([label[idx], rng.integers(0, 2, n_fp)])
                top = np.argsort(-ts, kind="stable")[:MAX_PER_TILE]  # the detector's max_det
                pb.append(tb[top])
                ps.append(ts[top])
                pl.append(tl[top])
                counts.append(len(top))
        b = np.concatenate(pb)
        keep = ((b[:, 2] - b[:, 0]) > 1) & ((b[:, 3] - b[:, 1]) > 1)
        out_b.append(b[keep].astype(np.float32))
        out_s.append(np.concatenate(ps)[keep].astype(np.float32))
        out_l.append(np.concatenate(pl)[keep].astype(np.int64))
        per_tile.append(counts)
    return Passes(out_b, out_s, out_l, width, height, per_tile)


@dataclass
class Timing:
    """Median per-call times of one contender, in milliseconds."""

    cpu_ms: float
    wall_ms: float


def time_pair(ours: Callable[[], object], theirs: Callable[[], object], repeat: int) -> tuple[Timing, Timing]:
    """Time two calls side by side: one warm-up each, then ``repeat`` alternating timed calls.

    Returns:
        The median thread-CPU and wall times of ``ours`` and of ``theirs``.
    """
    ours()
    theirs()
    samples: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    for _ in range(repeat):
        for k, fn in enumerate((ours, theirs)):
            gc.collect()
            c0, w0 = time.thread_time(), time.perf_counter()
            fn()
            samples[k].append(((time.thread_time() - c0) * 1e3, (time.perf_counter() - w0) * 1e3))
    out = []
    for k in (0, 1):
        out.append(
            Timing(statistics.median(c for c, _ in samples[k]), statistics.median(w for _, w in samples[k]))
        )
    return out[0], out[1]


def time_one(fn: Callable[[], object], repeat: int) -> Timing:
    fn()
    cpu, wall = [], []
    for _ in range(repeat):
        gc.collect()
        c0, w0 = time.thread_time(), time.perf_counter()
        fn()
        cpu.append((time.thread_time() - c0) * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
    return Timing(statistics.median(cpu), statistics.median(wall))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


Row = tuple[str, str, str, Timing, "Timing | None", str]


def _bench_wbf(scene: Passes, w: int, h: int, set_name: str, args: argparse.Namespace, merge) -> list[Row]:
    scale = np.array([w, h, w, h], dtype=np.float32)
    norm = [b / scale for b in scene.boxes]
    weights = [1.0, 1.0, 2.0]  # original and flip of model A, model B weighted 2 (the 1:2 recipe)

    def ours():
        return merge.wbf(norm, scene.scores, scene.labels, weights, iou_thr=0.55)

    try:
        from ensemble_boxes import weighted_boxes_fusion
    except ImportError:
        return [(set_name, "wbf", "ensemble_boxes", time_one(ours, args.repeat), None, "not installed")]

    def theirs(bl=norm, sl=scene.scores, ll=scene.labels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return weighted_boxes_fusion(bl, sl, ll, weights, iou_thr=0.55)

    # ensemble-boxes is O(N * clusters): a tenth of the boxes takes about a hundredth of the time
    sub = [b[: max(1, len(b) // 10)] for b in norm]
    t0 = time.perf_counter()
    theirs(
        sub,
        [s[: len(b)] for s, b in zip(scene.scores, sub)],
        [lab[: len(b)] for lab, b in zip(scene.labels, sub)],
    )
    estimate = (time.perf_counter() - t0) * 100
    name = "ensemble_boxes.weighted_boxes_fusion"
    if estimate > args.slow_limit_s:
        note = f"skipped: one call estimated at {estimate:.0f} s (--slow-limit-s {args.slow_limit_s:g})"
        return [(set_name, "wbf", name, time_one(ours, args.repeat), None, note)]
    a, b = time_pair(ours, theirs, args.repeat)
    return [(set_name, "wbf", name, a, b, "normalized coords, weights 1:1:2")]


def _bench_greedy_nmm(boxes, scores, labels, set_name: str, args: argparse.Namespace, merge) -> list[Row]:
    def ours():
        return merge.greedy_nmm(boxes, scores, labels, 0.5, "ios")

    try:
        from sahi.postprocess import backends as sahi_backends
        from sahi.postprocess.combine import batched_greedy_nmm
    except ImportError:
        return [(set_name, "greedy_nmm", "sahi", time_one(ours, args.repeat), None, "not installed")]
    preds = np.concatenate([boxes, scores[:, None], labels[:, None]], 1).astype(np.float64)
    rows: list[Row] = []
    previous = sahi_backends.get_postprocess_backend()
    try:
        for backend in ("numpy", "numba", "torchvision"):
            try:
                sahi_backends.set_postprocess_backend(backend)  # SAHI's global switch, restored below
                a, b = time_pair(ours, lambda: batched_greedy_nmm(preds, "IOS", 0.5), args.repeat)
            except ImportError as exc:
                rows.append(
                    (
                        set_name,
                        "greedy_nmm",
                        f"sahi [{backend}]",
                        time_one(ours, args.repeat),
                        None,
                        f"unavailable: {exc}",
                    )
                )
                continue
            note = "IoS 0.5, class-aware" + (", torch on the CPU" if backend == "torchvision" else "")
            rows.append((set_name, "greedy_nmm", f"sahi batched_greedy_nmm [{backend}]", a, b, note))
    finally:
        sahi_backends.set_postprocess_backend(previous)
    return rows


def _bench_nms(boxes, scores, labels, set_name: str, args: argparse.Namespace, merge) -> list[Row]:
    def ours():
        return merge.nms(boxes, scores, labels, 0.5)

    try:
        import torch
        import torchvision
    except ImportError:
        return [(set_name, "nms", "torchvision", time_one(ours, args.repeat), None, "not installed")]
    torch.set_num_threads(1)
    tb, ts, tl = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)
    a, b = time_pair(ours, lambda: torchvision.ops.batched_nms(tb, ts, tl, 0.5), args.repeat)
    return [
        (
            set_name,
            "nms",
            "torchvision.ops.batched_nms (CPU, 1 thread)",
            a,
            b,
            "IoU 0.5, class-aware, float32",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time edgetile's merge (WBF, greedy NMM, NMS) against ensemble-boxes, SAHI and torchvision.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:" + __doc__.split("Example:")[1] if "Example:" in (__doc__ or "") else None,
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="timed calls of each contender, alternating; medians reported (default: 5)",
    )
    parser.add_argument(
        "--sets",
        default="realistic,stress",
        help="comma list of input sets: realistic, stress (default: both)",
    )
    parser.add_argument(
        "--ops",
        default="wbf,greedy_nmm,nms",
        help="comma list of operations: wbf, greedy_nmm, nms (default: all)",
    )
    parser.add_argument("--seed", type=int, default=2, help="seed of the synthetic scene (default: 2)")
    parser.add_argument(
        "--slow-limit-s",
        type=float,
        default=60.0,
        help="skip ensemble-boxes when one call is estimated (from a tenth of the input) above this many "
        "seconds (default: 60)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1; found {args.repeat}")
    sets = [s for s in args.sets.split(",") if s]
    ops = [o for o in args.ops.split(",") if o]
    for s in sets:
        if s not in ("realistic", "stress"):
            parser.error(f"--sets: expected realistic or stress; found {s!r}")
    for o in ops:
        if o not in ("wbf", "greedy_nmm", "nms"):
            parser.error(f"--ops: expected wbf, greedy_nmm or nms; found {o!r}")

    from edgetile.runtime import merge

    print(f"python {platform.python_version()}, numpy {np.__version__}, {_cpu_name()}")
    print(
        f"edgetile merge backend: {merge.BACKEND}; {args.repeat} alternating timed calls per pair after one "
        "warm-up each; medians of the calling thread's CPU time (wall-time ratio beside it)"
    )
    rows: list[Row] = []
    for set_name in sets:
        rng = np.random.default_rng(
            [args.seed, ("realistic", "stress").index(set_name)]
        )  # same inputs whatever --sets
        w, h = (FRAME_W, FRAME_H) if set_name == "realistic" else (4 * FRAME_W, 4 * FRAME_H)
        scene = make_scene(rng, w, h)
        if set_name == "stress":
            scene = scene.trimmed(STRESS_BOXES)
        boxes, scores, labels = scene.concat()
        per_tile = np.array(scene.per_tile)
        print(
            f"[{set_name}] {w}x{h}, {per_tile.shape[1]} tiles of {TILE} px (overlap {OVERLAP}), {len(scene.boxes)} "
            f"passes, {len(scores)} boxes; per tile and pass (before any cut): min {per_tile.min()}, median "
            f"{int(np.median(per_tile))}, max {per_tile.max()}",
            flush=True,
        )
        if "wbf" in ops:
            rows += _bench_wbf(scene, w, h, set_name, args, merge)
        if "greedy_nmm" in ops:
            rows += _bench_greedy_nmm(boxes, scores, labels, set_name, args, merge)
        if "nms" in ops:
            rows += _bench_nms(boxes, scores, labels, set_name, args, merge)

    print()
    cols = ["set", "op", "baseline", "ours ms", "base ms", "speed-up", "wall", "note"]
    table = []
    for set_name, op, base, ours, theirs, note in rows:
        table.append(
            [
                set_name,
                op,
                base,
                f"{ours.cpu_ms:.2f}",
                f"{theirs.cpu_ms:.2f}" if theirs else "-",
                f"{theirs.cpu_ms / ours.cpu_ms:.1f}x" if theirs else "-",
                f"{theirs.wall_ms / ours.wall_ms:.1f}x" if theirs else "-",
                note,
            ]
        )
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(cols)]
    right = {3, 4, 5, 6}

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )
            + " |"
        )

    print(line(cols))
    print(
        "|"
        + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths))
        + "|"
    )
    for r in table:
        print(line(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
