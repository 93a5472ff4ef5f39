"""The kernels' own C++ run on the CPU (no GPU needed), against runtime/cuda/reference.py, bit for bit.

tests/cuda_host_harness.cu includes runtime/cuda/preprocess.cu and filter.cu and calls their
``__host__ __device__`` per-pixel and per-anchor functions over the whole grid on the CPU, compiled by
nvcc. This checks the CUDA source's arithmetic and indexing here; the launch geometry, the atomic counter
under concurrency and the memory transfers are left to the needs_cuda tests (tests/test_cuda_kernels.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgetile.runtime.cuda import KERNEL_DIR
from edgetile.runtime.cuda.reference import (
    build_view_tables,
    filter_reference,
    output_lut,
    preprocess_reference,
    score_threshold,
)
from edgetile.runtime.preprocess import Views, full_frame_view, tile_views
from edgetile.runtime.tiling import plan_tiles

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(
    NVCC is None, reason="needs nvcc (the CUDA toolkit) on PATH to build the host harness; not found here"
)
HARNESS = Path(__file__).resolve().parent / "cuda_host_harness.cu"


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    exe = tmp_path_factory.mktemp("harness") / "harness"
    res = subprocess.run(
        [NVCC, "-O2", f"-I{KERNEL_DIR}", "-o", str(exe), str(HARNESS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    return exe


def run_preprocess(harness, tmp, image, views, input_hw, dtype):
    t = build_view_tables(views, (image.shape[1], image.shape[0]), input_hw)
    lut = output_lut(dtype)
    files = {name: tmp / f"{name}.bin" for name in ("frame", "params", "xtab", "ytab", "lut", "out")}
    np.ascontiguousarray(image).tofile(files["frame"])
    t.params.tofile(files["params"])
    t.xtab.tofile(files["xtab"])
    t.ytab.tofile(files["ytab"])
    (lut.view(np.uint16) if lut.dtype == np.float16 else lut).tofile(files["lut"])
    kind = "f16" if np.dtype(dtype) == np.float16 else "f32"
    cmd = [
        str(harness),
        "preprocess",
        kind,
        str(files["frame"]),
        str(image.shape[0]),
        str(image.shape[1]),
        str(files["params"]),
        str(len(views)),
        str(files["xtab"]),
        str(len(t.xtab)),
        str(files["ytab"]),
        str(len(t.ytab)),
        str(files["lut"]),
        str(input_hw[0]),
        str(input_hw[1]),
        str(files["out"]),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return np.fromfile(files["out"], dtype=lut.dtype).reshape(len(views), 3, *input_hw)


CASES = [
    # (width, height, tile, input_hw, flip, full_frame, comment)
    (900, 700, 256, (256, 256), False, False, "no resize"),
    (900, 700, 512, (256, 256), True, True, "2x down, mirrored, plus the letterboxed full frame"),
    (300, 200, 1024, (320, 320), False, False, "image smaller than a tile: padding"),
    (1000, 333, 300, (192, 256), True, False, "non-integer scale, non-square input, edge tiles"),
    (130, 90, 64, (128, 128), False, False, "2x up"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("w,h,tile,input_hw,flip,full,comment", CASES, ids=[c[-1] for c in CASES])
def test_preprocess_kernel_code_equals_reference(
    harness, tmp_path, w, h, tile, input_hw, flip, full, comment, dtype
):
    rng = np.random.default_rng(w * 3 + h)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    views = tile_views(plan_tiles(w, h, tile, 0.2), tile, input_hw, (w, h), flip)
    if full:
        views = Views.concat([views, full_frame_view((w, h), input_hw, flip)])
    got = run_preprocess(harness, tmp_path, image, views, input_hw, dtype)
    want = preprocess_reference(image, views, input_hw, dtype)
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), comment


def run_filter(harness, tmp, out, count, conf):
    kind = "f16" if out.dtype == np.float16 else "f32"
    src, idx_f, val_f = tmp / "out.bin", tmp / "idx.bin", tmp / "val.bin"
    np.ascontiguousarray(out[:count]).tofile(src)
    thr = score_threshold(conf, out.dtype)
    cmd = [
        str(harness),
        "filter",
        kind,
        str(src),
        str(count),
        str(out.shape[1]),
        str(out.shape[2]),
        repr(thr),
        str(idx_f),
        str(val_f),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    k = int(res.stdout.strip())
    idx = np.fromfile(idx_f, dtype=np.int32).astype(np.int64)
    vals = np.fromfile(val_f, dtype=out.dtype).reshape(k, out.shape[1])
    return idx, vals


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("nc,conf", [(1, 0.25), (3, 0.3), (80, 0.0)])
def test_filter_kernel_code_keeps_the_reference_candidates(harness, tmp_path, dtype, nc, conf):
    rng = np.random.default_rng(nc)
    out = rng.random((4, 4 + nc, 700)).astype(np.float32)
    out[:, 4:] **= 4
    out[:, 4:, ::11] = np.float32(conf)  # ties with the threshold
    out[0, 4 + nc - 1, 3] = np.nan  # a NaN class score: the anchor is never kept
    out[1, 4, 5] = np.nan
    out = out.astype(dtype)
    idx, vals = run_filter(harness, tmp_path, out, 3, conf)
    want_idx, want_vals = filter_reference(out, 3, conf)
    assert np.array_equal(idx, want_idx)
    assert np.array_equal(vals.view(np.uint8), want_vals.view(np.uint8))
    assert 3 not in idx.tolist() and 700 + 5 not in idx.tolist()


def test_threshold_passed_as_text_round_trips_exactly():
    """The harness gets the float threshold as repr(); strtof must read back the same float32."""
    for conf in (0.1, 0.25, 0.3, 0.7):
        for dtype in (np.float32, np.float16):
            t = score_threshold(conf, dtype)
            assert np.float32(float(repr(t))) == np.float32(t)
