"""Pure NumPy reference for the merge kernels in ``_merge.c``.

This module is the fallback when the C extension is not built (or ``EDGETILE_PUREPYTHON=1``) and the
oracle the tests compare the C kernels against. Every function here has exactly the signature of its
C twin: validated, C-contiguous ``float64``/``int64`` arrays in, preallocated output arrays filled,
the number of output rows returned. The public, validating API is :mod:`edgetile.runtime.merge`.

Both implementations compute every overlap with the same floating-point expression in the same
order (here through :func:`edgetile.runtime.boxes.pairwise_overlap`), so they agree bit for bit, not
just to a tolerance:

* ``inter = max(min(ax2, bx2) - max(ax1, bx1), 0) * max(min(ay2, by2) - max(ay1, by1), 0)``
* IoU is ``inter / ((area_a + area_b) - inter)``, IoS is ``inter / min(area_a, area_b)``, and either
  is 0 where its denominator is not positive (degenerate boxes), never NaN.

The reference favours being obviously right over being fast: NMS and greedy NMM look for neighbours
in a window of boxes sorted by ``x1`` (``O(N * window)``); WBF compares each box with every fused box
of its label so far (``O(N * clusters)``), which is fine as an oracle and as a fallback for
thousands of boxes but slow for 100,000.
"""

from __future__ import annotations

import numpy as np

from .boxes import box_areas, pairwise_overlap

#: Largest coordinate magnitude accepted: beyond 2**53 float64 no longer resolves whole pixels, and
#: products of such coordinates (areas, score-weighted sums in float32) could overflow.
MAX_COORD = float(2**53)

#: WBF model weights must lie in this range; only their ratios matter to the fused scores.
MIN_WEIGHT = 1e-6
MAX_WEIGHT = 1e6

METRICS = ("iou", "ios")
CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


# --------------------------------------------------------------------------------------------------
# Argument checks shared with the C kernels (which repeat them in C).
# --------------------------------------------------------------------------------------------------


def _check_array(
    name: str, arr: object, dtype: type, shape: tuple[int | None, ...], writable: bool = False
) -> None:
    """Check what the C kernels check through the buffer protocol.

    Args:
        name: Argument name used in the error message.
        arr: The object to check.
        dtype: ``np.float64`` or ``np.int64``.
        shape: Expected shape; ``None`` entries match any length.
        writable: Whether the kernel writes into the array.

    Raises:
        TypeError: ``arr`` is not a NumPy array of ``dtype``.
        ValueError: Wrong shape, not C-contiguous or read-only.
    """
    if not isinstance(arr, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray of {np.dtype(dtype).name}; found {type(arr).__name__}"
        )
    if arr.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}; found {arr.dtype}")
    if arr.ndim != len(shape) or any(e is not None and e != a for e, a in zip(shape, arr.shape)):
        expected = (
            "("
            + ", ".join("N" if e is None else str(e) for e in shape)
            + ("," if len(shape) == 1 else "")
            + ")"
        )
        raise ValueError(f"{name} must have shape {expected}; found {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; found a strided array")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name} must be writable; found a read-only array")


def _check_boxes(name: str, boxes: np.ndarray, positive_area: bool = False) -> None:
    """Check box values: finite, within ``MAX_COORD``, ``x2 >= x1`` and ``y2 >= y1``.

    Args:
        name: Argument name used in the error message.
        boxes: ``(N, 4)`` float64 boxes ``x1, y1, x2, y2``.
        positive_area: Also require ``(x2 - x1) * (y2 - y1) > 0`` (the WBF kernel expects its caller
            to have dropped zero-area boxes, as ensemble-boxes does).

    Raises:
        ValueError: The first offending box, with its row and values.
    """
    if boxes.size == 0:
        return
    bad = ~np.isfinite(boxes)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{name} must be finite; found {float(boxes[r, c])!r} at {name}[{r}, {c}]")
    bad = np.abs(boxes) > MAX_COORD
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} coordinates must have magnitude at most 2**53; found {float(boxes[r, c])!r} at {name}[{r}, {c}]"
        )
    for lo, hi, axis in ((0, 2, "x"), (1, 3, "y")):
        bad = boxes[:, hi] < boxes[:, lo]
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name} must have {axis}2 >= {axis}1; found {axis}1={float(boxes[r, lo])!r}, "
                f"{axis}2={float(boxes[r, hi])!r} at {name}[{r}]"
            )
    if positive_area:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        bad = area == 0.0
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name} must have positive areas; found a zero-area box at {name}[{r}]")


