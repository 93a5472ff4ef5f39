"""The merge step: join boxes from overlapping tiles, flipped passes and several models.

Three operations, each a C kernel (``_merge.c``) with a NumPy reference beside it (``_merge_ref.py``):

* :func:`nms`: non-maximum suppression by IoU or by IoS (intersection over the smaller box, the
  metric that suppresses a tile's cut-off partial box inside its neighbour's complete one).
* :func:`greedy_nmm`: greedy non-maximum merging, grouped as SAHI's ``greedy_nmm`` groups.
* :func:`wbf`: Weighted Boxes Fusion with the results of ``ensemble_boxes.weighted_boxes_fusion``.

None of them builds an N x N matrix: neighbours are found in a grid (C) or an x-sorted window
(NumPy), so 100,000 boxes merge in a fraction of a second with the C kernels.

Implementation choice: the C kernels are used when the extension imports, unless the environment
variable ``EDGETILE_PUREPYTHON`` is set (to anything but ``0``). :data:`BACKEND` says which one the
functions use by default; every function also takes ``backend="c"`` or ``backend="numpy"`` to pick
one explicitly (the tests run the whole suite against both). There is no global switch.

Dtypes: boxes and scores may be float32, float64 or integer arrays, contiguous or not. Output boxes
(and scores) are float32 when the corresponding input is float32, float64 otherwise; indices and
labels are int64. Coordinates may be normalized or in pixels; nothing is clipped unless asked.

The Detector's two cross-tile steps work on :class:`~edgetile.runtime.results.Detections` with them:
:func:`suppress_cut_boxes` (a box cut by a tile side goes when a complete box covers it), then
:func:`merge_boxes` (the method a DetectConfig names, one of :data:`MERGE_METHODS`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import ModuleType

import numpy as np

from . import _merge_ref
from .boxes import pairwise_overlap
from .results import Detections

__all__ = [
    "AVAILABLE_BACKENDS",
    "BACKEND",
    "C_UNAVAILABLE_REASON",
    "MERGE_METHODS",
    "greedy_nmm",
    "merge_boxes",
    "nms",
    "suppress_cut_boxes",
    "wbf",
]

_C_KERNELS: ModuleType | None
if os.environ.get("EDGETILE_PUREPYTHON", "") not in ("", "0"):
    _C_KERNELS = None
    C_UNAVAILABLE_REASON: str | None = "EDGETILE_PUREPYTHON is set"
else:
    try:
        from . import _merge
    except ImportError as exc:  # not built (no compiler at install): the NumPy reference serves
        _C_KERNELS = None
        C_UNAVAILABLE_REASON = f"the C extension edgetile.runtime._merge could not be imported: {exc}"
    else:
        _C_KERNELS = _merge
        C_UNAVAILABLE_REASON = None

#: Which implementation the functions use when ``backend`` is not given: ``"c"`` or ``"numpy"``.
#: Information only; rebinding it changes nothing.
BACKEND: str = "c" if _C_KERNELS is not None else "numpy"
#: The implementations usable in this process, default first.
AVAILABLE_BACKENDS: tuple[str, ...] = ("c", "numpy") if _C_KERNELS is not None else ("numpy",)
_DEFAULT_KERNELS: ModuleType = _C_KERNELS if _C_KERNELS is not None else _merge_ref

_FLOAT32 = np.dtype(np.float32)

#: The cross-tile merges a DetectConfig may name (see :func:`merge_boxes`).
MERGE_METHODS = ("ios", "nms", "nmm", "wbf")


def _kernels(backend: str | None) -> ModuleType:
    if backend is None:
        return _DEFAULT_KERNELS
    if backend == "numpy":
        return _merge_ref
    if backend == "c":
        if _C_KERNELS is None:
            raise RuntimeError(f"backend='c' was asked for but {C_UNAVAILABLE_REASON}")
        return _C_KERNELS
    raise ValueError(f"backend must be None, 'c' or 'numpy'; found {backend!r}")


# --------------------------------------------------------------------------------------------------
# Validation: every check names the argument, what was expected and what was found.
# --------------------------------------------------------------------------------------------------


def _as_real_array(name: str, value: object) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nested sequences
        raise ValueError(
            f"{name} must be a rectangular array of numbers; found {type(value).__name__} ({exc})"
        ) from exc
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (float or integer dtype); found dtype {arr.dtype}")
    return arr


def _as_boxes(name: str, value: object) -> tuple[np.ndarray, np.dtype]:
    """Boxes as a C-contiguous ``(N, 4)`` float64 array, plus the dtype to give outputs."""
    arr = _as_real_array(name, value)
    if arr.size == 0 and arr.ndim in (1, 2) and (arr.ndim == 1 or arr.shape[1] in (0, 4)):
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as x1, y1, x2, y2; found shape {arr.shape}")
    out_dtype = _FLOAT32 if arr.dtype == _FLOAT32 else np.dtype(np.float64)
    boxes = np.ascontiguousarray(arr, dtype=np.float64)
    _merge_ref._check_boxes(name, boxes)
    return boxes, out_dtype


def _as_scores(name: str, value: object, n: int, unit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scores as a C-contiguous ``(N,)`` float64 array, plus the array as given (for its dtype)."""
    arr = _as_real_array(name, value)
    if arr.size == 0 and arr.ndim == 1 and n == 0:
        arr = arr.reshape(0)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one score per box; found shape {arr.shape}")
    scores = np.ascontiguousarray(arr, dtype=np.float64)
    _merge_ref._check_finite(name, scores, *((0.0, 1.0) if unit else (None, None)))
    return scores, arr


