"""The CUDA kernels on a real GPU, against the CPU path and their NumPy reference (needs_cuda).

Skipped where pycuda or a GPU is missing (tests/conftest.py says which). They have NOT been run on the
machines this project is developed on (no GPU there); docs/gpu.md says how to run them on one.

Contract: the preprocessing kernel's output equals runtime/cuda/reference.py exactly, and the
CPU path (BatchBuffer) within 1/255 in FP32 and within that plus FP16 rounding in FP16, over random
sizes, tiles at image edges and images smaller than a tile. The filter kernel keeps exactly the
reference's candidates.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgetile.runtime.preprocess import BatchBuffer, Views, full_frame_view, tile_views
from edgetile.runtime.tiling import plan_tiles

pytestmark = pytest.mark.needs_cuda


@pytest.fixture(scope="module")
def device():
    pytest.importorskip(
        "pycuda.driver", reason="the CUDA path is built on pycuda (conftest also accepts cupy)"
    )
    from edgetile.runtime.cuda.device import CudaDevice

    dev = CudaDevice(0)
    yield dev
    dev.close()


def run_preprocess(device, image, views, input_hw, dtype, batch=None):
    """The kernel's output for every view, launched batch views at a time."""
    from edgetile.runtime.cuda.preprocess import FrameUpload, GpuPreprocessor

    n, (ih, iw) = len(views), input_hw
    batch = batch or n
    dtype = np.dtype(dtype)
    stream = device.stream()
    frame = FrameUpload(device)
    pre = GpuPreprocessor(device, input_hw, dtype)
    out = device.alloc(batch * 3 * ih * iw * dtype.itemsize)
    host = device.pinned((n, 3, ih, iw), dtype)
    try:
        ptr, row_bytes = frame.put(image, stream)
        pre.set_views(views, (image.shape[1], image.shape[0]), stream)
        for start in range(0, n, batch):
            k = min(batch, n - start)
            pre.launch(ptr, row_bytes, start, k, out.ptr, stream)
            out.download(host.array[start : start + k], stream)
        stream.synchronize()
        return host.array.copy()
    finally:
        for obj in (host, out, pre, frame, stream):
            obj.close()


def random_case(rng):
    """A random image and views: tiles (edge tiles shifted inward, images smaller than a tile), maybe
    mirrored, maybe with the letterboxed full frame."""
    w, h = (int(v) for v in rng.integers(1, 2200, 2))
    tile = int(rng.integers(32, 1200))
    input_hw = (int(rng.integers(2, 41)) * 16, int(rng.integers(2, 41)) * 16)
    flip = bool(rng.integers(2))
    views = tile_views(plan_tiles(w, h, tile, float(rng.uniform(0, 0.5))), tile, input_hw, (w, h), flip)
    if rng.integers(2):
        views = Views.concat([views, full_frame_view((w, h), input_hw, flip)])
    if len(views) > 24:
        views = views.subset(np.sort(rng.choice(len(views), 24, replace=False)))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, views, input_hw


def assert_content_in_input(views, input_hw):
    """tile_views clamps each view's content to 1..input pixels (a 1 px window never scales to 0), so
    every case reaches the kernel; a view outside that range is a tile_views bug, not a case to skip."""
    c = views.content
    assert ((c >= 1) & (c <= np.array([input_hw[1], input_hw[0]]))).all(), c


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_preprocess_kernel_equals_reference_and_cpu_over_random_sizes(device, dtype):
    from edgetile.runtime.cuda.reference import preprocess_reference

    rng = np.random.default_rng(123 if dtype == np.float32 else 456)
    done = 0
    while done < 25:
        image, views, input_hw = random_case(rng)
        assert_content_in_input(views, input_hw)
        got = run_preprocess(device, image, views, input_hw, dtype, batch=int(rng.integers(1, 9)))
        ref = preprocess_reference(image, views, input_hw, dtype)
        assert np.array_equal(got.view(np.uint8), ref.view(np.uint8)), (
            image.shape,
            input_hw,
            views.windows[:3],
        )
        cpu = BatchBuffer(len(views), input_hw, dtype).fill(image, views).astype(np.float32)
        tol = 1 / 255 + (2.0**-11 if dtype == np.float16 else 1e-6)  # one level, plus FP16 rounding
        assert np.abs(got.astype(np.float32) - cpu).max() <= tol
        done += 1