def _check_finite(name: str, values: np.ndarray, lo: float | None = None, hi: float | None = None) -> None:
    """Check that a 1-D float64 array is finite and, optionally, inside ``[lo, hi]``."""
    if values.size == 0:
        return
    bad = ~np.isfinite(values)
    if lo is not None:
        bad |= values < lo
    if hi is not None:
        bad |= values > hi
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        expected = "finite" if lo is None else f"finite and in [{lo:g}, {hi:g}]"
        raise ValueError(f"{name} must be {expected}; found {float(values[i])!r} at {name}[{i}]")


def _check_threshold(name: str, value: float) -> float:
    """Check an overlap threshold: a real number in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number in [0, 1]; found {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]; found {value!r}")
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; found {value!r}")
    return value


def _check_common(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, thr_name: str, thr: float, metric: str
) -> tuple[int, float, bool]:
    _check_array("boxes", boxes, np.float64, (None, 4))
    n = boxes.shape[0]
    _check_array("scores", scores, np.float64, (n,))
    _check_array("labels", labels, np.int64, (n,))
    _check_boxes("boxes", boxes)
    _check_finite("scores", scores)
    thr = _check_threshold(thr_name, thr)
    ios = _check_choice("metric", metric, METRICS) == "ios"
    return n, thr, ios


# --------------------------------------------------------------------------------------------------
# The x-sorted neighbour window (overlaps come from edgetile.runtime.boxes).
# --------------------------------------------------------------------------------------------------


class _XWindow:
    """Boxes sorted by ``x1``; ``window(i)`` holds every box that could overlap box ``i`` positively.

    A positive overlap needs ``x1_j < x2_i`` and ``x2_j > x1_i``; the second implies
    ``x1_j > x1_i - max_width``. The margins make the window a superset despite rounding; the exact
    overlap test happens afterwards.
    """

    def __init__(self, boxes: np.ndarray) -> None:
        self.order = np.argsort(boxes[:, 0], kind="stable")
        x1_sorted = boxes[self.order, 0]
        max_w = float((boxes[:, 2] - boxes[:, 0]).max()) if len(boxes) else 0.0
        margin = max_w * (1.0 + 1e-9) + 1e-12 * (np.abs(boxes[:, 0]) + max_w)
        self.lo = np.searchsorted(x1_sorted, boxes[:, 0] - margin, side="left")
        self.hi = np.searchsorted(x1_sorted, boxes[:, 2], side="right")

    def window(self, i: int) -> np.ndarray:
        return self.order[self.lo[i] : self.hi[i]]


# --------------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------------


def nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_thr: float, metric: str, keep: np.ndarray
) -> int:
    """Non-maximum suppression, class-aware through ``labels``.

    Boxes are visited by descending score, ties by lower index (a stable sort). A box is kept unless
    an already kept box of the same label overlaps it by more than ``iou_thr`` (strictly, as
    ``torchvision.ops.nms`` does).

    Args:
        boxes: ``(N, 4)`` float64, C-contiguous, ``x1, y1, x2, y2`` with ``x2 >= x1``, ``y2 >= y1``.
        scores: ``(N,)`` float64, finite.
        labels: ``(N,)`` int64; boxes of different labels never suppress each other.
        iou_thr: Overlap above which a box is suppressed, in ``[0, 1]``.
        metric: ``"iou"`` or ``"ios"`` (intersection over the smaller area).
        keep: ``(N,)`` int64, written: the kept indices, by descending score, in ``keep[:k]``.

    Returns:
        ``k``, the number of kept boxes.
    """
    n, thr, _ios = _check_common(boxes, scores, labels, "iou_thr", iou_thr, metric)
    _check_array("keep", keep, np.int64, (n,), writable=True)
    if n == 0:
        return 0
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    areas = box_areas(boxes)
    xw = _XWindow(boxes)
    suppressed = np.zeros(n, dtype=bool)
    k = 0
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep[k] = i
        k += 1
        cand = xw.window(i)
        cand = cand[(rank[cand] > rank[i]) & (labels[cand] == labels[i]) & ~suppressed[cand]]
        if cand.size:
            hit = (
                pairwise_overlap(boxes[i : i + 1], boxes[cand], metric, areas[i : i + 1], areas[cand])[0]
                > thr
            )
            suppressed[cand[hit]] = True
    return k


# --------------------------------------------------------------------------------------------------
# Greedy non-maximum merging (SAHI's greedy_nmm grouping)
# --------------------------------------------------------------------------------------------------


def sahi_order(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """SAHI's visiting order: descending score, ties by ``x1, y1, x2, y2`` ascending, then index."""
    return np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores))


