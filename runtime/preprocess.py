"""CPU preprocessing: image windows into one reusable NCHW batch array.

A *view* is what the model sees in one batch slot: a window of the image, resized by (sx, sy) model
pixels per image pixel, placed at the slot's top-left corner, optionally mirrored, with the rest of the
slot padded in Ultralytics' grey. Tiles are views of scale input/tile; the whole-image pass is one view
letterboxed into the input. Decoding maps boxes back through the same view, and drops those whose
centre lies in the padding.

The CUDA kernel of the GPU path computes exactly the same thing (cv2.INTER_LINEAR sampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from .tiling import interior_edges

PAD_VALUE = 114


@dataclass(frozen=True)
class Views:
    """Geometry of a set of views.

    Attributes:
        windows: (N, 4) int64 image windows x0, y0, x1, y1.
        scales: (N, 2) float64 model pixels per image pixel along x and y.
        content: (N, 2) int64 width and height of the resized window inside the slot (the rest pads).
        flipped: (N,) bool, mirrored left-right inside the content area.
        interior: (N, 4) bool, which window sides (left, top, right, bottom) lie inside the image, where
            an object can be cut by the window.
    """

    windows: np.ndarray
    scales: np.ndarray
    content: np.ndarray
    flipped: np.ndarray
    interior: np.ndarray

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def subset(self, index: slice | np.ndarray) -> Views:
        return Views(
            self.windows[index],
            self.scales[index],
            self.content[index],
            self.flipped[index],
            self.interior[index],
        )

    @staticmethod
    def concat(parts: list[Views]) -> Views:
        return Views(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("windows", "scales", "content", "flipped", "interior")
            )
        )


def tile_views(
    windows: np.ndarray, tile: int, input_hw: tuple[int, int], image_wh: tuple[int, int], flip: bool = False
) -> Views:
    """Views of tiles: each tile x tile window resized to the model input.

    Args:
        windows: (N, 4) windows from plan_tiles.
        tile: Tile side in image pixels; windows smaller than this (small images) are padded.
        input_hw: Model input height and width.
        image_wh: Image width and height.
        flip: Mirror every view.
    """
    w = np.asarray(windows, np.int64).reshape(-1, 4)
    n = len(w)
    ih, iw = input_hw
    sx, sy = iw / tile, ih / tile
    scales = np.tile(np.array([[sx, sy]]), (n, 1))
    # At least one model pixel: a 1 px image must not round away to an empty resize.
    cw = np.clip(np.round((w[:, 2] - w[:, 0]) * sx).astype(np.int64), 1, iw)
    ch = np.clip(np.round((w[:, 3] - w[:, 1]) * sy).astype(np.int64), 1, ih)
    interior = interior_edges(w, *image_wh)
    return Views(w, scales, np.stack([cw, ch], axis=1), np.full(n, flip), interior)


def full_frame_view(image_wh: tuple[int, int], input_hw: tuple[int, int], flip: bool = False) -> Views:
    """One view of the whole image, letterboxed (aspect kept) into the model input."""
    W, H = image_wh
    ih, iw = input_hw
    s = min(iw / W, ih / H)
    cw, ch = min(max(int(round(W * s)), 1), iw), min(max(int(round(H * s)), 1), ih)
    return Views(
        np.array([[0, 0, W, H]], np.int64),
        np.array([[s, s]]),
        np.array([[cw, ch]], np.int64),
        np.array([flip]),
        np.zeros((1, 4), bool),
    )


class BatchBuffer:
    """One contiguous (B, 3, H, W) input array, reused from batch to batch.

    Args:
        batch: Slots in the buffer.
        input_hw: Model input height and width.
        dtype: float32 or float16, as the model wants.
    """

    def __init__(self, batch: int, input_hw: tuple[int, int], dtype: npt.DTypeLike = np.float32) -> None:
        if batch < 1:
            raise ValueError(f"batch: expected at least 1, found {batch}")
        self.array = np.empty((batch, 3, int(input_hw[0]), int(input_hw[1])), dtype)
        # uint8 staging for one slot: resize and channel swap happen in 8 bits, the scale to [0, 1]
        # once per slot on the way into the float buffer.
        self._slot = np.empty((int(input_hw[0]), int(input_hw[1]), 3), np.uint8)

    @property
    def capacity(self) -> int:
        return int(self.array.shape[0])

    def fill(self, image: np.ndarray, views: Views) -> np.ndarray:
        """Write the views of an image into the first len(views) slots.

        Args:
            image: (H, W, 3) uint8 BGR image.
            views: At most `capacity` views.

        Returns:
            The (len(views), 3, H, W) filled part of the buffer (a view, not a copy).
        """
        n = len(views)
        if n > self.capacity:
            raise ValueError(f"views: expected at most {self.capacity} views for this buffer, found {n}")
        for i in range(n):
            self._fill_slot(image, views, i, self.array[i])
        return self.array[:n]

    def _fill_slot(self, image: np.ndarray, views: Views, i: int, out: np.ndarray) -> None:
        x0, y0, x1, y1 = (int(v) for v in views.windows[i])
        cw, ch = (int(v) for v in views.content[i])
        crop = image[y0:y1, x0:x1]
        slot = self._slot
        ih, iw = slot.shape[:2]
        if cw != iw or ch != ih:
            slot[:] = PAD_VALUE
        target = slot[:ch, :cw]
        if crop.shape[1] == cw and crop.shape[0] == ch:
            target[:] = crop
        else:
            cv2.resize(crop, (cw, ch), dst=target, interpolation=cv2.INTER_LINEAR)
        if views.flipped[i]:
            target[:] = target[:, ::-1]
        # BGR -> RGB, HWC -> CHW and /255 in one pass per channel.
        for c in range(3):
            np.multiply(slot[:, :, 2 - c], 1.0 / 255.0, out=out[c], casting="unsafe")


def preprocess_reference(
    image: np.ndarray,
    window: tuple[int, int, int, int],
    content_wh: tuple[int, int],
    input_hw: tuple[int, int],
    flip: bool = False,
) -> np.ndarray:
    """Plain OpenCV preprocessing of one view, the oracle for BatchBuffer and the CUDA kernel.

    Returns:
        (3, H, W) float32 RGB in [0, 1].
    """
    x0, y0, x1, y1 = window
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    cw, ch = content_wh
    resized = (
        cv2.resize(crop, (cw, ch), interpolation=cv2.INTER_LINEAR) if crop.shape[:2] != (ch, cw) else crop
    )
    if flip:
        resized = cv2.flip(resized, 1)
    canvas = np.full((input_hw[0], input_hw[1], 3), PAD_VALUE, np.uint8)
    canvas[:ch, :cw] = resized
    rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
    return (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)
