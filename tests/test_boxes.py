"""Pairwise box overlap: torchvision as the oracle for IoU, hand-computed cases for IoS and IoA."""

from __future__ import annotations

import numpy as np
import pytest

from edgetile.runtime.boxes import box_areas, pairwise_overlap

A = [0, 0, 10, 10]  # area 100
INSIDE = [2, 2, 4, 7]  # area 10, inside A
HALF = [5, 0, 15, 10]  # area 100, half over A
APART = [20, 20, 30, 30]
POINT = [3, 3, 3, 3]  # area 0
LINE = [0, 5, 10, 5]  # area 0, along A

# Each case: box a, box b, expected (IoU, IoS, IoA).
CASES = [
    # case: identical boxes
    (A, A, (1.0, 1.0, 1.0)),
    # case: a small box inside a large one: IoS counts it whole, IoU does not
    (A, INSIDE, (0.1, 1.0, 0.1)),
    (INSIDE, A, (0.1, 1.0, 1.0)),
    # case: half overlap of equal boxes
    (A, HALF, (50 / 150, 0.5, 0.5)),
    # case: apart
    (A, APART, (0.0, 0.0, 0.0)),
    # case: degenerate boxes never divide by zero
    (POINT, A, (0.0, 0.0, 0.0)),
    (A, LINE, (0.0, 0.0, 0.0)),
    (POINT, POINT, (0.0, 0.0, 0.0)),
]


@pytest.mark.parametrize("a,b,expected", CASES)
def test_overlap_of_two_boxes(a, b, expected):
    got = [float(pairwise_overlap(np.array([a]), np.array([b]), m)[0, 0]) for m in ("iou", "ios", "ioa")]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_iou_matches_torchvision():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 200, (60, 2))
    a = np.concatenate([xy, xy + rng.uniform(1, 40, (60, 2))], 1)
    xy = rng.uniform(0, 200, (45, 2))
    b = np.concatenate([xy, xy + rng.uniform(1, 40, (45, 2))], 1)
    expected = ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    got = pairwise_overlap(a, b, "iou")
    assert got.shape == (60, 45) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_given_areas_give_the_same_overlaps_and_empty_inputs_give_empty_matrices():
    a = np.array([A, INSIDE, HALF], np.float64)
    for metric in ("iou", "ios", "ioa"):
        np.testing.assert_array_equal(
            pairwise_overlap(a, a, metric, box_areas(a), box_areas(a)), pairwise_overlap(a, a, metric)
        )
    assert pairwise_overlap(np.zeros((0, 4)), a).shape == (0, 3)
    assert pairwise_overlap(a, np.zeros((0, 4))).shape == (3, 0)


@pytest.mark.parametrize(
    "a,metric,words",
    [
        # case: an unknown metric
        ([A], "giou", "metric: expected one of iou, ios, ioa, found 'giou'"),
        # case: a flat box list
        (A, "iou", r"a: expected boxes of shape \(K, 4\), found \(4,\)"),
    ],
)
def test_bad_arguments_are_one_clear_error(a, metric, words):
    with pytest.raises(ValueError, match=words):
        pairwise_overlap(np.array(a, np.float64), np.array([A], np.float64), metric)
