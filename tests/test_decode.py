"""Decoding Ultralytics detection outputs with hand-made tensors whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from edgetile.runtime.decode import check_yolo_output, decode_yolo, to_image
from edgetile.runtime.preprocess import tile_views


def head(candidates, nc, n=16, batch=1):
    """(batch, 4 + nc, n) output with the given (b, slot, cx, cy, w, h, scores...) candidates."""
    out = np.zeros((batch, 4 + nc, n), np.float32)
    for b, slot, cx, cy, w, h, *scores in candidates:
        out[b, :4, slot] = (cx, cy, w, h)
        out[b, 4:, slot] = scores
    return out


def test_centre_size_becomes_corners_and_class_is_the_argmax():
    out = head([(0, 3, 50, 60, 20, 40, 0.1, 0.8, 0.3)], nc=3)
    ((boxes, scores, labels),) = decode_yolo(out, 1, conf=0.25, iou=0.7, max_det=300)
    np.testing.assert_allclose(boxes, [[40, 40, 60, 80]])
    assert scores.tolist() == pytest.approx([0.8]) and labels.tolist() == [1]


CONF_CASES = [
    # (score, conf, kept) - the threshold is strict, as in Ultralytics
    (0.25, 0.25, False),
    (0.2501, 0.25, True),
    (0.0, 0.0, False),
]


@pytest.mark.parametrize("score,conf,kept", CONF_CASES)
def test_confidence_threshold_is_strict(score, conf, kept):
    out = head([(0, 0, 10, 10, 4, 4, score)], nc=1)
    ((boxes, _, _),) = decode_yolo(out, 1, conf=conf, iou=0.7, max_det=300)
    assert len(boxes) == int(kept)


def test_nms_is_per_class_and_keeps_the_best():
    out = head(
        [
            (0, 0, 50, 50, 20, 20, 0.9, 0.0),  # class 0, best
            (0, 1, 51, 50, 20, 20, 0.8, 0.0),  # class 0, same place: suppressed
            (0, 2, 51, 50, 20, 20, 0.0, 0.7),  # class 1, same place: kept (other class)
            (0, 3, 200, 200, 20, 20, 0.6, 0.0),  # class 0 elsewhere: kept
        ],
        nc=2,
    )
    ((boxes, scores, labels),) = decode_yolo(out, 1, conf=0.25, iou=0.7, max_det=300)
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.6]) and labels.tolist() == [0, 1, 0]


def test_max_det_keeps_the_highest_scores_and_padding_items_are_not_decoded():
    cands = [(0, i, 20 * i + 10, 10, 8, 8, 0.3 + 0.05 * i) for i in range(8)]
    cands.append((1, 0, 10, 10, 8, 8, 0.99))  # second batch item: padding of a fixed-batch model
    out = head(cands, nc=1, batch=2)
    decoded = decode_yolo(out, 1, conf=0.25, iou=0.7, max_det=3)
    assert len(decoded) == 1
    assert decoded[0][1].tolist() == pytest.approx([0.65, 0.6, 0.55])


@pytest.mark.parametrize(
    "shape,names", [((1, 84, 100), 1), ((1, 100, 84), 80), ((2, 5, 10), 1), ((1, 4, 10), None)]
)
def test_outputs_that_do_not_fit_are_refused_with_both_shapes(shape, names):
    with pytest.raises(ValueError, match=r"expected .*found \(" + ", ".join(map(str, shape))):
        check_yolo_output(np.zeros(shape, np.float32), 1, names)


def test_to_image_scales_shifts_unflips_and_drops_padding():
    # A 300x200 image in a 512 tile into a 256 input: content 150x100 at scale 0.5, rest is padding.
    views = tile_views(np.array([[0, 0, 300, 200]]), 512, (256, 256), (300, 200), flip=True)
    boxes = np.array([[10, 20, 30, 40], [200, 200, 220, 220]], np.float32)  # second one: in the padding
    dets, cut = to_image(boxes, np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64), views, 0)
    # Un-mirrored inside the 150 px content (x -> 150 - x), then scaled by 1 / 0.5.
    np.testing.assert_allclose(dets.xyxy, [[240, 40, 280, 80]])
    assert cut.tolist() == [False]
