"""Tile plans: overlapping windows that cover every pixel of a large image.

Windows are laid out the way SAHI slices (a step of ``tile - int(overlap * tile)``), and a window that
would run past the image edge is shifted inward rather than padded, so every window but those of an
image smaller than a tile holds only real pixels. An image smaller than a tile along an axis gets one
window there, and the rest of the tile is padding.
"""

from __future__ import annotations

import numpy as np


def _positions(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    pos = list(range(0, length - tile, step))
    # Edge window shifted inward so it ends exactly at the border.
    pos.append(length - tile)
    return pos


def validate_tiling(tile: int, overlap: float) -> None:
    """Raise ValueError unless tile and overlap describe a usable plan."""
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 32:
        raise ValueError(f"tile: expected an integer of at least 32 px, found {tile!r}")
    if not isinstance(overlap, (float, int, np.floating)) or not 0.0 <= float(overlap) < 0.9:
        raise ValueError(f"overlap: expected a fraction in [0, 0.9), found {overlap!r}")


def plan_tiles(width: int, height: int, tile: int = 1024, overlap: float = 0.2) -> np.ndarray:
    """Windows covering a width x height image.

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        tile: Window side in pixels.
        overlap: Fraction of the tile shared by neighbouring windows.

    Returns:
        (N, 4) int64 windows x0, y0, x1, y1 (x1, y1 exclusive), row by row. A window is tile x tile
        px unless the image is smaller than a tile along that axis; then it spans the whole axis and
        the preprocessing pads it to the tile size.
    """
    validate_tiling(tile, overlap)
    if width < 1 or height < 1:
        raise ValueError(f"width, height: expected a positive image size, found {width}x{height}")
    step = tile - int(overlap * tile)
    xs = _positions(int(width), tile, step)
    ys = _positions(int(height), tile, step)
    out = np.empty((len(xs) * len(ys), 4), np.int64)
    i = 0
    for y in ys:
        for x in xs:
            out[i] = (x, y, min(x + tile, width), min(y + tile, height))
            i += 1
    return out


def interior_edges(windows: np.ndarray, width: int, height: int) -> np.ndarray:
    """Which sides of each window lie inside the image (where an object can be cut by the tile).

    Args:
        windows: (N, 4) windows from plan_tiles.
        width: Image width.
        height: Image height.

    Returns:
        (N, 4) bool: left, top, right, bottom side of the window is interior to the image.
    """
    w = np.asarray(windows)
    return np.stack([w[:, 0] > 0, w[:, 1] > 0, w[:, 2] < width, w[:, 3] < height], axis=1)
