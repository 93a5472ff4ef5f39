from __future__ import annotations

import numpy as np
import pytest

from edgetile.runtime.results import Detections

BAD = [
    # (xyxy, scores, class_ids, argument named in the error)
    (np.zeros((3, 5)), np.zeros(3), np.zeros(3), "xyxy"),  # five columns
    (np.zeros((3, 4)), np.zeros(2), np.zeros(3), "scores"),  # one score short
    (np.zeros((3, 4)), np.zeros(3), np.zeros(4), "class_ids"),  # one class too many
    (np.zeros((3, 4)), np.zeros((3, 1)), np.zeros(3), "scores"),  # column vector
    (np.zeros((2, 4)), np.zeros(2), np.array([0.5, 1.0]), "class_ids"),  # fractional classes
]


@pytest.mark.parametrize("xyxy,scores,class_ids,name", BAD)
def test_construction_names_expected_and_actual_shapes(xyxy, scores, class_ids, name):
    with pytest.raises(ValueError, match=name):
        Detections(xyxy, scores, class_ids)


def test_dtypes_are_normalised_and_subsets_keep_alignment():
    d = Detections([[0, 0, 1, 1], [2, 2, 4, 5]], [0.2, 0.9], [1.0, 0.0])
    assert d.xyxy.dtype == np.float32 and d.scores.dtype == np.float32 and d.class_ids.dtype == np.int64
    s = d.sorted()
    assert s.scores.tolist() == pytest.approx([0.9, 0.2]) and s.class_ids.tolist() == [0, 1]
    assert len(Detections.concat([d, Detections.empty(), d])) == 4
    rec = s.to_records({0: "person"})[0]
    assert rec == {
        "bbox": [2.0, 2.0, 4.0, 5.0],
        "score": pytest.approx(0.9),
        "class_id": 0,
        "class_name": "person",
    }
