"""Pairwise overlap of boxes (IoU, IoS, IoA) in NumPy: one definition for merging, filtering and metrics.

Boxes are x1, y1, x2, y2 in continuous pixel coordinates (no "+1" pixel convention). Overlaps are
float64, and 0 wherever the denominator is not positive (a box of zero area), so that degenerate
boxes never divide by zero.
"""

from __future__ import annotations

import numpy as np

OVERLAP_METRICS = ("iou", "ios", "ioa")


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of boxes.

    Args:
        boxes: (N, 4) x1, y1, x2, y2.

    Returns:
        (N,) areas, in the boxes' dtype.
    """
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_overlap(
    a: np.ndarray,
    b: np.ndarray,
    metric: str = "iou",
    areas_a: np.ndarray | None = None,
    areas_b: np.ndarray | None = None,
) -> np.ndarray:
    """Overlap of every box of ``a`` with every box of ``b``.

    Args:
        a: (N, 4) boxes.
        b: (M, 4) boxes.
        metric: "iou" (intersection over union), "ios" (intersection over the smaller of the two
            areas: a small box inside a large one counts as a full match, the tiled merge's measure)
            or "ioa" (intersection over the area of the box of ``a``: how much of it is covered).
        areas_a: (N,) their areas when already known (:func:`box_areas`), else computed.
        areas_b: (M,) likewise for ``b``.

    Returns:
        (N, M) float64 overlaps in [0, 1].

    Raises:
        ValueError: When metric is not one of OVERLAP_METRICS or a box array is not (K, 4).
    """
    if metric not in OVERLAP_METRICS:
        raise ValueError(f"metric: expected one of {', '.join(OVERLAP_METRICS)}, found {metric!r}")
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    for name, boxes in (("a", a), ("b", b)):
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{name}: expected boxes of shape (K, 4), found {boxes.shape}")
    area_a = box_areas(a) if areas_a is None else np.asarray(areas_a, np.float64)
    area_b = box_areas(b) if areas_b is None else np.asarray(areas_b, np.float64)
    w = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0)
    h = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0)
    inter = w * h
    if metric == "iou":
        # (area_a + area_b) - inter, in this order: the C merge kernels round the union the same way.
        den = (area_a[:, None] + area_b[None, :]) - inter
    elif metric == "ios":
        den = np.minimum(area_a[:, None], area_b[None, :])
    else:
        den = np.broadcast_to(area_a[:, None], inter.shape)
    out = np.zeros_like(inter)
    np.divide(inter, den, out=out, where=den > 0.0)
    return out
