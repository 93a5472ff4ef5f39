"""The CUDA kernels' arithmetic, checked without a GPU: runtime/cuda/reference.py against real OpenCV,
the CPU preprocessing path and the CPU decoder. The kernels themselves are compared with this reference
in tests/test_cuda_kernels.py (needs_cuda)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgetile.runtime.cuda.reference import (
    axis_table,
    build_view_tables,
    check_views,
    dense_candidates,
    filter_reference,
    output_lut,
    preprocess_reference,
    resize_linear_u8,
    score_threshold,
)
from edgetile.runtime.decode import decode_yolo
from edgetile.runtime.preprocess import BatchBuffer, Views, full_frame_view, tile_views
from edgetile.runtime.tiling import plan_tiles

# --- resize arithmetic against cv2.resize ------------------------------------------------------------

RESIZE_CASES = [
    # (src_w, src_h, dst_w, dst_h)
    (1024, 1024, 512, 512),  # exact 2x down: OpenCV takes its INTER_AREA shortcut
    (512, 512, 1024, 1024),  # exact 2x up
    (1024, 1024, 640, 640),  # the usual tile -> model input
    (4000, 3000, 1024, 768),  # full-frame letterbox pass
    (1000, 700, 640, 448),
    (1023, 1024, 640, 640),  # odd edge tile
    (600, 1024, 375, 640),  # window cut by the image edge
    (1, 1, 5, 7),  # a single pixel
    (3, 1, 1, 1),
    (2, 9, 7, 2),
    (37, 5, 37, 19),  # one axis unchanged
]


def _diff_stats(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(d.max()), float((d != 0).mean())


@pytest.mark.parametrize("sw,sh,dw,dh", RESIZE_CASES)
def test_resize_matches_opencv_within_one_level(sw, sh, dw, dh):
    rng = np.random.default_rng(sw * 7 + dh)
    img = rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8)  # noise: any sampling error shows up
    ours = resize_linear_u8(img, (dw, dh))
    ref = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_LINEAR)
    worst, frac = _diff_stats(ours, ref)
    # The contract is 1/255; OpenCV's scalar tail (last bytes of a row on some builds) rounds differently.
    assert worst <= 1 and frac <= 0.01, (worst, frac)


def test_resize_matches_opencv_over_random_sizes():
    rng = np.random.default_rng(0)
    values = differing = 0
    for _ in range(150):
        sw, sh, dw, dh = (int(v) for v in rng.integers(1, 300, 4))
        img = rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8)
        ours = resize_linear_u8(img, (dw, dh))
        ref = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_LINEAR)
        worst, frac = _diff_stats(ours, ref)
        assert worst <= 1 and frac <= 0.01, ((sw, sh, dw, dh), worst, frac)
        values, differing = values + ref.size, differing + int((ours != ref).sum())
    # With OpenCV's SIMD rounding reproduced, only a build whose scalar row tail (under 16 bytes of a
    # row, about 3 % of these rows' bytes) rounds differently can disagree, in about an eighth of those
    # values: well under 1 % of all. Plain float bilinear with the same weights differs in 12.7 % of
    # them (and none differ on opencv-python 5.0 x86-64, where this was written).
    assert differing / values <= 0.01, (differing, values)


def test_plain_rounding_would_not_match_opencv():
    """The fixed-point detail matters: rounding (h0*b0 + h1*b1) / 2**22 once is off in many pixels."""
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    xt = axis_table(400, 237, True).astype(np.int64)
    yt = axis_table(300, 171, False).astype(np.int64)
    src = img.astype(np.int64)
    rows = src[:, xt[:, 0]] * xt[None, :, 2, None] + src[:, xt[:, 1]] * xt[None, :, 3, None]
    once = (rows[yt[:, 0]] * yt[:, 2, None, None] + rows[yt[:, 1]] * yt[:, 3, None, None] + (1 << 21)) >> 22
    ref = cv2.resize(img, (237, 171), interpolation=cv2.INTER_LINEAR)
    assert _diff_stats(np.clip(once, 0, 255).astype(np.uint8), ref)[1] > 0.05
    assert _diff_stats(resize_linear_u8(img, (237, 171)), ref)[1] <= 0.01


AXIS_CASES = [
    # (src, dst, horizontal, expected first rows [s0, s1, w0, w1])
    (4, 2, True, [[0, 1, 1024, 1024], [2, 3, 1024, 1024]]),  # 2x down: half-pixel centres
    (2, 4, True, [[0, 1, 2048, 0], [0, 1, 1536, 512]]),  # left of the first centre: clamped, fraction zeroed
    (2, 4, False, [[0, 0, 512, 1536], [0, 1, 1536, 512]]),  # y: rows clamped, weights kept
    (5, 5, True, [[0, 1, 2048, 0], [1, 2, 2048, 0]]),  # identity
]


@pytest.mark.parametrize("src,dst,horizontal,expected", AXIS_CASES)
def test_axis_table_samples_at_half_pixel_centres(src, dst, horizontal, expected):
    t = axis_table(src, dst, horizontal)
    assert t.dtype == np.int32 and t.shape == (dst, 4)
    assert t[: len(expected)].tolist() == expected
    assert (t[:, :2] >= 0).all() and (t[:, :2] < src).all()  # never outside the window


def test_axis_table_right_edge_clamps_to_last_column():
    t = axis_table(3, 5, True)
    assert t[-1].tolist() == [2, 2, 2048, 0]


def test_axis_table_refuses_empty_lengths():
    with pytest.raises(ValueError, match="positive lengths, found 0 and 3"):
        axis_table(0, 3, True)


# --- the whole preprocessing against the CPU path --------------------------------------------------

PREPROCESS_CASES = [
    # (width, height, tile, input_hw, flip, full_frame)
    (1500, 1100, 512, (512, 512), False, False),  # no resize: the tables are identities
    (1500, 1100, 1024, (512, 512), False, True),  # 2x down, plus the letterboxed full frame
    (1500, 1100, 640, (512, 512), True, False),  # non-integer scale, mirrored
    (300, 200, 1024, (640, 640), False, False),  # image smaller than a tile: padded
    (2000, 300, 512, (256, 256), True, True),  # strip: tiles padded below, mirrored
    (700, 900, 400, (384, 512), False, False),  # non-square model input
    (130, 1030, 128, (256, 256), False, False),  # 2x up; edge tiles shifted inward
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("w,h,tile,input_hw,flip,full", PREPROCESS_CASES)
def test_reference_equals_cpu_path(w, h, tile, input_hw, flip, full, dtype):
    rng = np.random.default_rng(w + h + tile)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    views = tile_views(plan_tiles(w, h, tile, 0.2), tile, input_hw, (w, h), flip)
    if full:
        views = Views.concat([views, full_frame_view((w, h), input_hw, flip)])
    ours = preprocess_reference(image, views, input_hw, dtype)
    cpu = BatchBuffer(len(views), input_hw, dtype).fill(image, views)
    assert ours.dtype == np.dtype(dtype) and ours.shape == cpu.shape
    diff = np.abs(ours.astype(np.float32) - cpu.astype(np.float32))
    assert diff.max() <= 1 / 255 + 1e-6  # the kernel's contract
    assert (diff > 0).mean() <= 0.01


def test_padding_and_channel_order():
    image = np.zeros((100, 150, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30  # B, G, R
    views = tile_views(plan_tiles(150, 100, 256, 0.2), 256, (256, 256), (150, 100))
    out = preprocess_reference(image, views, (256, 256))
    assert np.allclose(out[0, :, :100, :150].reshape(3, -1).T, np.array([30, 20, 10]) / 255)  # RGB
    assert np.allclose(out[0, :, 100:, :], 114 / 255) and np.allclose(out[0, :, :, 150:], 114 / 255)


def test_flip_mirrors_inside_the_content_only():
    image = np.zeros((64, 100, 3), np.uint8)
    image[:, :10] = 255  # a white band at the left edge
    plain = tile_views(plan_tiles(100, 64, 128, 0.2), 128, (128, 128), (100, 64), flip=False)
    mirrored = tile_views(plan_tiles(100, 64, 128, 0.2), 128, (128, 128), (100, 64), flip=True)
    a = preprocess_reference(image, plain, (128, 128))[0, 0]
    b = preprocess_reference(image, mirrored, (128, 128))[0, 0]
    assert np.array_equal(a[:64, :100], b[:64, :100][:, ::-1])
    assert np.allclose(b[:64, 90:100], 1.0) and np.allclose(b[:, 100:], 114 / 255)  # padding stays right


def test_output_lut_is_the_cpu_conversion():
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for dtype in (np.float32, np.float16):
        expect = np.empty(u8.shape, dtype)
        np.multiply(u8, 1.0 / 255.0, out=expect, casting="unsafe")
        assert np.array_equal(output_lut(dtype).reshape(16, 16).view(np.uint8), expect.view(np.uint8))
    with pytest.raises(ValueError, match="float32 or float16, found float64"):
        output_lut(np.float64)


# --- tables and their checks -------------------------------------------------------------------------


def test_tables_share_one_table_per_geometry():
    views = tile_views(plan_tiles(4000, 3000, 1024, 0.2), 1024, (640, 640), (4000, 3000))
    t = build_view_tables(views, (4000, 3000), (640, 640))
    assert t.params.shape == (len(views), 8) and t.params.dtype == np.int32
    assert len(t.xtab) == 640 and len(t.ytab) == 640  # every tile is 1024 -> 640: one table per axis
    assert t.params[:, :2].tolist() == views.windows[:, :2].tolist()


VIEW_ERRORS = [
    # (windows, content, message)
    ([[0, 0, 101, 50]], [[64, 32]], r"inside the 100x80 image .* found window 0 = \[0, 0, 101, 50\]"),
    ([[-1, 0, 50, 50]], [[32, 32]], r"found window 0 = \[-1, 0, 50, 50\]"),
    ([[10, 0, 10, 50]], [[1, 32]], r"x0 < x1"),
    ([[0, 0, 50, 50]], [[65, 32]], r"between 1x1 and the 64x64 input, found \[65, 32\]"),
    ([[0, 0, 50, 50]], [[0, 32]], r"found \[0, 32\] for view 0"),
]


@pytest.mark.parametrize("windows,content,message", VIEW_ERRORS)
def test_views_outside_the_image_are_refused(windows, content, message):
    n = len(windows)
    views = Views(
        np.array(windows, np.int64),
        np.ones((n, 2)),
        np.array(content, np.int64),
        np.zeros(n, bool),
        np.zeros((n, 4), bool),
    )
    with pytest.raises(ValueError, match=message):
        check_views(views, (100, 80), (64, 64))


# --- confidence filtering against the CPU decoder --------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("conf", [0.0, 0.1, 0.25, 0.3, 0.5, 0.7])
def test_score_threshold_keeps_what_numpy_keeps(dtype, conf):
    # Every representable value near conf, and conf's own nearest value.
    c = np.asarray(conf).astype(dtype)
    near = [c]
    lo = hi = c
    for _ in range(4):
        lo, hi = np.nextafter(lo, dtype(-1)), np.nextafter(hi, dtype(2))
        near += [lo, hi]
    s = np.array(near, dtype)
    t = np.float32(score_threshold(conf, dtype))
    assert np.array_equal(s.astype(np.float32) > t, s > conf)


def _random_output(rng, batch, nc, n, dtype, nan=False):
    out = rng.random((batch, 4 + nc, n)).astype(np.float32)
    out[:, :4] *= 200
    out[:, 4:] **= 3  # most anchors score low, as in a real head
    out[:, 4:, ::7] = np.float32(0.3)  # exact ties with a threshold
    if nan:
        out[0, 4, 5] = np.nan
    return out.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("nc", [1, 3])
@pytest.mark.parametrize("conf", [0.0, 0.3, 0.6])
def test_candidates_decode_exactly_like_the_full_output(dtype, nc, conf):
    rng = np.random.default_rng(nc * 10 + int(conf * 10))
    out = _random_output(rng, 4, nc, 500, dtype, nan=True)
    count = 3  # the last batch item is padding of a fixed-batch model
    idx, vals = filter_reference(out, count, conf)
    # The kernel hands out slots in any order: shuffle, as the atomic counter would.
    perm = rng.permutation(len(idx))
    dense = dense_candidates(idx[perm], vals[perm], count, 500)
    assert dense.shape[:2] == (count, 4 + nc) and dense.dtype == out.dtype
    full = decode_yolo(out, count, conf, 0.7, 300)
    sparse = decode_yolo(dense, count, conf, 0.7, 300)
    for (fb, fs, fl), (sb, ss, sl) in zip(full, sparse):
        np.testing.assert_array_equal(fb, sb)
        np.testing.assert_array_equal(fs, ss)
        np.testing.assert_array_equal(fl, sl)


def test_filter_keeps_only_anchors_above_the_threshold():
    out = np.zeros((2, 6, 4), np.float32)
    out[0, 4, 1] = 0.9  # class 0 passes
    out[1, 5, 3] = 0.5  # class 1 passes
    out[1, 4, 0] = 0.25  # equal to conf: not kept (strictly greater, as the CPU decoder)
    out[0, :4, 1] = (1, 2, 3, 4)
    idx, vals = filter_reference(out, 2, 0.25)
    assert idx.tolist() == [1, 4 + 3]
    np.testing.assert_array_equal(vals, out.transpose(0, 2, 1).reshape(-1, 6)[[1, 7]])


def test_dense_candidates_of_nothing_is_one_empty_column_per_view():
    dense = dense_candidates(np.zeros(0, np.int64), np.zeros((0, 5), np.float16), 3, 100)
    assert dense.shape == (3, 5, 1) and not dense.any()
    assert all(len(b) == 0 for b, _, _ in decode_yolo(dense, 3, 0.0, 0.7, 300))


def test_dense_candidates_refuses_indices_outside_the_batch():
    with pytest.raises(ValueError, match=r"flat indices in \[0, 200\), found 0..200"):
        dense_candidates(np.array([0, 200]), np.zeros((2, 5), np.float32), 2, 100)