def greedy_nmm(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    match_thr: float,
    metric: str,
    keep: np.ndarray,
    members: np.ndarray,
    offsets: np.ndarray,
    unions: np.ndarray,
) -> int:
    """Greedy non-maximum merging: the grouping of ``sahi.postprocess.combine.batched_greedy_nmm``.

    Boxes are visited in :func:`sahi_order`. A box joins the group of the first (best-ranked) kept
    box of its label that it overlaps by at least ``match_thr``; otherwise it starts a group. With
    ``match_thr == 0`` every pair matches, as in SAHI, so each label becomes one group.

    Args:
        boxes: ``(N, 4)`` float64, C-contiguous.
        scores: ``(N,)`` float64, finite.
        labels: ``(N,)`` int64; boxes of different labels never merge.
        match_thr: Overlap at or above which a box merges, in ``[0, 1]``.
        metric: ``"iou"`` or ``"ios"``.
        keep: ``(N,)`` int64, written: ``keep[:g]`` the kept box of each group, best-ranked first.
        members: ``(N,)`` int64, written: every index, group by group, each group's kept box first
            and then its merged boxes in visiting order.
        offsets: ``(N + 1,)`` int64, written: group ``i`` is ``members[offsets[i]:offsets[i + 1]]``.
        unions: ``(N, 4)`` float64, written: ``unions[:g]`` the union box of each group.

    Returns:
        ``g``, the number of groups.
    """
    n, thr, _ios = _check_common(boxes, scores, labels, "match_thr", match_thr, metric)
    _check_array("keep", keep, np.int64, (n,), writable=True)
    _check_array("members", members, np.int64, (n,), writable=True)
    _check_array("offsets", offsets, np.int64, (n + 1,), writable=True)
    _check_array("unions", unions, np.float64, (n, 4), writable=True)
    offsets[0] = 0
    if n == 0:
        return 0
    order = sahi_order(boxes, scores)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    owner = np.full(n, -1, dtype=np.int64)
    if thr <= 0.0:
        # Every pair matches (SAHI's matches_all_pairs): the best box of each label takes the rest.
        first: dict[int, int] = {}
        for i in order.tolist():
            owner[i] = first.setdefault(int(labels[i]), i)
    else:
        areas = box_areas(boxes)
        xw = _XWindow(boxes)
        for i in order.tolist():
            if owner[i] >= 0:
                continue
            owner[i] = i
            cand = xw.window(i)
            cand = cand[(rank[cand] > rank[i]) & (labels[cand] == labels[i]) & (owner[cand] < 0)]
            if cand.size:
                hit = (
                    pairwise_overlap(boxes[i : i + 1], boxes[cand], metric, areas[i : i + 1], areas[cand])[0]
                    >= thr
                )
                owner[cand[hit]] = i
    kept = order[owner[order] == order]
    g = kept.size
    group_of = np.empty(n, dtype=np.int64)
    group_of[kept] = np.arange(g)
    grouped = np.lexsort((rank, group_of[owner]))
    keep[:g] = kept
    members[:] = grouped
    offsets[1 : g + 1] = np.cumsum(np.bincount(group_of[owner], minlength=g))
    grouped_boxes = boxes[grouped]
    starts = offsets[:g]
    unions[:g, :2] = np.minimum.reduceat(grouped_boxes[:, :2], starts, axis=0)
    unions[:g, 2:] = np.maximum.reduceat(grouped_boxes[:, 2:], starts, axis=0)
    return int(g)


# --------------------------------------------------------------------------------------------------
# Weighted Boxes Fusion (ensemble_boxes.weighted_boxes_fusion)
# --------------------------------------------------------------------------------------------------


def _f32(x: float) -> float:
    return float(np.float32(x))


