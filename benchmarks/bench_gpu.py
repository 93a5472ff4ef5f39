"""Per-stage times of the GPU path and the CPU path for 4000x3000 frames, side by side, on a CUDA GPU.

Both paths run the same TensorRT engine, so only what surrounds the model differs:

* CPU path: TensorRTBackend(gpu_preprocess=False): OpenCV preprocessing into a host batch, copy in, infer,
  copy the whole output out, decode on the host.
* GPU path: TensorRTBackend(): the frame placed once (zero-copy on Jetson), preprocess.cu writes each
  batch into the engine input, filter.cu keeps the candidates above --conf, batches run two deep.

Reported: the Detector's own per-stage timings for both paths and the whole detect() per image; the GPU
path's stages measured one after another with CUDA events (upload, preprocess, inference, filtering,
download); inference per batch size; the merge; the preprocessing kernel against the memory-bandwidth
floor (bytes it must read and write / the GPU's peak bandwidth; the target is within 3x for a
4000x3000 frame into 12 tiles of 1024^2); and, with --files, a folder of JPEGs read with and without the
prefetch thread.

    python benchmarks/bench_gpu.py --engine model_fp16.engine --images 4 --repeat 3

With --kernels-only, no TensorRT and no engine are needed (pycuda and a GPU are): the preprocessing kernel
against the bandwidth floor (FP16 and FP32, 1024^2 and 640^2 inputs), the filter kernel on a batch of
model outputs, and the frame upload, each timed with CUDA events:

    python benchmarks/bench_gpu.py --kernels-only --repeat 20

Needs a CUDA GPU, TensorRT and pycuda (--kernels-only: a GPU and pycuda); elsewhere it says what is
missing and exits with 1.
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

import numpy as np


def preprocess_floor_bytes(views, image_wh, input_hw, itemsize: int) -> tuple[int, int]:
    """(bytes the preprocessing kernel must read, bytes it must write) for these views.

    Read: every distinct source pixel a view samples (a weight-0 tap is not needed), 3 bytes each.
    Written: every element of every slot.
    """
    from edgetile.runtime.cuda.reference import build_view_tables

    t = build_view_tables(views, image_wh, input_hw)
    read = 0
    for _x0, _y0, cw, ch, _flip, xo, yo, _ in t.params.tolist():
        xt, yt = t.xtab[xo : xo + cw], t.ytab[yo : yo + ch]
        cols = np.unique(np.concatenate([xt[:, 0], xt[xt[:, 3] != 0, 1]]))
        rows = np.unique(np.concatenate([yt[yt[:, 2] != 0, 0], yt[yt[:, 3] != 0, 1]]))
        read += len(cols) * len(rows) * 3
    written = len(views) * 3 * input_hw[0] * input_hw[1] * itemsize
    return read, written


def kernels_only(a) -> int:
    """Time the two kernels and the frame upload on their own (no TensorRT): CUDA events, medians."""
    from edgetile.runtime.cuda.device import CudaDevice, cuda_status

    ok, why = cuda_status()
    if not ok:
        print(
            f"bench_gpu: --kernels-only needs a CUDA GPU and pycuda; cannot run here: {why}", file=sys.stderr
        )
        return 1
    from edgetile.runtime.cuda.filter import CandidateBuffers, GpuFilter
    from edgetile.runtime.cuda.preprocess import FrameUpload, GpuPreprocessor
    from edgetile.runtime.cuda.reference import score_threshold
    from edgetile.runtime.preprocess import tile_views
    from edgetile.runtime.tiling import plan_tiles

    med = statistics.median
    W, H = 4000, 3000
    repeat = max(3, a.repeat)
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    dev = CudaDevice(0)
    bw = a.bandwidth_gbs or dev.peak_bandwidth_gbs()
    results: dict = {
        "machine": f"{platform.machine()} {platform.node()}",
        "gpu": f"{dev.name} (sm {dev.compute_capability})",
        "bandwidth_gbs": bw,
        "repeat": repeat,
        "preprocess": [],
        "filter": [],
    }
    print(
        f"GPU {results['gpu']}, peak DRAM bandwidth {bw or float('nan'):.1f} GB/s (driver); "
        f"frame {W}x{H}; medians of {repeat} timed runs after one warm-up"
    )
    stream = dev.stream()
    e0, e1 = dev.event(), dev.event()
    frame = FrameUpload(dev)
    try:
        # -- the frame upload (host copy into pinned memory + async copy to the device) --------------
        up = []
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            frame_ptr, row_bytes = frame.put(image, stream)
            stream.synchronize()
            up.append((time.perf_counter() - t0) * 1000)
            frame.release(stream)
        results["upload_ms"] = med(up[1:])
        print(
            f"\nframe upload ({image.nbytes / 1e6:.1f} MB, host time incl. DMA): {results['upload_ms']:.3f} ms"
        )

        # -- preprocessing kernel vs the bandwidth floor ---------------------------------------------
        print("\npreprocess kernel (all views of the frame, `batch` views per launch), GPU time:")
        tilings = [
            ("the design case: 12 tiles of 1024 (overlap 0)", 1024, 0.0),
            (f"tiles of {a.tile} (overlap {a.overlap})", a.tile, a.overlap),
        ]
        for input_hw in ((1024, 1024), (640, 640)):
            for label, tile, overlap in tilings:
                views = tile_views(plan_tiles(W, H, tile, overlap), tile, input_hw, (W, H))
                n = len(views)
                batch = a.batch or 8
                for dtype in (np.dtype(np.float16), np.dtype(np.float32)):
                    pre = GpuPreprocessor(dev, input_hw, dtype)
                    out = dev.alloc(n * 3 * input_hw[0] * input_hw[1] * dtype.itemsize)
                    try:
                        pre.set_views(views, (W, H), stream)
                        per = n * 3 * input_hw[0] * input_hw[1] * dtype.itemsize
                        times = []
                        for _ in range(repeat + 1):
                            with dev.active():
                                e0.record(stream)
                                for start in range(0, n, batch):
                                    k = min(batch, n - start)
                                    pre.launch(
                                        frame_ptr, row_bytes, start, k, out.ptr + start * (per // n), stream
                                    )
                                e1.record(stream)
                                e1.synchronize()
                            times.append(e1.elapsed_ms(e0))
                    finally:
                        out.close()
                        pre.close()
                    kernel_ms = med(times[1:])
                    read, written = preprocess_floor_bytes(views, (W, H), input_hw, dtype.itemsize)
                    floor_ms = (read + written) / (bw * 1e9) * 1000 if bw else float("nan")
                    print(
                        f"  {n:2d} views, {label}, into {input_hw[1]}x{input_hw[0]} {dtype}: {kernel_ms:.3f} ms; "
                        f"floor {floor_ms:.3f} ms ({read / 1e6:.1f} MB read + {written / 1e6:.1f} MB written): "
                        f"{kernel_ms / floor_ms:.2f}x the floor; {(read + written) / kernel_ms / 1e6:.0f} GB/s "
                        f"effective (min {min(times[1:]):.3f} ms)"
                    )
                    results["preprocess"].append(
                        {
                            "case": label,
                            "views": n,
                            "input_hw": list(input_hw),
                            "dtype": str(dtype),
                            "batch": batch,
                            "kernel_ms": kernel_ms,
                            "kernel_ms_min": min(times[1:]),
                            "floor_ms": floor_ms,
                            "ratio": kernel_ms / floor_ms,
                            "bytes_read": read,
                            "bytes_written": written,
                        }
                    )
        frame.release(stream)

        # -- filter kernel on a batch of model outputs -------------------------------------------------
        print(f"\nfilter kernel (conf {a.conf}), GPU time for counter reset + filter:")
        for b, nc, anchors, label in (
            (8, 1, 21504, "1 class, 1024^2 input"),
            (8, 80, 8400, "80 classes, 640^2 input"),
        ):
            for dtype in (np.dtype(np.float16), np.dtype(np.float32)):
                out_host = rng.random((b, 4 + nc, anchors)).astype(np.float32)
                out_host[:, 4:] **= 4  # few anchors pass, as in a real output
                out_host = out_host.astype(dtype)
                dev_out = dev.to_device(out_host)
                cands = CandidateBuffers(dev, b * anchors, 4 + nc, dtype)
                flt = GpuFilter(dev, dtype)
                try:
                    thr = score_threshold(a.conf, dtype)
                    times = []
                    for _ in range(repeat + 1):
                        with dev.active():
                            e0.record(stream)
                            flt.launch(dev_out.ptr, b, 4 + nc, anchors, thr, cands, stream)
                            e1.record(stream)
                            cands.download_count(stream)
                            stream.synchronize()
                        times.append(e1.elapsed_ms(e0))
                    kept = int(cands.host_count.array[0])
                finally:
                    flt.close()
                    cands.close()
                    dev_out.close()
                ms = med(times[1:])
                scanned = b * nc * anchors * dtype.itemsize
                print(
                    f"  batch {b}, {label}, {dtype}: {ms:.3f} ms, {kept} of {b * anchors} anchors kept; "
                    f"{scanned / 1e6:.1f} MB of scores scanned ({scanned / ms / 1e6:.0f} GB/s)"
                )
                results["filter"].append(
                    {
                        "case": label,
                        "batch": b,
                        "dtype": str(dtype),
                        "ms": ms,
                        "kept": kept,
                        "anchors": b * anchors,
                    }
                )
    finally:
        for obj in (frame, e1, e0, stream):
            obj.close()
        dev.close()
    if a.json is not None:
        a.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {a.json}")
    return 0


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - a benchmark script: its options, then each stage timed in turn, read top to bottom
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", type=Path, default=None, help="TensorRT engine with its edgetile sidecar")
    p.add_argument(
        "--kernels-only",
        action="store_true",
        help="time the preprocessing and filter kernels and the frame upload alone: no TensorRT, no engine",
    )
    p.add_argument(
        "--onnx",
        type=Path,
        default=None,
        help="also time ONNX Runtime on the CPU with this model (default: skip)",
    )
    p.add_argument("--images", type=int, default=4, help="synthetic 4000x3000 scenes (default: 4)")
    p.add_argument("--repeat", type=int, default=3, help="timed passes over the scenes (default: 3)")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="tiles per inference in detect() (default: the engine's fixed batch, or 8)",
    )
    p.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8, 12],
        help="batch sizes for the inference sweep, those outside the engine's range skipped "
        "(default: 1 2 4 8 12)",
    )
    p.add_argument("--tile", type=int, default=1024, help="tile side in photo pixels (default: 1024)")
    p.add_argument("--overlap", type=float, default=0.2, help="tile overlap (default: 0.2)")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default: 0.25)")
    p.add_argument(
        "--bandwidth-gbs",
        type=float,
        default=None,
        help="peak memory bandwidth in GB/s for the floor (default: from the driver; AGX Orin "
        "204.8, Orin NX 102.4, Orin Nano 68 or 102 (Super))",
    )
    p.add_argument(
        "--files",
        action="store_true",
        help="also run a folder of JPEGs, reading each next file on a thread vs. in line",
    )
    p.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    a = p.parse_args(argv)
    if a.kernels_only:
        return kernels_only(a)
    if a.engine is None:
        p.error("--engine is required (or --kernels-only)")

    from edgetile.runtime.backends.tensorrt import TensorRTBackend

    ok, why = TensorRTBackend.available()
    if not ok:
        print(
            f"bench_gpu: needs a CUDA GPU with TensorRT and pycuda; cannot run here: {why}", file=sys.stderr
        )
        return 1
    if not a.engine.is_file():
        print(f"bench_gpu: --engine: file not found: {a.engine}", file=sys.stderr)
        return 2

    from edgetile.runtime.detector import DetectConfig, Detector
    from edgetile.runtime.preprocess import tile_views
    from edgetile.runtime.tiling import plan_tiles
    from edgetile.train.synth import SceneConfig, make_scene

    med = statistics.median
    scenes = [
        make_scene(7000 + i, SceneConfig(width=4000, height=3000, person_px=(24, 130))).image
        for i in range(a.images)
    ]
    gpu_be = TensorRTBackend(a.engine)
    cpu_be = TensorRTBackend(a.engine, gpu_preprocess=False)
    io, dev = gpu_be.io, gpu_be.device
    batch = a.batch or (io.batch_max if not io.dynamic_batch else min(8, io.batch_max))
    cfg = DetectConfig(tile=a.tile, overlap=a.overlap, conf=a.conf, batch=batch)
    results: dict = {
        "machine": f"{platform.machine()} {platform.node()}",
        "gpu": f"{dev.name} (sm {dev.compute_capability})",
        "tensorrt": gpu_be.api.label,
        "engine": str(a.engine),
        "input_hw": list(io.input_hw),
        "input_dtype": str(io.input.dtype),
        "batch": batch,
        "tile": a.tile,
    }
    print(
        f"GPU {results['gpu']}, TensorRT {results['tensorrt']}, engine {a.engine.name}: input "
        f"{io.input_hw[1]}x{io.input_hw[0]} {io.input.dtype}, batch {io.batch_min}..{io.batch_max}; detect batch "
        f"{batch}; {a.images} scene(s) x {a.repeat}"
    )

    # -- whole detect(), both paths, with the Detector's stage timings -----------------------------------
    dets = {"cpu path": Detector(cpu_be, config=cfg), "gpu path": Detector(gpu_be, config=cfg)}
    if a.onnx is not None:
        dets["onnxruntime cpu"] = Detector(a.onnx, backend="onnxruntime", config=cfg)
    whole: dict[str, list[float]] = {k: [] for k in dets}
    stages: dict[str, dict[str, list[float]]] = {k: {} for k in dets}
    for d in dets.values():
        d.detect(scenes[0])  # warm-up: kernels compiled, tactics loaded, buffers allocated
    for _ in range(a.repeat):
        for img in scenes:
            for name, d in dets.items():
                t: dict[str, float] = {}
                t0 = time.perf_counter()
                d.detect(img, t)
                whole[name].append((time.perf_counter() - t0) * 1000)
                for k, v in t.items():
                    stages[name].setdefault(k, []).append(v)
    print(
        "\nDetector stage timings, median ms per image (on the GPU path preprocessing and filtering are "
        "inside infer):"
    )
    keys = ["slice", "preprocess", "infer", "decode", "merge", "total"]
    print(f"{'':18}" + "".join(f"{k:>11}" for k in keys))
    for name in dets:
        row = [med(stages[name].get(k, [0.0])) for k in keys[:-1]] + [med(whole[name])]
        print(f"{name:18}" + "".join(f"{v:11.2f}" for v in row))
    results["detect_ms"] = {
        n: {**{k: med(v) for k, v in stages[n].items()}, "total": med(whole[n])} for n in dets
    }

    # -- the GPU path's stages one after another (CUDA events) -------------------------------------------
    W, H = 4000, 3000
    views = tile_views(plan_tiles(W, H, a.tile, a.overlap), a.tile, io.input_hw, (W, H))
    prof: dict[str, list[float]] = {}
    for _ in range(a.repeat):
        for img in scenes:
            for k, v in gpu_be.profile_stages(img, views, batch, a.conf).items():
                prof.setdefault(k, []).append(v)
    print(f"\nGPU path stages for {len(views)} tiles, run one after another, median ms per image:")
    for k, v in prof.items():
        print(f"  {k:<12}{med(v):9.3f}")
    results["gpu_stages_ms"] = {k: med(v) for k, v in prof.items()}

    # -- inference per batch size --------------------------------------------------------------------------
    print("\ninference per batch size (GPU time, median):")
    sweep = {}
    for b in a.batches:
        if not io.batch_min <= b <= io.batch_max or (not io.dynamic_batch and b != io.batch_max):
            print(f"  batch {b:3d}: outside the engine's range {io.batch_min}..{io.batch_max}, skipped")
            continue
        per_batch = []
        for img in scenes:
            n_batches = -(-len(views) // b)
            per_batch.append(gpu_be.profile_stages(img, views, b, a.conf)["infer"] / n_batches)
        sweep[b] = med(per_batch)
        print(f"  batch {b:3d}: {sweep[b]:8.3f} ms per batch, {sweep[b] / b:8.3f} ms per tile")
    results["infer_ms_per_batch"] = sweep

    # -- the preprocessing kernel against the memory-bandwidth floor -----------------------------------
    bw = a.bandwidth_gbs or dev.peak_bandwidth_gbs()
    cases = [(f"{len(views)} tiles of {a.tile} (overlap {a.overlap})", views)]
    design = tile_views(
        plan_tiles(W, H, 1024, 0.0), 1024, io.input_hw, (W, H)
    )  # the design case: a 4000x3000 photo as 12 tiles of 1024^2
    cases.append((f"{len(design)} tiles of 1024 (overlap 0, the design case)", design))
    results["preprocess_floor"] = []
    if not bw:
        print("\npreprocess kernel vs floor: the driver reports no memory clock; pass --bandwidth-gbs")
    for label, v in cases if bw else []:
        kernel_ms = med([gpu_be.profile_stages(img, v, batch, a.conf)["preprocess"] for img in scenes])
        read, written = preprocess_floor_bytes(v, (W, H), io.input_hw, io.input.dtype.itemsize)
        floor_ms = (read + written) / (bw * 1e9) * 1000
        print(
            f"\npreprocess kernel, {label} into {io.input_hw[1]}x{io.input_hw[0]} {io.input.dtype}: "
            f"{kernel_ms:.3f} ms; floor {floor_ms:.3f} ms ({read / 1e6:.1f} MB read + {written / 1e6:.1f} MB "
            f"written at {bw:.1f} GB/s): {kernel_ms / floor_ms:.2f}x the floor (target <= 3x)"
        )
        results["preprocess_floor"].append(
            {
                "case": label,
                "kernel_ms": kernel_ms,
                "floor_ms": floor_ms,
                "ratio": kernel_ms / floor_ms,
                "bytes_read": read,
                "bytes_written": written,
                "bandwidth_gbs": bw,
            }
        )

    # -- a folder of JPEGs: the next file read on a thread ---------------------------------------------
    if a.files:
        import cv2

        from edgetile.runtime.images import read_image
        from edgetile.runtime.readahead import prefetch

        with tempfile.TemporaryDirectory(prefix="edgetile-bench-") as tmp:
            paths = []
            for i, img in enumerate(scenes * max(1, 8 // len(scenes))):
                path = Path(tmp) / f"{i:03d}.jpg"
                cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
                paths.append(path)
            d = dets["gpu path"]
            t0 = time.perf_counter()
            for path in paths:
                d.detect(read_image(path))
            inline = (time.perf_counter() - t0) / len(paths) * 1000
            t0 = time.perf_counter()
            for _path, img, err in prefetch(paths, read_image):
                if err is not None:
                    raise err
                d.detect(img)
            ahead = (time.perf_counter() - t0) / len(paths) * 1000
        print(
            f"\nfolder of {len(paths)} JPEGs, GPU path: {inline:.1f} ms/image reading in line, "
            f"{ahead:.1f} ms/image reading the next file on a thread"
        )
        results["files_ms_per_image"] = {"inline": inline, "prefetch": ahead}

    for d in dets.values():
        d.close()
    if a.json is not None:
        a.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
