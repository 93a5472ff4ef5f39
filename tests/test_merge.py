"""The merge step against its oracles: C against the NumPy reference, and both against the libraries
they replace (torchvision's batched_nms, SAHI's greedy_nmm, ensemble-boxes' WBF).

Every test taking the ``backend`` fixture runs once on the C kernels and once on the NumPy
reference; the C run is skipped, with the reason, when the extension is not available (not built,
or EDGETILE_PUREPYTHON=1).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from edgetile.runtime import merge
from edgetile.runtime.results import Detections

C_SKIP = pytest.mark.skipif(
    "c" not in merge.AVAILABLE_BACKENDS, reason=f"C merge kernels not available: {merge.C_UNAVAILABLE_REASON}"
)


@pytest.fixture(params=[pytest.param("c", marks=C_SKIP), "numpy"])
def backend(request):
    return request.param


# --------------------------------------------------------------------------------------------------
# Random box sets
# --------------------------------------------------------------------------------------------------

KINDS = ("scattered", "clustered", "degenerate", "mixed")


def make_boxes(rng: np.random.Generator, n: int, kind: str, scale: float = 1000.0) -> np.ndarray:
    """``(n, 4)`` float64 boxes of one kind, coordinates in ``[0, scale]``.

    scattered: independent boxes; clustered: several jittered detections of each object (the
    merge's real input); degenerate: small integer boxes, many of zero width or height; mixed:
    sizes spread over three orders of magnitude.
    """
    if kind == "scattered":
        xy = rng.random((n, 2)) * 0.9 * scale
        wh = (0.005 + 0.06 * rng.random((n, 2))) * scale
    elif kind == "clustered":
        n_obj = max(1, n // 6)
        obj_xy = rng.random((n_obj, 2)) * 0.9 * scale
        obj_wh = (0.01 + 0.03 * rng.random((n_obj, 2))) * scale
        k = rng.integers(0, n_obj, n)
        wh = obj_wh[k] * (1 + 0.15 * rng.normal(size=(n, 2)))
        xy = obj_xy[k] + obj_wh[k] * 0.15 * rng.normal(size=(n, 2))
        wh = np.clip(wh, 1e-4 * scale, None)
    elif kind == "degenerate":
        xy = np.round(rng.random((n, 2)) * min(1.0, 0.01 * np.sqrt(n + 1)) * scale)
        wh = np.round(rng.random((n, 2)) * 4) * (rng.random((n, 2)) < 0.6)
    elif kind == "mixed":
        xy = rng.random((n, 2)) * 0.8 * scale
        wh = np.exp(rng.uniform(np.log(1e-4), np.log(0.15), (n, 2))) * scale
    else:
        raise ValueError(kind)
    xy = np.clip(xy, 0, None)
    return np.concatenate([xy, np.minimum(xy + wh, scale)], axis=1)


def make_set(seed: int, n: int, kind: str, ties: bool, n_labels: int):
    rng = np.random.default_rng(seed)
    boxes = make_boxes(rng, n, kind)
    scores = np.round(rng.random(n), 1) if ties else rng.random(n)
    labels = rng.integers(0, n_labels, n) if n_labels > 1 else None
    return boxes, scores, labels


# (seed, n, kind, ties, labels): 0 to 5,000 boxes, every kind, with and without ties and classes
SETS = [
    (seed, n, KINDS[seed % 4], seed % 3 == 0, 1 + seed % 3)
    for seed, n in enumerate(
        [0, 1, 2, 3, 7, 20, 50, 120, 300, 500, 800, 1200, 2000, 3000, 5000, 64, 250, 999]
    )
]
THRESHOLDS = (0.0, 0.3, 0.5, 0.8, 1.0)


# --------------------------------------------------------------------------------------------------
# C against the NumPy reference: identical results, bit for bit
# --------------------------------------------------------------------------------------------------


def _kernels_both():
    return merge._kernels("c"), merge._kernels("numpy")


@C_SKIP
@pytest.mark.parametrize(
    "case", SETS, ids=lambda c: f"s{c[0]}-n{c[1]}-{c[2]}{'-ties' if c[3] else ''}-l{c[4]}"
)
def test_c_matches_reference_nms_and_greedy_nmm(case):
    boxes, scores, labels = make_set(*case)
    for metric in ("iou", "ios"):
        for thr in THRESHOLDS if len(scores) < 2000 else (0.0, 0.5):
            kc = merge.nms(boxes, scores, labels, thr, metric, backend="c")
            kn = merge.nms(boxes, scores, labels, thr, metric, backend="numpy")
            np.testing.assert_array_equal(kc, kn, err_msg=f"nms {metric} {thr}")
            rc = merge.greedy_nmm(boxes, scores, labels, thr, metric, backend="c")
            rn = merge.greedy_nmm(boxes, scores, labels, thr, metric, backend="numpy")
            for a, b in zip(rc[:3], rn[:3]):
                np.testing.assert_array_equal(a, b, err_msg=f"greedy_nmm {metric} {thr}")
            assert len(rc[3]) == len(rn[3])
            for a, b in zip(rc[3], rn[3]):
                np.testing.assert_array_equal(a, b)


WBF_SETS = [
    (seed, n, kind)
    for seed, (n, kind) in enumerate(
        [
            (0, "scattered"),
            (1, "clustered"),
            (5, "clustered"),
            (60, "scattered"),
            (300, "clustered"),
            (900, "mixed"),
            (700, "scattered"),
            (2000, "clustered"),
        ]
    )
]
WBF_OPTIONS = [  # weights, iou_thr, skip_box_thr, allows_overflow
    (None, 0.55, 0.0, False),
    ([1, 2, 0.5], 0.3, 0.2, True),
    ([2, 1, 1], 0.0, 0.0, False),
    (None, 1.0, 0.5, False),
]


def make_wbf_lists(seed: int, n: int, kind: str, n_models: int = 3, ties: bool = False, n_labels: int = 2):
    """Normalized boxes of one scene split into ``n_models`` lists, as ensemble-boxes takes them."""
    rng = np.random.default_rng(1000 + seed)
    boxes = make_boxes(rng, n, kind, scale=1.0)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1e-4)  # WBF drops zero-area boxes
    boxes = np.clip(boxes, 0.0, 1.0)
    model = rng.integers(0, n_models, n)
    scores = np.round(rng.random(n), 1) if ties else rng.random(n)
    labels = rng.integers(0, n_labels, n)
    pick = [np.flatnonzero(model == m) for m in range(n_models)]
    return [boxes[p] for p in pick], [scores[p] for p in pick], [labels[p] for p in pick]


@C_SKIP
@pytest.mark.parametrize("case", WBF_SETS, ids=lambda c: f"s{c[0]}-n{c[1]}-{c[2]}")
def test_c_matches_reference_wbf(case):
    seed, n, kind = case
    bl, sl, ll = make_wbf_lists(seed, n, kind, ties=seed % 2 == 1)
    for conf_type in merge._merge_ref.CONF_TYPES:
        for weights, thr, skip, overflow in (WBF_OPTIONS[seed % 4], WBF_OPTIONS[(seed + 1) % 4]):
            args = (bl, sl, ll, weights, thr, skip, conf_type, overflow)
            rc = merge.wbf(*args, backend="c")
            rn = merge.wbf(*args, backend="numpy")
            for a, b in zip(rc, rn):
                np.testing.assert_array_equal(a, b, err_msg=f"{conf_type} {weights} {thr} {skip} {overflow}")


@C_SKIP
def test_c_matches_reference_on_pixel_wbf_and_large_sets():
    """Pixel coordinates far from [0, 1], and a 10,000-box set, with the same results."""
    rng = np.random.default_rng(7)
    boxes = make_boxes(rng, 10000, "clustered", scale=12000.0)
    scores, labels = rng.random(10000), rng.integers(0, 3, 10000)
    for metric in ("iou", "ios"):
        np.testing.assert_array_equal(
            merge.nms(boxes, scores, labels, 0.5, metric, backend="c"),
            merge.nms(boxes, scores, labels, 0.5, metric, backend="numpy"),
        )
        rc = merge.greedy_nmm(boxes, scores, labels, 0.5, metric, backend="c")
        rn = merge.greedy_nmm(boxes, scores, labels, 0.5, metric, backend="numpy")
        np.testing.assert_array_equal(rc[0], rn[0])
    pixel = [boxes[:1000] + 1e5, boxes[1000:2000] - 5e4]  # far off the origin, negative too
    args = (pixel, [scores[:1000], scores[1000:2000]], [labels[:1000], labels[1000:2000]], [1, 2])
    for a, b in zip(merge.wbf(*args, backend="c"), merge.wbf(*args, backend="numpy")):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# NMS against torchvision and a brute-force oracle
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", [c for c in SETS if not c[3]], ids=lambda c: f"s{c[0]}-n{c[1]}-{c[2]}-l{c[4]}"
)
def test_nms_matches_torchvision(backend, case):
    torch = pytest.importorskip("torch", reason="torchvision's batched_nms is the NMS oracle")
    torchvision = pytest.importorskip("torchvision", reason="torchvision's batched_nms is the NMS oracle")
    boxes, scores, labels = make_set(*case)  # continuous scores: torchvision's tie order is not ours
    idxs = np.zeros(len(scores), np.int64) if labels is None else labels
    for thr in (0.0, 0.3, 0.5, 0.7):
        expected = torchvision.ops.batched_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), thr
        ).numpy()
        got = merge.nms(boxes, scores, labels, iou_thr=thr, backend=backend)
        np.testing.assert_array_equal(got, expected, err_msg=f"iou_thr={thr}")


def brute_force_nms(boxes, scores, labels, thr, ios):
    """The textbook loop, O(N^2), in plain Python: stable order, strict '>'."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    area = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes.tolist()]
    keep = []
    for i in order:
        bi = boxes[i]
        ok = True
        for k in keep:
            if labels[k] != labels[i]:
                continue
            bk = boxes[k]
            w = max(min(bk[2], bi[2]) - max(bk[0], bi[0]), 0.0)
            h = max(min(bk[3], bi[3]) - max(bk[1], bi[1]), 0.0)
            inter = w * h
            den = min(area[k], area[i]) if ios else (area[k] + area[i]) - inter
            if (inter / den if den > 0 else 0.0) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


@pytest.mark.parametrize("seed", range(12))
def test_nms_with_ties_and_ios_matches_brute_force(backend, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 250))
    boxes = make_boxes(rng, n, KINDS[seed % 4])
    scores = np.round(rng.random(n), 1)  # many ties: broken by lower index
    labels = rng.integers(0, 2, n)
    for metric in ("iou", "ios"):
        for thr in THRESHOLDS:
            expected = brute_force_nms(boxes, scores, labels, thr, metric == "ios")
            np.testing.assert_array_equal(
                merge.nms(boxes, scores, labels, thr, metric, backend=backend), expected
            )


