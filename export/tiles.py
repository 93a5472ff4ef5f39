"""Model inputs cut from full-size photos exactly the way the runtime cuts them.

Verification and INT8 calibration must see what the model will see in the field: tiles of a large
photo (``plan_tiles``) resized into the model input by the runtime's own preprocessing
(``tile_views`` + ``BatchBuffer``), not letterboxed full frames, whose people are a few pixels tall.
Nothing here reimplements the runtime; it only chooses which tiles to take.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgetile.runtime.images import ImageReadError, expand_sources, image_size, read_image
from edgetile.runtime.preprocess import BatchBuffer, tile_views
from edgetile.runtime.tiling import plan_tiles

from .artifacts import ExportError


@dataclass
class TilePlan:
    """Which tiles of which photos to take.

    Attributes:
        photos: Photo paths, in the order they are read.
        picks: For each photo, the (K, 4) int64 windows x0, y0, x1, y1 taken from it (K may be 0).
        tile: Tile side in photo pixels.
        overlap: Fraction of a tile shared by neighbours.
        input_hw: Model input height and width.
        available: Tiles the photos hold in all (before choosing).
        problems: One line per photo that could not be used, and why.
    """

    photos: list[str]
    picks: list[np.ndarray]
    tile: int
    overlap: float
    input_hw: tuple[int, int]
    available: int
    problems: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(sum(len(p) for p in self.picks))

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield each chosen tile as a (3, H, W) float32 RGB array in [0, 1], one photo read at a time."""
        buf = BatchBuffer(1, self.input_hw)
        for path, windows in zip(self.photos, self.picks):
            if not len(windows):
                continue
            try:
                image = read_image(path)
            except ImageReadError as exc:
                line = f"{path}: {exc}"
                if line not in self.problems:
                    self.problems.append(line)
                    print(f"edgetile: skipped {line}", file=sys.stderr)
                continue
            h, w = image.shape[:2]
            for win in windows:
                views = tile_views(win[None], self.tile, self.input_hw, (w, h))
                yield buf.fill(image, views)[0].copy()


def plan_runtime_tiles(
    sources: Sequence[str | Path],
    count: int,
    input_hw: tuple[int, int],
    tile: int = 1024,
    overlap: float = 0.2,
) -> TilePlan:
    """Choose `count` tiles spread evenly over the tiles of all photos, as the runtime would cut them.

    Photos are only measured here (header reads); they are decoded one at a time when the plan is
    iterated, so a calibration set of hundreds of 4000x3000 photos never sits in memory at once.

    Args:
        sources: Image files, folders (searched recursively) or glob patterns.
        count: How many tiles to take at most.
        input_hw: Model input height and width.
        tile: Tile side in photo pixels (the runtime's --tile).
        overlap: The runtime's --overlap.

    Raises:
        ExportError: No readable photo among the sources.
    """
    if count < 1:
        raise ValueError(f"count: expected at least 1 tile, found {count}")
    paths = expand_sources([str(s) for s in sources])
    problems: list[str] = []
    photos: list[str] = []
    plans: list[np.ndarray] = []
    for p in paths:
        try:
            w, h = image_size(p)
        except ImageReadError as exc:
            problems.append(f"{p}: {exc}")
            continue
        photos.append(p)
        plans.append(plan_tiles(w, h, tile, overlap))
    if not photos:
        where = ", ".join(str(s) for s in sources)
        raise ExportError(
            f"expected photos (jpg, png, ...) in {where}, found "
            + (f"none readable ({problems[0]})" if problems else "none")
        )
    sizes = np.array([len(p) for p in plans])
    total = int(sizes.sum())
    take = min(count, total)
    # Evenly spaced over the concatenated tile list: every photo contributes in proportion to its tiles,
    # and within a photo the chosen tiles spread from corner to corner.
    chosen = np.unique(np.linspace(0, total - 1, take).round().astype(np.int64))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    picks = []
    for start, size, windows in zip(starts, sizes, plans):
        local = chosen[(chosen >= start) & (chosen < start + size)] - start
        picks.append(windows[local])
    return TilePlan(photos, picks, tile, overlap, (int(input_hw[0]), int(input_hw[1])), total, problems)


def synthetic_photo(seed: int, width: int, height: int) -> np.ndarray:
    """A deterministic photo-like test pattern: smooth terrain, texture, and small high-contrast shapes.

    Used to verify an export when the user gives no photos: it exercises every channel, edges at many
    scales and objects of person size, so that a broken export shows as a large output difference.

    Returns:
        (height, width, 3) uint8 BGR.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, (max(2, height // 256), max(2, width // 256), 3), dtype=np.uint8)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 12, (height, width, 3))
    img = np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    for _ in range(max(4, width * height // 40000)):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        s = int(rng.integers(6, 60))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + s // 2, y + s), color, -1)
        else:
            cv2.ellipse(img, (x, y), (s // 2, max(2, s // 5)), float(rng.uniform(0, 180)), 0, 360, color, -1)
    return img


def image_tiles(
    image: np.ndarray, count: int, input_hw: tuple[int, int], tile: int = 1024, overlap: float = 0.2
) -> np.ndarray:
    """Up to `count` tiles of one in-memory photo, spread evenly, preprocessed as the runtime does.

    Args:
        image: (H, W, 3) uint8 BGR photo.

    Returns:
        (K, 3, input_h, input_w) float32 RGB in [0, 1], K = min(count, tiles in the photo).
    """
    h, w = image.shape[:2]
    windows = plan_tiles(w, h, tile, overlap)
    idx = np.unique(np.linspace(0, len(windows) - 1, min(count, len(windows))).round().astype(np.int64))
    views = tile_views(windows[idx], tile, input_hw, (w, h))
    buf = BatchBuffer(len(views), input_hw)
    return buf.fill(image, views).copy()