def wbf(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    models: np.ndarray,
    weights: np.ndarray,
    iou_thr: float,
    conf_type: str,
    allows_overflow: bool,
    out_boxes: np.ndarray,
    out_scores: np.ndarray,
    out_labels: np.ndarray,
) -> int:
    """Weighted Boxes Fusion on prefiltered boxes, as ``ensemble_boxes.weighted_boxes_fusion``.

    The caller has already dropped boxes below ``skip_box_thr`` and zero-area boxes, clipped if it
    wanted to, and concatenated the models' lists. For each label (in order of first appearance),
    boxes are visited by descending ``score * weights[model]`` (ties by lower index) and each joins
    the fused box of its label with the highest IoU above ``iou_thr`` (ties: the older fused box),
    or starts a new one. As in ensemble-boxes, a fused box with two or more members holds its
    coordinates, score and weight sum rounded to float32, so decisions and results match it bit for
    bit. One deliberate difference: a cluster whose members all have score 0 keeps its first box
    instead of becoming NaN.

    Args:
        boxes: ``(K, 4)`` float64, C-contiguous, positive areas.
        scores: ``(K,)`` float64 in ``[0, 1]``.
        labels: ``(K,)`` int64.
        models: ``(K,)`` int64, the index in ``weights`` of the model each box comes from.
        weights: ``(M,)`` float64 in ``[1e-6, 1e6]``.
        iou_thr: IoU above which a box joins a fused box, in ``[0, 1]``.
        conf_type: ``"avg"``, ``"max"``, ``"box_and_model_avg"`` or ``"absent_model_aware_avg"``.
        allows_overflow: With ``"avg"``, let a box matched by more boxes than there are models
            score above 1.
        out_boxes: ``(K, 4)`` float64, written: fused boxes by descending score in ``[:f]``.
        out_scores: ``(K,)`` float64, written: their scores.
        out_labels: ``(K,)`` int64, written: their labels.

    Returns:
        ``f``, the number of fused boxes.
    """
    _check_array("boxes", boxes, np.float64, (None, 4))
    n = boxes.shape[0]
    _check_array("scores", scores, np.float64, (n,))
    _check_array("labels", labels, np.int64, (n,))
    _check_array("models", models, np.int64, (n,))
    _check_array("weights", weights, np.float64, (None,))
    m = weights.shape[0]
    _check_boxes("boxes", boxes, positive_area=True)
    _check_finite("scores", scores, 0.0, 1.0)
    _check_finite("weights", weights, MIN_WEIGHT, MAX_WEIGHT)
    if n and (models.min() < 0 or models.max() >= m):
        i = int(np.flatnonzero((models < 0) | (models >= m))[0])
        raise ValueError(f"models must index weights, in [0, {m - 1}]; found {models[i]} at models[{i}]")
    thr = _check_threshold("iou_thr", iou_thr)
    conf_type = _check_choice("conf_type", conf_type, CONF_TYPES)
    _check_array("out_boxes", out_boxes, np.float64, (n, 4), writable=True)
    _check_array("out_scores", out_scores, np.float64, (n,), writable=True)
    _check_array("out_labels", out_labels, np.int64, (n,), writable=True)
    if n == 0:
        return 0

    weighted = scores * weights[models]
    _, first = np.unique(labels, return_index=True)
    fused_boxes: list[np.ndarray] = []
    fused_scores: list[float] = []
    fused_labels: list[int] = []
    w_total = weights.sum()
    w_max = weights.max()
    for label in labels[np.sort(first)].tolist():
        run = np.flatnonzero(labels == label)
        run = run[np.argsort(-weighted[run], kind="stable")]
        fused = np.empty((run.size, 4))  # current fused box of each cluster
        fused_area = np.empty(run.size)
        state: list[dict] = []
        for j in run.tolist():
            box = boxes[j]
            c = -1
            if state:
                iou = pairwise_overlap(
                    box[None], fused[: len(state)], "iou", areas_b=fused_area[: len(state)]
                )[0]
                best = int(np.argmax(iou))
                if iou[best] > thr:
                    c = best
            ws = float(weighted[j])
            wt = float(weights[models[j]])
            if c < 0:
                fused[len(state)] = box
                fused_area[len(state)] = box_areas(box[None])[0]
                state.append(
                    {
                        "acc": [_f32(ws * float(v)) for v in box],
                        "conf": ws,
                        "wsum": wt,
                        "max": ws,
                        "members": [j],
                        "score": ws,
                        "weight": wt,
                    }
                )
                continue
            s = state[c]
            s["acc"] = [_f32(a + ws * float(v)) for a, v in zip(s["acc"], box)]
            s["conf"] += ws
            s["wsum"] += wt
            s["max"] = max(s["max"], ws)
            s["members"].append(j)
            if s["conf"] > 0.0:
                fused[c] = [_f32(a / s["conf"]) for a in s["acc"]]
            # else: every member so far scored 0; ensemble-boxes divides 0 by 0, we keep the box.
            fused_area[c] = box_areas(fused[c][None])[0]
            count = len(s["members"])
            s["score"] = _f32(s["max"]) if conf_type == "max" else _f32(s["conf"] / count)
            s["weight"] = _f32(s["wsum"])
        for c, s in enumerate(state):
            count = len(s["members"])
            score = s["score"]
            if conf_type == "box_and_model_avg":
                present = np.unique(models[s["members"]])
                score = score * count / s["weight"]
                score = score * weights[present].sum() / w_total
            elif conf_type == "absent_model_aware_avg":
                absent = np.ones(m, dtype=bool)
                absent[models[s["members"]]] = False
                score = score * count / (s["weight"] + weights[absent].sum())
            elif conf_type == "max":
                score = score / w_max
            elif not allows_overflow:
                score = score * min(m, count) / w_total
            else:
                score = score * count / w_total
            fused_boxes.append(fused[c].copy())
            fused_scores.append(float(score))
            fused_labels.append(label)
    final = np.asarray(fused_scores, dtype=np.float64)
    order = np.argsort(-final, kind="stable")
    f = order.size
    out_boxes[:f] = np.asarray(fused_boxes)[order]
    out_scores[:f] = final[order]
    out_labels[:f] = np.asarray(fused_labels, dtype=np.int64)[order]
    return int(f)