# --------------------------------------------------------------------------------------------------
# greedy_nmm against SAHI, once per SAHI CPU backend
# --------------------------------------------------------------------------------------------------


@pytest.fixture(params=["numpy", "numba"], scope="module")
def sahi_combine(request):
    pytest.importorskip("sahi", reason="SAHI's greedy_nmm is the greedy NMM oracle")
    if request.param == "numba":
        pytest.importorskip("numba", reason="SAHI's numba backend needs numba")
    from sahi.postprocess import backends, combine

    previous = backends.get_postprocess_backend()
    backends.set_postprocess_backend(request.param)  # SAHI's global switch: restored below
    yield combine
    backends.set_postprocess_backend(previous)


def sahi_groups(combine, boxes, scores, labels, metric, thr):
    if len(scores) == 0:
        return []
    cats = np.zeros(len(scores)) if labels is None else labels.astype(np.float64)
    preds = np.concatenate([boxes, scores[:, None], cats[:, None]], axis=1)
    result = (combine.greedy_nmm if labels is None else combine.batched_greedy_nmm)(
        preds, metric.upper(), thr
    )
    return sorted([int(k)] + [int(v) for v in merged] for k, merged in result.items())


@pytest.mark.parametrize(
    "case",
    [c for c in SETS if c[1] <= 2000],
    ids=lambda c: f"s{c[0]}-n{c[1]}-{c[2]}{'-ties' if c[3] else ''}-l{c[4]}",
)
def test_greedy_nmm_matches_sahi(backend, sahi_combine, case):
    boxes, scores, labels = make_set(*case)  # ties included: SAHI's tie order is reproduced
    for metric in ("ios", "iou"):
        for thr in (0.0, 0.3, 0.6):
            expected = sahi_groups(sahi_combine, boxes, scores, labels, metric, thr)
            out_boxes, out_scores, out_labels, groups = merge.greedy_nmm(
                boxes, scores, labels, thr, metric, backend=backend
            )
            assert sorted(g.tolist() for g in groups) == expected, f"{metric} {thr}"
            # one box per group: the union, the best member's score and label
            for g, b, s, lab in zip(groups, out_boxes, out_scores, out_labels):
                np.testing.assert_array_equal(b, [*boxes[g, :2].min(0), *boxes[g, 2:].max(0)])
                assert s == scores[g[0]] == scores[g].max()
                assert lab == (0 if labels is None else labels[g[0]])
            assert np.all(np.diff(out_scores) <= 0)


