"""Decoding Ultralytics YOLOv8 / YOLO11 detection outputs and mapping boxes back to the image."""

from __future__ import annotations

import numpy as np

from . import merge
from .preprocess import Views
from .results import Detections


def check_yolo_output(output: np.ndarray, batch: int, num_classes: int | None) -> None:
    """Raise ValueError unless output is (batch, 4 + num_classes, N) as Ultralytics detection heads give."""
    expect = f"({batch}, 4+{num_classes if num_classes is not None else 'nc'}, N)"
    if output.ndim != 3 or output.shape[0] != batch:
        raise ValueError(
            f"model output: expected an Ultralytics detection output of shape {expect}, found {output.shape}"
        )
    if num_classes is not None and output.shape[1] != 4 + num_classes:
        raise ValueError(
            f"model output: expected shape {expect} for {num_classes} class name(s) in the model metadata, "
            f"found {output.shape}"
        )
    if output.shape[1] < 5:
        raise ValueError(
            f"model output: expected shape {expect} with at least one class, found {output.shape}"
        )


def decode_yolo(
    output: np.ndarray, count: int, conf: float, iou: float, max_det: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Boxes of each batch item above the confidence threshold, after class-aware NMS.

    Args:
        output: (B, 4 + nc, N) centre x, centre y, width, height in input pixels, then class scores.
        count: Items of the batch that hold real views (the rest is padding of a fixed-batch model).
        conf: Confidence threshold.
        iou: IoU threshold of the per-view NMS.
        max_det: Most boxes kept per view.

    Returns:
        For each of the first `count` items: ((M, 4) float32 xyxy in input pixels, (M,) float32
        scores, (M,) int64 class ids), by descending score.
    """
    out = []
    nc = output.shape[1] - 4
    for b in range(count):
        pred = output[b]
        cls = pred[4:]
        if nc == 1:
            scores = cls[0]
            keep = np.flatnonzero(scores > conf)
            labels = np.zeros(len(keep), np.int64)
            scores = scores[keep]
        else:
            best = cls.max(axis=0)
            keep = np.flatnonzero(best > conf)
            labels = cls[:, keep].argmax(axis=0).astype(np.int64)
            scores = best[keep]
        xywh = pred[:4, keep]
        half_w, half_h = xywh[2] * 0.5, xywh[3] * 0.5
        boxes = np.stack([xywh[0] - half_w, xywh[1] - half_h, xywh[0] + half_w, xywh[1] + half_h], axis=1)
        boxes = boxes.astype(np.float32, copy=False)
        scores = scores.astype(np.float32, copy=False)
        if len(keep) > 1:
            k = merge.nms(boxes, scores, labels, iou_thr=iou, metric="iou")[:max_det]
            boxes, scores, labels = boxes[k], scores[k], labels[k]
        out.append((boxes, scores, labels))
    return out


def to_image(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, views: Views, i: int, edge_margin: float = 2.0
) -> tuple[Detections, np.ndarray]:
    """Map one view's boxes from input pixels to image pixels.

    Boxes whose centre lies in the slot's padding are dropped (padding never yields boxes); the rest
    are un-mirrored, clipped to the view's content and shifted into the image.

    Args:
        boxes: (M, 4) xyxy in input pixels.
        scores: (M,) scores.
        labels: (M,) class ids.
        views: The batch's views.
        i: Which view.
        edge_margin: Image pixels within which a box touching an interior window side counts as cut.

    Returns:
        (Detections in image pixels, (M',) bool: the box is cut by an interior side of its window).
    """
    cw, ch = (float(v) for v in views.content[i])
    b = boxes.astype(np.float64, copy=True)
    if views.flipped[i]:
        b[:, [0, 2]] = cw - b[:, [2, 0]]
    cx, cy = (b[:, 0] + b[:, 2]) * 0.5, (b[:, 1] + b[:, 3]) * 0.5
    inside = (cx >= 0) & (cx < cw) & (cy >= 0) & (cy < ch)
    b, scores, labels = b[inside], scores[inside], labels[inside]
    b[:, 0] = np.clip(b[:, 0], 0, cw)
    b[:, 2] = np.clip(b[:, 2], 0, cw)
    b[:, 1] = np.clip(b[:, 1], 0, ch)
    b[:, 3] = np.clip(b[:, 3], 0, ch)
    sx, sy = views.scales[i]
    x0, y0, x1, y1 = (float(v) for v in views.windows[i])
    b[:, [0, 2]] = b[:, [0, 2]] / sx + x0
    b[:, [1, 3]] = b[:, [1, 3]] / sy + y0
    left, top, right, bottom = views.interior[i]
    cut = (
        (left & (b[:, 0] <= x0 + edge_margin))
        | (top & (b[:, 1] <= y0 + edge_margin))
        | (right & (b[:, 2] >= x1 - edge_margin))
        | (bottom & (b[:, 3] >= y1 - edge_margin))
    )
    return Detections(b.astype(np.float32), scores, labels), cut