def _as_labels(name: str, value: object, n: int) -> np.ndarray:
    """Labels as a C-contiguous ``(N,)`` int64 array; ``None`` means one class."""
    if value is None:
        return np.zeros(n, dtype=np.int64)
    arr = _as_real_array(name, value)
    if arr.size == 0 and arr.ndim == 1 and n == 0:
        arr = arr.reshape(0)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one label per box; found shape {arr.shape}")
    if arr.dtype.kind == "f":
        # ensemble-boxes users often carry labels as floats; accept them when they are integers.
        bad = ~np.isfinite(arr) | (arr != np.round(arr)) | (np.abs(arr) > 2.0**62)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name} must hold integer class ids; found {arr[i].item()!r} at {name}[{i}]")
    elif arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        i = int(np.argmax(arr))
        raise ValueError(f"{name} must fit in int64; found {arr[i]} at {name}[{i}]")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _as_metric(value: object) -> str:
    if not isinstance(value, str) or value.lower() not in _merge_ref.METRICS:
        raise ValueError(f"metric must be 'iou' or 'ios' (case-insensitive); found {value!r}")
    return value.lower()


def _as_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number; found {type(value).__name__}")
    out = float(value)
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite; found {out!r}")
    return out


def _as_list(name: str, value: object) -> list:
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            raise ValueError(f"{name} must be a sequence with one entry per model; found a 0-d array")
        return list(value)
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a sequence with one entry per model; found {type(value).__name__}")
    return list(value)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def nms(
    boxes: object,
    scores: object,
    labels: object = None,
    iou_thr: float = 0.5,
    metric: str = "iou",
    *,
    backend: str | None = None,
) -> np.ndarray:
    """Non-maximum suppression, class-aware when ``labels`` is given.

    Boxes are visited by descending score, ties by lower index; a box is suppressed when an already
    kept box of the same label overlaps it by more than ``iou_thr`` (strictly, as in
    ``torchvision.ops.batched_nms``). With ``metric="ios"`` the overlap is the intersection over
    the smaller box's area: a tile's partial box inside its neighbour's complete box is suppressed.

    Args:
        boxes: ``(N, 4)`` boxes ``x1, y1, x2, y2``, pixel or normalized coordinates.
        scores: ``(N,)`` confidences (any finite values; only their order matters).
        labels: ``(N,)`` integer class ids, or None for one class.
        iou_thr: Overlap above which the lower-scored box is suppressed, in ``[0, 1]``.
        metric: ``"iou"`` or ``"ios"``.
        backend: ``"c"`` or ``"numpy"``; None uses :data:`BACKEND`.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by descending score.

    Raises:
        ValueError: NaN or infinite values, ``x2 < x1`` or ``y2 < y1``, wrong shapes or lengths,
            thresholds outside ``[0, 1]``, unknown metric.
        TypeError: Non-numeric arrays.
    """
    kernels = _kernels(backend)
    b, _ = _as_boxes("boxes", boxes)
    n = b.shape[0]
    s, _ = _as_scores("scores", scores, n)
    lab = _as_labels("labels", labels, n)
    thr = _merge_ref._check_threshold("iou_thr", iou_thr)
    keep = np.empty(n, dtype=np.int64)
    k = kernels.nms(b, s, lab, thr, _as_metric(metric), keep)
    return keep[:k].copy()