# --------------------------------------------------------------------------------------------------
# WBF against ensemble-boxes
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def ensemble_boxes_result(seed, n, kind, n_models, weights, thr, skip, conf_type, overflow, clip_case):
    eb = pytest.importorskip("ensemble_boxes", reason="ensemble-boxes is the WBF oracle")
    bl, sl, ll = make_wbf_lists(seed, n, kind, n_models)
    if clip_case:
        bl = [b * 1.3 - 0.15 for b in bl]  # partly outside [0, 1]: ensemble-boxes clips
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its clipping and zero-area warnings
        return eb.weighted_boxes_fusion(
            bl,
            sl,
            ll,
            weights=None if weights is None else list(weights),
            iou_thr=thr,
            skip_box_thr=skip,
            conf_type=conf_type,
            allows_overflow=overflow,
        )


WBF_ORACLE_CASES = [
    # seed, n, kind, models, weights, iou_thr, skip_box_thr, allows_overflow, clip case
    (0, 0, "scattered", 2, None, 0.55, 0.0, False, False),
    (1, 40, "clustered", 1, None, 0.55, 0.0, False, False),
    (2, 400, "clustered", 3, None, 0.55, 0.0, False, False),
    (3, 400, "clustered", 3, (1.0, 2.0, 2.0), 0.55, 0.0, False, False),
    (4, 600, "clustered", 3, (1.0, 1.0, 2.0), 0.4, 0.1, True, False),
    (5, 300, "scattered", 2, (3.0, 1.0), 0.1, 0.3, False, False),
    (6, 500, "mixed", 4, (1.0, 2.0, 0.5, 1.5), 0.7, 0.0, True, False),
    (7, 300, "clustered", 3, (1.0, 1.0, 2.0), 0.55, 0.05, False, True),
    (8, 1500, "clustered", 3, (1.0, 1.0, 2.0), 0.55, 0.0, False, False),
]


