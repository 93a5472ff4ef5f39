from __future__ import annotations

import numpy as np
import pytest

from edgetile.runtime.tiling import interior_edges, plan_tiles

CASES = [
    # (width, height, tile, overlap)
    (4000, 3000, 1024, 0.2),  # a DJI photo
    (5472, 3078, 1024, 0.2),  # Phantom 4 Pro
    (1024, 1024, 1024, 0.2),  # exactly one tile
    (1025, 1023, 1024, 0.2),  # one pixel wider than a tile, one narrower
    (3000, 500, 1024, 0.25),  # strip: one row of windows, padded vertically
    (300, 200, 1024, 0.2),  # smaller than a tile both ways
    (2048, 1536, 640, 0.0),  # no overlap
    (777, 5000, 256, 0.5),  # tall, heavy overlap
]


@pytest.mark.parametrize("w,h,tile,overlap", CASES)
def test_every_pixel_covered_and_windows_inside(w, h, tile, overlap):
    win = plan_tiles(w, h, tile, overlap)
    cover = np.zeros((h, w), np.int32)
    for x0, y0, x1, y1 in win:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        # A window is a whole tile unless the image is smaller than a tile along that axis.
        assert x1 - x0 == min(tile, w) and y1 - y0 == min(tile, h)
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1


@pytest.mark.parametrize("w,h,tile,overlap", CASES)
def test_edge_windows_shift_inward_to_the_border(w, h, tile, overlap):
    win = plan_tiles(w, h, tile, overlap)
    assert win[:, 2].max() == w and win[:, 3].max() == h
    assert win[:, 0].min() == 0 and win[:, 1].min() == 0


@pytest.mark.parametrize("w,h,tile,overlap", CASES)
def test_same_windows_as_sahi(w, h, tile, overlap):
    slicing = pytest.importorskip("sahi.slicing", reason="SAHI is the oracle for the slice layout")
    ours = sorted(map(tuple, plan_tiles(w, h, tile, overlap).tolist()))
    theirs = slicing.get_slice_bboxes(
        h, w, slice_height=tile, slice_width=tile, overlap_height_ratio=overlap, overlap_width_ratio=overlap
    )
    assert ours == sorted(map(tuple, theirs))


def test_neighbours_overlap_by_at_least_the_requested_fraction():
    win = plan_tiles(4000, 3000, 1024, 0.2)
    xs = sorted(set(win[:, 0].tolist()))
    gaps = np.diff(xs)
    assert (1024 - gaps).min() >= int(0.2 * 1024)


def test_interior_edges_mark_only_sides_inside_the_image():
    win = plan_tiles(2000, 1000, 1024, 0.2)
    inner = interior_edges(win, 2000, 1000)
    first, last = inner[0], inner[-1]
    assert first.tolist() == [False, False, True, False]  # left edge window: only its right side is inside
    assert last.tolist() == [True, False, False, False]


@pytest.mark.parametrize(
    "args,message",
    [
        ((100, 100, 16, 0.2), "tile"),  # tile too small
        ((100, 100, 1024, 0.95), "overlap"),
        ((100, 100, 1024, -0.1), "overlap"),
        ((0, 100, 1024, 0.2), "width"),
        ((100, 100, 512.5, 0.2), "tile"),
    ],
)
def test_bad_arguments_name_what_was_expected(args, message):
    with pytest.raises(ValueError, match=message):
        plan_tiles(*args)
