from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgetile.runtime.preprocess import BatchBuffer, full_frame_view, preprocess_reference, tile_views
from edgetile.runtime.tiling import plan_tiles

CASES = [
    # (width, height, tile, input_hw, flip)
    (1500, 1100, 512, (512, 512), False),  # no resize
    (1500, 1100, 1024, (512, 512), False),  # downscale 2x
    (1500, 1100, 640, (512, 512), True),  # non-integer scale, mirrored
    (300, 200, 1024, (640, 640), False),  # smaller than a tile: padded
    (2000, 300, 512, (256, 256), True),  # strip: padded below, mirrored
    (700, 900, 400, (384, 512), False),  # non-square model input
    (1, 1, 1024, (256, 256), False),  # a single pixel: scaled size would round to 0
    (3, 2, 1024, (256, 256), True),
]


def expected_tile(image, window, tile, input_hw, flip):
    """One tile as the model must see it, worked out here from the tile side alone (not from the
    module's views): the window scaled by input/tile (at least 1 px, at most the input), resized by
    cv2.resize, mirrored, pasted top-left on a 114-grey canvas, BGR to RGB, scaled to [0, 1], CHW."""
    x0, y0, x1, y1 = window
    ih, iw = input_hw
    cw = min(max(round((x1 - x0) * iw / tile), 1), iw)
    ch = min(max(round((y1 - y0) * ih / tile), 1), ih)
    crop = image[y0:y1, x0:x1]
    resized = (
        crop if crop.shape[:2] == (ch, cw) else cv2.resize(crop, (cw, ch), interpolation=cv2.INTER_LINEAR)
    )
    if flip:
        resized = resized[:, ::-1]
    canvas = np.full((ih, iw, 3), 114, np.uint8)
    canvas[:ch, :cw] = resized
    return (canvas[..., ::-1].astype(np.float32) / 255.0).transpose(2, 0, 1)


@pytest.mark.parametrize("w,h,tile,input_hw,flip", CASES)
def test_batch_matches_tiles_built_with_opencv(w, h, tile, input_hw, flip):
    rng = np.random.default_rng(w + h)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    windows = plan_tiles(w, h, tile, 0.2)
    views = tile_views(windows, tile, input_hw, (w, h), flip)
    buf = BatchBuffer(len(views), input_hw)
    batch = buf.fill(image, views)
    assert batch.shape == (len(windows), 3, *input_hw) and batch.flags.c_contiguous
    for i, window in enumerate(windows):
        want = expected_tile(image, tuple(int(v) for v in window), tile, input_hw, flip)
        np.testing.assert_allclose(batch[i], want, atol=1e-6)
        # The module's own reference (the CUDA kernel's oracle) agrees with it too.
        ref = preprocess_reference(
            image, tuple(views.windows[i]), tuple(views.content[i]), input_hw, bool(views.flipped[i])
        )
        np.testing.assert_allclose(ref, want, atol=1e-6)


@pytest.mark.parametrize("flip", [False, True])
def test_two_pixels_by_hand(flip):
    # A 2x1 photo, red then blue (BGR), smaller than its 32 px tile, onto a 32x32 input: scale 1, so the
    # two pixels land unresized at the top left (mirrored with flip), the rest is the 114 grey padding,
    # and channels come out RGB.
    image = np.array([[[0, 0, 255], [255, 0, 0]]], np.uint8)
    views = tile_views(plan_tiles(2, 1, 32, 0.2), 32, (32, 32), (2, 1), flip)
    batch = BatchBuffer(1, (32, 32)).fill(image, views)
    want = np.full((3, 32, 32), 114 / 255, np.float32)
    red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)  # RGB
    first, second = (blue, red) if flip else (red, blue)
    want[:, 0, 0], want[:, 0, 1] = first, second
    np.testing.assert_allclose(batch[0], want, atol=1e-7)


def test_buffer_is_reused_between_batches_and_fully_rewritten():
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (1200, 1200, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    buf = BatchBuffer(4, (256, 256))
    views = tile_views(plan_tiles(1200, 1200, 512, 0.2), 512, (256, 256), (1200, 1200))
    first = buf.fill(big, views.subset(slice(0, 1)))
    assert np.shares_memory(first, buf.array)
    v = tile_views(plan_tiles(150, 100, 512, 0.2), 512, (256, 256), (150, 100))
    out = buf.fill(small, v)
    ref = preprocess_reference(small, tuple(v.windows[0]), tuple(v.content[0]), (256, 256))
    # Padding from the previous, larger image must not survive in the slot.
    np.testing.assert_allclose(out[0], ref, atol=1e-6)


def test_float16_buffer_within_half_precision():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (800, 800, 3), dtype=np.uint8)
    views = tile_views(plan_tiles(800, 800, 512, 0.2), 512, (320, 320), (800, 800))
    batch = BatchBuffer(len(views), (320, 320), np.float16).fill(image, views)
    ref = preprocess_reference(image, tuple(views.windows[0]), tuple(views.content[0]), (320, 320))
    assert batch.dtype == np.float16
    np.testing.assert_allclose(batch[0].astype(np.float32), ref, atol=1e-3)


def test_full_frame_of_a_strip_keeps_at_least_one_row():
    v = full_frame_view((5000, 1), (256, 256))
    assert v.content[0].tolist() == [256, 1]
    BatchBuffer(1, (256, 256)).fill(np.zeros((1, 5000, 3), np.uint8), v)


def test_full_frame_view_letterboxes_keeping_aspect():
    v = full_frame_view((4000, 3000), (640, 640))
    assert v.content[0].tolist() == [640, 480]
    assert v.scales[0, 0] == pytest.approx(0.16)
    image = np.random.default_rng(3).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    batch = BatchBuffer(1, (640, 640)).fill(image, v)
    ref = preprocess_reference(image, (0, 0, 4000, 3000), (640, 480), (640, 640))
    np.testing.assert_allclose(batch[0], ref, atol=1e-6)
    assert np.allclose(batch[0, :, 480:, :], 114 / 255)  # the letterbox padding


def test_too_many_views_for_the_buffer_is_an_error():
    views = tile_views(plan_tiles(3000, 3000, 512, 0.2), 512, (256, 256), (3000, 3000))
    with pytest.raises(ValueError, match="at most 2 views"):
        BatchBuffer(2, (256, 256)).fill(np.zeros((3000, 3000, 3), np.uint8), views)