# Every case for every conf_type, except the 1,500-box case, which runs for 'avg' only: the pure-Python
# oracle takes seconds per call at that size.
WBF_CONF_TYPES = ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"]
WBF_ORACLE_RUNS = [
    (case, ct) for case in WBF_ORACLE_CASES for ct in WBF_CONF_TYPES if case[1] <= 1000 or ct == "avg"
]


@pytest.mark.parametrize(
    "case,conf_type",
    WBF_ORACLE_RUNS,
    ids=lambda v: v if isinstance(v, str) else f"s{v[0]}-n{v[1]}-{v[2]}-m{v[3]}",
)
def test_wbf_matches_ensemble_boxes(backend, case, conf_type):
    seed, n, kind, n_models, weights, thr, skip, overflow, clip_case = case
    exp_boxes, exp_scores, exp_labels = ensemble_boxes_result(
        seed, n, kind, n_models, weights, thr, skip, conf_type, overflow, clip_case
    )
    bl, sl, ll = make_wbf_lists(seed, n, kind, n_models)
    if clip_case:
        bl = [b * 1.3 - 0.15 for b in bl]
    boxes, scores, labels = merge.wbf(
        bl,
        sl,
        ll,
        weights=None if weights is None else list(weights),
        iou_thr=thr,
        skip_box_thr=skip,
        conf_type=conf_type,
        allows_overflow=overflow,
        clip=clip_case,
        backend=backend,
    )
    assert boxes.shape == exp_boxes.shape
    np.testing.assert_array_equal(boxes, exp_boxes)  # fused in float32 as ensemble-boxes does: exact
    np.testing.assert_allclose(scores, exp_scores, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(labels, exp_labels.astype(np.int64))


def test_wbf_matches_ensemble_boxes_with_float32_inputs(backend):
    """float32 inputs: the skip threshold is compared in float32, as ensemble-boxes compares it."""
    eb = pytest.importorskip("ensemble_boxes", reason="ensemble-boxes is the WBF oracle")
    bl, sl, ll = make_wbf_lists(11, 300, "clustered", 2)
    bl = [b.astype(np.float32) for b in bl]
    sl = [s.astype(np.float32) for s in sl]
    sl[0][0] = np.float32(0.7)  # at the threshold in float32, below it in float64: kept by both
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = eb.weighted_boxes_fusion(bl, sl, ll, weights=[2, 1], iou_thr=0.5, skip_box_thr=0.7)
    got = merge.wbf(bl, sl, ll, weights=[2, 1], iou_thr=0.5, skip_box_thr=0.7, backend=backend)
    assert got[0].dtype == np.float32 and got[1].dtype == np.float32
    np.testing.assert_array_equal(got[0], exp[0].astype(np.float32))
    np.testing.assert_allclose(got[1], exp[1], rtol=1e-6)
    np.testing.assert_array_equal(got[2], exp[2].astype(np.int64))


# --------------------------------------------------------------------------------------------------
# Semantics, one hand-made case each
# --------------------------------------------------------------------------------------------------


def test_ios_suppresses_a_cut_box_inside_its_complete_box(backend):
    complete = [100.0, 100.0, 140.0, 180.0]
    cut = [100.0, 100.0, 140.0, 120.0]  # the part a neighbouring tile saw, scored higher
    boxes, scores = np.array([cut, complete]), np.array([0.9, 0.8])
    assert merge.nms(boxes, scores, iou_thr=0.5, metric="iou", backend=backend).tolist() == [0, 1]  # IoU 0.25
    assert merge.nms(boxes, scores, iou_thr=0.5, metric="ios", backend=backend).tolist() == [0]  # IoS 1.0
    assert merge.nms(boxes, scores, iou_thr=0.5, metric="IOS", backend=backend).tolist() == [
        0
    ]  # SAHI's spelling
    _, _, _, groups = merge.greedy_nmm(boxes, scores, match_thr=0.5, metric="ios", backend=backend)
    assert [g.tolist() for g in groups] == [[0, 1]]


@pytest.mark.parametrize(
    "scores, labels, expected",
    [
        ([0.5, 0.5, 0.5], None, [0]),  # ties: lower index first
        ([0.4, 0.5, 0.5], None, [1]),
        ([0.5, 0.9, 0.7], [0, 1, 0], [1, 2]),  # classes never suppress each other: 1 spares 2, 2 takes 0
        ([0.5, 0.9, 0.7], [3, 3, 3], [1]),
        ([0.5, 0.9, 0.7], [0, 1, 2], [1, 2, 0]),
    ],
)
def test_nms_order_ties_and_classes(backend, scores, labels, expected):
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11]], dtype=np.float64)
    assert merge.nms(boxes, scores, labels, 0.5, backend=backend).tolist() == expected