EDGE_CASES = [
    # (width, height, tile, input_hw, flip, comment)
    (4000, 3000, 1024, (1024, 1024), False, "a 4000x3000 photo: 12 tiles of 1024, no resize"),
    (4000, 3000, 1024, (640, 640), True, "12 tiles resized, mirrored"),
    (1025, 1030, 1024, (512, 512), False, "edge tiles shifted inward by 1 and 6 px"),
    (300, 200, 1024, (640, 640), False, "image smaller than a tile: padded"),
    (1, 1, 64, (64, 64), False, "a single pixel"),
    (64, 5000, 512, (256, 256), True, "a strip taller than wide"),
]


@pytest.mark.parametrize("w,h,tile,input_hw,flip,comment", EDGE_CASES, ids=[c[-1] for c in EDGE_CASES])
def test_preprocess_kernel_edges(device, w, h, tile, input_hw, flip, comment):
    rng = np.random.default_rng(w * h)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    views = tile_views(plan_tiles(w, h, tile, 0.2), tile, input_hw, (w, h), flip)
    assert_content_in_input(views, input_hw)
    for dtype in (np.float32, np.float16):
        got = run_preprocess(device, image, views, input_hw, dtype, batch=8)
        cpu = BatchBuffer(len(views), input_hw, dtype).fill(image, views).astype(np.float32)
        tol = 1 / 255 + (2.0**-11 if dtype == np.float16 else 1e-6)
        assert np.abs(got.astype(np.float32) - cpu).max() <= tol, comment


def test_frame_reuse_and_growth(device):
    """A smaller frame after a larger one, and a larger after that: buffers are reused and grown."""
    from edgetile.runtime.cuda.reference import preprocess_reference

    rng = np.random.default_rng(9)
    for w, h in ((1200, 900), (300, 200), (2500, 1800)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        views = tile_views(plan_tiles(w, h, 640, 0.2), 640, (320, 320), (w, h))
        got = run_preprocess(device, image, views, (320, 320), np.float32)
        assert np.array_equal(got, preprocess_reference(image, views, (320, 320)))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("nc,conf", [(1, 0.25), (3, 0.0), (80, 0.5)])
def test_filter_kernel_keeps_exactly_the_reference_candidates(device, dtype, nc, conf):
    from edgetile.runtime.cuda.filter import CandidateBuffers, GpuFilter
    from edgetile.runtime.cuda.reference import filter_reference, score_threshold

    rng = np.random.default_rng(nc)
    b, n = 8, 5376
    out = rng.random((b, 4 + nc, n)).astype(np.float32)
    out[:, 4:] **= 4
    out[:, 4:, ::13] = np.float32(conf)  # ties with the threshold
    out[1, 4, 7] = np.nan
    out = out.astype(dtype)
    count = 6  # two padding views of a fixed batch are not scanned
    stream = device.stream()
    dev_out = device.to_device(out)
    cands = CandidateBuffers(device, b * n, 4 + nc, dtype)
    try:
        GpuFilter(device, dtype).launch(
            dev_out.ptr, count, 4 + nc, n, score_threshold(conf, dtype), cands, stream
        )
        cands.download_count(stream)
        stream.synchronize()
        k = int(cands.host_count.array[0])
        cands.download(k, stream)
        stream.synchronize()
        idx = cands.host_index.array[:k].astype(np.int64)
        vals = cands.host_values.array[:k]
        order = np.argsort(idx)
        want_idx, want_vals = filter_reference(out, count, conf)
        assert np.array_equal(idx[order], want_idx)
        assert np.array_equal(vals[order].view(np.uint8), want_vals.view(np.uint8))
        dense = cands.take(k, count, n)
        assert dense.shape[:2] == (count, 4 + nc)
    finally:
        for obj in (cands, dev_out, stream):
            obj.close()


def test_cuda_errors_name_the_call(device):
    from edgetile.runtime.cuda.device import CudaError

    with pytest.raises(CudaError, match=r"cuMemAlloc\(\d+ bytes\) failed"):
        device.alloc(1 << 50)  # a petabyte


def test_closing_the_device_closes_what_it_made(device):
    from edgetile.runtime.cuda.device import CudaDevice  # a second device object on the same primary context

    dev = CudaDevice(0)
    buf, stream, host = (
        dev.alloc(1024),
        dev.stream(),
        dev.pinned((16,), np.float32, mapped=dev.can_map_host_memory),
    )
    if dev.can_map_host_memory:
        assert host.device_ptr is not None
    dev.close()
    assert buf.closed and stream.closed and host.closed and dev.closed
    dev.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        dev.alloc(16)
