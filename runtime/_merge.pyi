# Types of the C extension built from _merge.c (its method table: nms, greedy_nmm, wbf, all positional
# only). Each mirrors the function of the same name in _merge_ref.py, the NumPy reference. Arrays are
# read through the buffer protocol: boxes (n, 4) and scores float64, labels/models/indices int64, all
# C-contiguous; the keep/members/offsets/unions/out_* arrays are written in place. Thresholds are real
# numbers in [0, 1] (not bool); metric is "iou" or "ios"; conf_type is "avg", "max",
# "box_and_model_avg" or "absent_model_aware_avg"; allows_overflow is read for its truth (format "p").
# Each returns the number of rows written.

from typing import SupportsFloat, SupportsIndex

import numpy as np
import numpy.typing as npt

_Real = SupportsFloat | SupportsIndex

def nms(
    boxes: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    iou_thr: _Real,
    metric: str,
    keep: npt.NDArray[np.int64],
    /,
) -> int: ...
def greedy_nmm(
    boxes: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    match_thr: _Real,
    metric: str,
    keep: npt.NDArray[np.int64],
    members: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
    unions: npt.NDArray[np.float64],
    /,
) -> int: ...
def wbf(
    boxes: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    models: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    iou_thr: _Real,
    conf_type: str,
    allows_overflow: object,
    out_boxes: npt.NDArray[np.float64],
    out_scores: npt.NDArray[np.float64],
    out_labels: npt.NDArray[np.int64],
    /,
) -> int: ...