def test_thresholds_are_strict_for_nms_and_inclusive_for_greedy_nmm(backend):
    boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 2]], dtype=np.float64)  # IoU = IoS/2 = 0.5 exactly
    scores = np.array([0.9, 0.8])
    assert merge.nms(boxes, scores, iou_thr=0.5, backend=backend).tolist() == [0, 1]  # 0.5 > 0.5 is false
    _, _, _, groups = merge.greedy_nmm(boxes, scores, match_thr=0.5, metric="iou", backend=backend)
    assert [g.tolist() for g in groups] == [[0, 1]]  # 0.5 >= 0.5, as in SAHI


def test_greedy_nmm_zero_threshold_merges_each_label_into_one_group(backend):
    boxes = np.array([[0, 0, 1, 1], [50, 50, 60, 60], [100, 0, 101, 1], [7, 7, 8, 8]], dtype=np.float64)
    out, scores, labels, groups = merge.greedy_nmm(
        boxes, [0.1, 0.9, 0.5, 0.3], [0, 0, 1, 0], match_thr=0.0, backend=backend
    )
    assert [g.tolist() for g in groups] == [[1, 3, 0], [2]]
    np.testing.assert_array_equal(out[0], [0, 0, 60, 60])
    assert labels.tolist() == [0, 1] and scores.tolist() == [0.9, 0.5]