def greedy_nmm(
    boxes: object,
    scores: object,
    labels: object = None,
    match_thr: float = 0.5,
    metric: str = "ios",
    *,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Greedy non-maximum merging, with the grouping of SAHI's ``greedy_nmm``/``batched_greedy_nmm``.

    Boxes are visited as SAHI visits them: descending score, ties by ``x1, y1, x2, y2`` ascending,
    then by index. A box joins the group of the first kept box of its label that it overlaps by at
    least ``match_thr`` (``>=``, as SAHI); otherwise it is kept and starts a group. A group becomes
    one box: the union of its members, the best member's score and label. (SAHI's postprocess then
    re-checks each member against the growing union; this function does not, by design.)

    Args:
        boxes: ``(N, 4)`` boxes ``x1, y1, x2, y2``.
        scores: ``(N,)`` confidences.
        labels: ``(N,)`` integer class ids, or None for one class.
        match_thr: Overlap at or above which a box merges, in ``[0, 1]``; 0 merges every box of a
            label into one group, as in SAHI.
        metric: ``"ios"`` or ``"iou"``.
        backend: ``"c"`` or ``"numpy"``; None uses :data:`BACKEND`.

    Returns:
        ``(boxes, scores, labels, groups)``: ``(G, 4)`` union boxes, ``(G,)`` scores, ``(G,)`` int64
        labels, ordered by descending score of the kept box; ``groups`` is a list of G int64 index
        arrays into the input, each the kept box first, then its merged boxes in visiting order.

    Raises:
        ValueError: As :func:`nms`.
        TypeError: Non-numeric arrays.
    """
    kernels = _kernels(backend)
    b, box_dtype = _as_boxes("boxes", boxes)
    n = b.shape[0]
    s, s_given = _as_scores("scores", scores, n)
    lab = _as_labels("labels", labels, n)
    thr = _merge_ref._check_threshold("match_thr", match_thr)
    keep = np.empty(n, dtype=np.int64)
    members = np.empty(n, dtype=np.int64)
    offsets = np.empty(n + 1, dtype=np.int64)
    unions = np.empty((n, 4), dtype=np.float64)
    g = kernels.greedy_nmm(b, s, lab, thr, _as_metric(metric), keep, members, offsets, unions)
    keep = keep[:g]
    score_dtype = _FLOAT32 if s_given.dtype == _FLOAT32 else np.dtype(np.float64)
    bounds = offsets[: g + 1].tolist()
    groups = [members[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    return unions[:g].astype(box_dtype), s[keep].astype(score_dtype, copy=False), lab[keep], groups


def wbf(
    boxes_list: Sequence[object],
    scores_list: Sequence[object],
    labels_list: Sequence[object] | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    allows_overflow: bool = False,
    *,
    clip: bool = False,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted Boxes Fusion: the results of ``ensemble_boxes.weighted_boxes_fusion``, in its order.

    Each model's boxes (a flip pass counts as a model) are weighted by the model's weight; boxes of
    a label join the fused box they overlap best above ``iou_thr``, visited by descending weighted
    score; a fused box is the score-weighted mean of its members. Fused coordinates are rounded to
    float32 while clustering exactly as ensemble-boxes does, so the two agree bit for bit on
    normalized inputs. Differences, all deliberate: coordinates are not clipped to ``[0, 1]``
    unless ``clip=True`` (pixel coordinates work); invalid input raises instead of being swapped or
    printed about; ties in score keep input order (ensemble-boxes' unstable sort leaves them
    arbitrary); a cluster of only zero-score boxes keeps its first box (ensemble-boxes gives NaN).

    Args:
        boxes_list: M arrays of ``(N_m, 4)`` boxes ``x1, y1, x2, y2``, one per model or pass.
        scores_list: M arrays of ``(N_m,)`` confidences in ``[0, 1]``.
        labels_list: M arrays of ``(N_m,)`` integer class ids, or None for one class.
        weights: M model weights in ``[1e-6, 1e6]`` (only their ratios matter); None for all 1.
        iou_thr: IoU above which a box joins a fused box, in ``[0, 1]``.
        skip_box_thr: Boxes scoring below this are dropped first (compared in the scores' dtype,
            as ensemble-boxes compares).
        conf_type: ``"avg"``, ``"max"``, ``"box_and_model_avg"`` or ``"absent_model_aware_avg"``.
        allows_overflow: With ``"avg"``, let a box found more often than there are models score
            above 1.
        clip: Clip coordinates to ``[0, 1]`` first, as ensemble-boxes always does.
        backend: ``"c"`` or ``"numpy"``; None uses :data:`BACKEND`.

    Returns:
        ``(boxes, scores, labels)``: ``(F, 4)`` fused boxes (float32 if every boxes array is
        float32), ``(F,)`` scores (float32 if every scores array is float32), ``(F,)`` int64 labels,
        by descending score.

    Raises:
        ValueError: Mismatched list lengths or array lengths, invalid boxes, scores outside
            ``[0, 1]``, bad weights or thresholds, unknown ``conf_type``.
        TypeError: Non-sequences or non-numeric arrays.
    """
    kernels = _kernels(backend)
    boxes_seq = _as_list("boxes_list", boxes_list)
    scores_seq = _as_list("scores_list", scores_list)
    m = len(boxes_seq)
    if len(scores_seq) != m:
        raise ValueError(
            f"scores_list must have one entry per boxes_list entry ({m}); found {len(scores_seq)}"
        )
    if labels_list is None:
        labels_seq: list = [None] * m
    else:
        labels_seq = _as_list("labels_list", labels_list)
        if len(labels_seq) != m:
            raise ValueError(
                f"labels_list must have one entry per boxes_list entry ({m}); found {len(labels_seq)}"
            )
    if weights is None:
        w = np.ones(m, dtype=np.float64)
    else:
        w_arr = _as_real_array("weights", weights)
        if w_arr.shape != (m,):
            raise ValueError(
                f"weights must have shape ({m},), one weight per model; found shape {w_arr.shape}"
            )
        w = np.ascontiguousarray(w_arr, dtype=np.float64)
        _merge_ref._check_finite("weights", w, _merge_ref.MIN_WEIGHT, _merge_ref.MAX_WEIGHT)
    thr = _merge_ref._check_threshold("iou_thr", iou_thr)
    skip = _as_real("skip_box_thr", skip_box_thr)
    conf_type = _merge_ref._check_choice("conf_type", conf_type, _merge_ref.CONF_TYPES)
    if not isinstance(allows_overflow, (bool, np.bool_)):
        raise TypeError(f"allows_overflow must be a bool; found {type(allows_overflow).__name__}")

    parts_b, parts_s, parts_l, parts_m = [], [], [], []
    all_box32 = all_score32 = m > 0
    for t in range(m):
        b, box_dtype = _as_boxes(f"boxes_list[{t}]", boxes_seq[t])
        n = b.shape[0]
        s, s_given = _as_scores(f"scores_list[{t}]", scores_seq[t], n, unit=True)
        lab = _as_labels(f"labels_list[{t}]", labels_seq[t], n)
        all_box32 &= box_dtype == _FLOAT32
        all_score32 &= s_given.dtype == _FLOAT32
        with np.errstate(over="ignore"):  # a threshold beyond float32's range compares as inf
            keep = ~(s_given < skip)
        if clip:
            b = np.clip(b, 0.0, 1.0)
        keep &= (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) != 0.0
        parts_b.append(b[keep])
        parts_s.append(s[keep])
        parts_l.append(lab[keep])
        parts_m.append(np.full(int(keep.sum()), t, dtype=np.int64))
    box_dtype = _FLOAT32 if all_box32 else np.dtype(np.float64)
    score_dtype = _FLOAT32 if all_score32 else np.dtype(np.float64)
    if m == 0:
        return np.zeros((0, 4), box_dtype), np.zeros(0, score_dtype), np.zeros(0, np.int64)
    b = np.ascontiguousarray(np.concatenate(parts_b))
    k = b.shape[0]
    out_boxes = np.empty((k, 4), dtype=np.float64)
    out_scores = np.empty(k, dtype=np.float64)
    out_labels = np.empty(k, dtype=np.int64)
    f = kernels.wbf(
        b,
        np.concatenate(parts_s),
        np.concatenate(parts_l),
        np.concatenate(parts_m),
        w,
        thr,
        conf_type,
        bool(allows_overflow),
        out_boxes,
        out_scores,
        out_labels,
    )
    return (
        out_boxes[:f].astype(box_dtype),
        out_scores[:f].astype(score_dtype),
        out_labels[:f].copy(),
    )