def test_wbf_keeps_pixel_coordinates_unless_asked_to_clip(backend):
    a = np.array([[1000.0, 500.0, 1100.0, 700.0]])
    b = np.array([[1010.0, 510.0, 1110.0, 690.0]])
    boxes, scores, labels = merge.wbf([a, b], [[0.8], [0.4]], [[1], [1]], weights=[1, 2], backend=backend)
    np.testing.assert_allclose(boxes, [[1005.0, 505.0, 1105.0, 695.0]], rtol=1e-6)
    assert scores.tolist() == pytest.approx([(0.8 + 0.8) / 2 * 2 / 3])
    assert labels.tolist() == [1]
    clipped, _, _ = merge.wbf(
        [[[0.9, -0.5, 1.2, 0.7], [1.1, 0.5, 1.3, 0.7]]], [[0.8, 0.9]], None, clip=True, backend=backend
    )
    # the second box has x1 = x2 = 1 once clipped: zero area, dropped as ensemble-boxes drops it
    np.testing.assert_array_equal(clipped, [[0.9, 0.0, 1.0, 0.7]])


def test_wbf_cluster_of_zero_scores_keeps_its_first_box(backend):
    boxes = [np.array([[10.0, 10.0, 20.0, 20.0]]), np.array([[11.0, 10.0, 21.0, 20.0]])]
    out, scores, _ = merge.wbf(boxes, [[0.0], [0.0]], None, iou_thr=0.5, backend=backend)
    np.testing.assert_array_equal(out, [[10.0, 10.0, 20.0, 20.0]])  # ensemble-boxes: NaN (0 / 0)
    assert scores.tolist() == [0.0]


# --- the Detector's merge steps on Detections ------------------------------------------------------

WHOLE, CUT_PART, OTHER_CLASS_PART, ELSEWHERE = (
    [0, 0, 40, 80],
    [20, 0, 40, 80],
    [20, 0, 40, 80],
    [200, 0, 220, 40],
)
SUPPRESS_CASES = [
    # (boxes, classes, cut flags, kept indices, comment)
    ([WHOLE, CUT_PART], [0, 0], [False, True], [0], "a cut part inside a whole box goes"),
    ([WHOLE, OTHER_CLASS_PART], [0, 1], [False, True], [0, 1], "only a whole box of its class covers it"),
    ([WHOLE, ELSEWHERE], [0, 0], [False, True], [0, 1], "a cut box nothing covers stays"),
    ([WHOLE, CUT_PART], [0, 0], [True, True], [0, 1], "all cut: nothing complete to prefer"),
    ([WHOLE, CUT_PART], [0, 0], [False, False], [0, 1], "none cut: left to the merge"),
]


@pytest.mark.parametrize("boxes,classes,cut,kept,comment", SUPPRESS_CASES, ids=[c[4] for c in SUPPRESS_CASES])
def test_suppress_cut_boxes(boxes, classes, cut, kept, comment):
    dets = Detections(boxes, [0.6, 0.9][: len(boxes)], classes)
    out = merge.suppress_cut_boxes(dets, np.array(cut), thr=0.5)
    np.testing.assert_array_equal(out.xyxy, np.asarray(boxes, np.float32)[kept])


@pytest.mark.parametrize("method", merge.MERGE_METHODS)
def test_merge_boxes_joins_a_duplicate_by_every_method(method):
    dets = Detections([[0, 0, 40, 80], [1, 0, 41, 80], [200, 0, 220, 40]], [0.9, 0.8, 0.7], [0, 0, 0])
    out = merge.merge_boxes(dets, method, 0.5)
    assert len(out) == 2 and out.scores.max() >= 0.8


def test_merge_boxes_refuses_an_unknown_method():
    dets = Detections([[0, 0, 1, 1], [0, 0, 1, 1]], [0.5, 0.4], [0, 0])
    with pytest.raises(ValueError, match=r"merge: expected one of ios, nms, nmm, wbf, found 'soft'"):
        merge.merge_boxes(dets, "soft", 0.5)