# --------------------------------------------------------------------------------------------------
# The Detector's merge steps, on Detections
# --------------------------------------------------------------------------------------------------


def suppress_cut_boxes(dets: Detections, cut: np.ndarray, thr: float) -> Detections:
    """Drop boxes cut by an interior tile side when a complete box of the same class covers them.

    A person cut by a tile edge is seen whole in the neighbouring tile (the overlap is wider than a
    person); keeping only the complete box makes the merge return a box around the whole person,
    whichever of the two scored higher.

    Args:
        dets: Boxes of all tiles in image pixels.
        cut: (N,) bool, the box touches an interior side of its tile.
        thr: A cut box goes when more than this fraction of its area lies inside a complete box.
    """
    cut = np.asarray(cut, bool)
    if not cut.any() or cut.all():
        return dets
    ci, wi = np.flatnonzero(cut), np.flatnonzero(~cut)
    whole = dets.xyxy[wi]
    drop = np.zeros(len(dets), bool)
    for start in range(0, len(ci), 256):  # bounded memory: 256 x N at a time
        idx = ci[start : start + 256]
        covered = pairwise_overlap(dets.xyxy[idx], whole, "ioa")
        same = dets.class_ids[idx][:, None] == dets.class_ids[wi][None, :]
        drop[idx] = ((covered > thr) & same).any(axis=1)
    return dets[~drop]


def merge_boxes(dets: Detections, method: str, thr: float) -> Detections:
    """Join duplicate boxes of overlapping tiles by the named method (class-aware)."""
    if len(dets) < 2:
        return dets
    if method in ("ios", "nms"):
        keep = nms(
            dets.xyxy, dets.scores, dets.class_ids, iou_thr=thr, metric="iou" if method == "nms" else "ios"
        )
        return dets[keep]
    if method == "nmm":
        boxes, scores, labels, _groups = greedy_nmm(
            dets.xyxy, dets.scores, dets.class_ids, match_thr=thr, metric="ios"
        )
        return Detections(boxes, scores, labels)
    if method == "wbf":
        boxes, scores, labels = wbf([dets.xyxy], [dets.scores], [dets.class_ids], iou_thr=thr)
        return Detections(boxes, scores, labels)
    raise ValueError(f"merge: expected one of {', '.join(MERGE_METHODS)}, found {method!r}")
