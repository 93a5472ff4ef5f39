"""What the merge step accepts and refuses, on both paths: validation messages, empty inputs, dtypes
and layouts, arbitrary arrays (hypothesis), the kernels called directly with garbage, backend
selection, and the C kernels running with the GIL released."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgetile.runtime import _merge_ref, merge

C_SKIP = pytest.mark.skipif(
    "c" not in merge.AVAILABLE_BACKENDS, reason=f"C merge kernels not available: {merge.C_UNAVAILABLE_REASON}"
)
BACKENDS = [pytest.param("c", marks=C_SKIP), "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


BOX = [[0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 12.0, 12.0]]

# --------------------------------------------------------------------------------------------------
# Validation: each bad input gives one clean error naming the argument, the expected, the found
# --------------------------------------------------------------------------------------------------

NMS_BAD = [
    # kwargs, exception, fragments of the message
    ({"boxes": [[0, 0, 1]]}, ValueError, ["boxes", "(N, 4)", "(1, 3)"]),  # wrong shape
    ({"boxes": np.zeros((2, 4, 1))}, ValueError, ["boxes", "(N, 4)", "(2, 4, 1)"]),
    (
        {"boxes": [[0, 0, np.nan, 1], [0, 0, 1, 1]]},
        ValueError,
        ["boxes must be finite", "nan", "boxes[0, 2]"],
    ),
    (
        {"boxes": [[0, 0, 1, 1], [0, -np.inf, 1, 1]]},
        ValueError,
        ["boxes must be finite", "-inf", "boxes[1, 1]"],
    ),
    ({"boxes": [[5, 0, 3, 1], [0, 0, 1, 1]]}, ValueError, ["x2 >= x1", "x1=5.0", "x2=3.0", "boxes[0]"]),
    ({"boxes": [[0, 0, 1, 1], [0, 4, 1, 2]]}, ValueError, ["y2 >= y1", "boxes[1]"]),
    ({"boxes": [[0, 0, 1e300, 1], [0, 0, 1, 1]]}, ValueError, ["magnitude at most 2**53", "1e+300"]),
    ({"boxes": [["a", "b", "c", "d"]] * 2}, TypeError, ["boxes", "real numbers", "<U1"]),
    ({"boxes": [[0, 0, 1, 1], [0, 0, 1]]}, ValueError, ["boxes", "rectangular"]),  # ragged
    ({"scores": [0.5]}, ValueError, ["scores", "(2,)", "(1,)"]),  # mismatched length
    ({"scores": [0.5, np.nan]}, ValueError, ["scores must be finite", "scores[1]"]),
    ({"scores": [[0.5, 0.4]]}, ValueError, ["scores", "(2,)", "(1, 2)"]),
    ({"labels": [0, 1, 2]}, ValueError, ["labels", "(2,)", "(3,)"]),
    ({"labels": [0.5, 1.0]}, ValueError, ["labels", "integer class ids", "0.5"]),
    ({"labels": np.array([2**64 - 1, 0], dtype=np.uint64)}, ValueError, ["labels", "int64"]),
    ({"iou_thr": 1.5}, ValueError, ["iou_thr", "[0, 1]", "1.5"]),
    ({"iou_thr": -0.1}, ValueError, ["iou_thr", "[0, 1]", "-0.1"]),
    ({"iou_thr": float("nan")}, ValueError, ["iou_thr", "nan"]),
    ({"iou_thr": "0.5"}, TypeError, ["iou_thr", "real number", "str"]),
    ({"iou_thr": True}, TypeError, ["iou_thr", "bool"]),
    ({"metric": "giou"}, ValueError, ["metric", "'iou' or 'ios'", "'giou'"]),
    ({"metric": None}, ValueError, ["metric", "None"]),
]


@pytest.mark.parametrize("kwargs, exc, fragments", NMS_BAD, ids=[str(i) for i in range(len(NMS_BAD))])
def test_nms_and_greedy_nmm_refuse_bad_input(backend, kwargs, exc, fragments):
    for fn, thr_name in ((merge.nms, "iou_thr"), (merge.greedy_nmm, "match_thr")):
        args = {"boxes": BOX, "scores": [0.9, 0.8], "labels": None, thr_name: 0.5}
        args.update({(thr_name if k == "iou_thr" else k): v for k, v in kwargs.items()})
        with pytest.raises(exc) as info:
            fn(**args, backend=backend)
        for fragment in fragments:
            assert fragment.replace("iou_thr", thr_name) in str(info.value), (fn.__name__, str(info.value))


WBF_BAD = [
    (
        {"boxes_list": [BOX], "scores_list": [[0.9, 0.8]], "labels_list": [[0, 0], [1]]},
        ValueError,
        ["labels_list", "one entry per boxes_list entry (1)", "found 2"],
    ),
    ({"scores_list": [[0.9, 0.8]]}, ValueError, ["scores_list", "(2)", "found 1"]),
    ({"scores_list": [[0.9, 0.8], [0.7]]}, ValueError, ["scores_list[1]", "(2,)", "(1,)"]),
    (
        {"scores_list": [[0.9, 1.8], [0.7, 0.1]]},
        ValueError,
        ["scores_list[0]", "[0, 1]", "1.8", "scores_list[0][1]"],
    ),
    ({"scores_list": [[0.9, -0.1], [0.7, 0.1]]}, ValueError, ["scores_list[0]", "[0, 1]", "-0.1"]),
    (
        {"boxes_list": [BOX, [[0, 0, 1, np.inf], [0, 0, 1, 1]]]},
        ValueError,
        ["boxes_list[1] must be finite", "inf", "boxes_list[1][0, 3]"],
    ),
    ({"boxes_list": [BOX, [[3, 0, 1, 1], [0, 0, 1, 1]]]}, ValueError, ["boxes_list[1]", "x2 >= x1"]),
    ({"boxes_list": np.zeros(())}, ValueError, ["boxes_list", "sequence", "0-d"]),
    ({"boxes_list": "boxes"}, TypeError, ["boxes_list", "sequence", "str"]),
    ({"weights": [1.0]}, ValueError, ["weights", "(2,)", "(1,)"]),
    ({"weights": [1.0, 0.0]}, ValueError, ["weights", "[1e-06, 1e+06]", "0.0", "weights[1]"]),
    ({"weights": [1.0, np.nan]}, ValueError, ["weights", "nan"]),
    ({"iou_thr": 2}, ValueError, ["iou_thr", "[0, 1]", "2.0"]),
    ({"skip_box_thr": float("inf")}, ValueError, ["skip_box_thr", "finite", "inf"]),
    ({"conf_type": "mean"}, ValueError, ["conf_type", "'avg'", "'absent_model_aware_avg'", "'mean'"]),
    ({"allows_overflow": "yes"}, TypeError, ["allows_overflow", "bool", "str"]),
    ({"labels_list": [[0.0, 1.5], [0, 0]]}, ValueError, ["labels_list[0]", "integer", "1.5"]),
]


@pytest.mark.parametrize("kwargs, exc, fragments", WBF_BAD, ids=[str(i) for i in range(len(WBF_BAD))])
def test_wbf_refuses_bad_input(backend, kwargs, exc, fragments):
    args = {
        "boxes_list": [BOX, BOX],
        "scores_list": [[0.9, 0.8], [0.7, 0.6]],
        "labels_list": [[0, 0], [0, 1]],
    }
    args.update(kwargs)
    with pytest.raises(exc) as info:
        merge.wbf(**args, backend=backend)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_unknown_or_missing_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be None, 'c' or 'numpy'; found 'cuda'"):
        merge.nms(BOX, [0.9, 0.8], backend="cuda")
    if "c" not in merge.AVAILABLE_BACKENDS:
        with pytest.raises(RuntimeError, match="backend='c' was asked for but"):
            merge.nms(BOX, [0.9, 0.8], backend="c")


# --------------------------------------------------------------------------------------------------
# Empty inputs, dtypes, layouts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("empty", ["list", "0x4", "0"])
def test_empty_inputs_give_empty_outputs(backend, dtype, empty):
    boxes = [] if empty == "list" else np.zeros((0, 4) if empty == "0x4" else (0,), dtype)
    scores = [] if empty == "list" else np.zeros(0, dtype)
    out_dtype = np.float64 if empty == "list" else dtype
    keep = merge.nms(boxes, scores, backend=backend)
    assert keep.dtype == np.int64 and keep.shape == (0,)
    b, s, lab, groups = merge.greedy_nmm(boxes, scores, [], backend=backend)
    assert (b.shape, b.dtype, s.shape, s.dtype, lab.dtype, groups) == (
        (0, 4),
        out_dtype,
        (0,),
        out_dtype,
        np.int64,
        [],
    )
    for lists in (([boxes], [scores], [[]]), ([], [], [])):
        b, s, lab = merge.wbf(*lists, backend=backend)
        expect = out_dtype if lists[0] else np.float64
        assert (b.shape, b.dtype, s.shape, s.dtype, lab.shape, lab.dtype) == (
            (0, 4),
            expect,
            (0,),
            expect,
            (0,),
            np.int64,
        )
    # everything below skip_box_thr, or of zero area: nothing left to fuse
    b, _, _ = merge.wbf(
        [np.array([[0, 0, 1, 1], [0, 0, 0, 1]], dtype)],
        [np.array([0.1, 0.9], dtype)],
        None,
        skip_box_thr=0.5,
        backend=backend,
    )
    assert b.shape == (0, 4) and b.dtype == dtype


def test_dtypes_and_layouts(backend):
    rng = np.random.default_rng(3)
    xy = rng.random((400, 2)) * 500
    boxes = np.concatenate([xy, xy + 20 + rng.random((400, 2)) * 30], axis=1)
    scores, labels = rng.random(400), rng.integers(0, 3, 400)
    ref_keep = merge.nms(boxes, scores, labels, 0.4, backend=backend)
    ref_nmm = merge.greedy_nmm(boxes, scores, labels, 0.4, backend=backend)
    variants = {
        "fortran": (np.asfortranarray(boxes), scores, labels),
        "strided": (np.repeat(boxes, 2, axis=0)[::2], np.repeat(scores, 2)[::2], np.repeat(labels, 2)[::2]),
        "reversed columns view": (boxes[:, ::-1][:, ::-1], scores, labels.astype(np.int32)),
        "lists": (boxes.tolist(), scores.tolist(), labels.tolist()),
        "float labels": (boxes, scores, labels.astype(np.float32)),
    }
    for name, (b, s, lab) in variants.items():
        np.testing.assert_array_equal(merge.nms(b, s, lab, 0.4, backend=backend), ref_keep, err_msg=name)
        got = merge.greedy_nmm(b, s, lab, 0.4, backend=backend)
        np.testing.assert_array_equal(got[0], ref_nmm[0], err_msg=name)
        assert got[0].dtype == np.float64 and got[1].dtype == np.float64
    # float32 in, float32 out; integer pixel boxes in, float64 out
    b32, s32 = boxes.astype(np.float32), scores.astype(np.float32)
    out = merge.greedy_nmm(b32, s32, labels, 0.4, backend=backend)
    assert out[0].dtype == np.float32 and out[1].dtype == np.float32 and out[2].dtype == np.int64
    np.testing.assert_array_equal(
        merge.nms(b32, s32, labels, 0.4, backend=backend),
        merge.nms(b32.astype(np.float64), s32.astype(np.float64), labels, 0.4, backend=backend),
    )
    assert merge.greedy_nmm(np.round(boxes).astype(np.int64), scores, backend=backend)[0].dtype == np.float64
    w = merge.wbf(
        [b32[:200], b32[200:]], [s32[:200], s32[200:]], [labels[:200], labels[200:]], backend=backend
    )
    assert (w[0].dtype, w[1].dtype, w[2].dtype) == (np.float32, np.float32, np.int64)
    w = merge.wbf([b32[:200], boxes[200:]], [s32[:200], s32[200:]], None, backend=backend)
    assert w[0].dtype == np.float64  # not every boxes array is float32


def test_inputs_are_not_modified(backend):
    boxes = np.array(BOX * 3, dtype=np.float32)
    scores = np.array([0.3, 0.9, 0.5, 0.5, 0.1, 0.8], dtype=np.float32)
    before = boxes.copy(), scores.copy()
    merge.nms(boxes, scores, backend=backend)
    merge.greedy_nmm(boxes, scores, backend=backend)
    merge.wbf([boxes / 20], [scores], None, clip=True, backend=backend)
    np.testing.assert_array_equal(boxes, before[0])
    np.testing.assert_array_equal(scores, before[1])


# --------------------------------------------------------------------------------------------------
# Arbitrary arrays (hypothesis): a clean ValueError/TypeError or a valid result, never a crash
# --------------------------------------------------------------------------------------------------

ANY_FLOAT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(-1e3, 1e3),
    st.sampled_from([0.0, -0.0, 1e300, -1e300, 2.0**53, 2.0**53 + 2, 5e-324]),
)


@st.composite
def box_inputs(draw):
    n = draw(st.integers(0, 25))
    cols = draw(st.sampled_from([4, 4, 4, 3]))
    if draw(st.booleans()):
        boxes = draw(hnp.arrays(np.float64, (n, cols), elements=ANY_FLOAT))
    else:  # mostly valid boxes, so the valid path is exercised too
        xy = draw(hnp.arrays(np.float64, (n, 2), elements=st.floats(-1e4, 1e4)))
        wh = draw(hnp.arrays(np.float64, (n, 2), elements=st.floats(0, 300)))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        if n and draw(st.booleans()):
            boxes[draw(st.integers(0, n - 1)), draw(st.integers(0, 3))] = draw(ANY_FLOAT)
    if draw(st.booleans()):
        with np.errstate(over="ignore"):  # 1e300 becomes inf in float32: one more invalid input
            boxes = boxes.astype(np.float32)
    scores = draw(
        hnp.arrays(
            np.float64,
            draw(st.sampled_from([n, n, n, n + 1])),
            elements=st.one_of(st.floats(0, 1), ANY_FLOAT),
        )
    )
    labels = draw(
        st.one_of(
            st.none(),
            hnp.arrays(np.int64, n, elements=st.integers(-(2**63), 2**63 - 1)),
            hnp.arrays(np.int64, n, elements=st.integers(0, 2)),
        )
    )
    thr = draw(st.one_of(st.floats(0, 1), ANY_FLOAT))
    metric = draw(st.sampled_from(["iou", "ios", "IOS", "dice"]))
    return boxes, scores, labels, thr, metric


def _check_nms_result(keep, scores, n):
    assert keep.dtype == np.int64 and keep.ndim == 1
    assert len(set(keep.tolist())) == len(keep) and all(0 <= k < n for k in keep.tolist())
    assert n == 0 or len(keep) >= 1
    assert np.all(np.diff(np.asarray(scores, np.float64)[keep]) <= 0)


PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("backend_name", BACKENDS)
@PROPERTY_SETTINGS
@given(data=box_inputs())
def test_nms_and_greedy_nmm_on_arbitrary_arrays(backend_name, data):
    boxes, scores, labels, thr, metric = data
    n = len(boxes)
    try:
        keep = merge.nms(boxes, scores, labels, thr, metric, backend=backend_name)
    except (ValueError, TypeError):
        keep = None
    else:
        _check_nms_result(keep, scores, n)
    try:
        out_boxes, out_scores, out_labels, groups = merge.greedy_nmm(
            boxes, scores, labels, thr, metric, backend=backend_name
        )
    except (ValueError, TypeError):
        assert keep is None  # the same inputs are refused by both
        return
    assert keep is not None
    members = np.concatenate(groups) if groups else np.zeros(0, np.int64)
    assert sorted(members.tolist()) == list(range(n))  # a partition of the input
    assert len(out_boxes) == len(out_scores) == len(out_labels) == len(groups)
    assert np.all(np.isfinite(out_boxes)) and np.all(out_boxes[:, 2:] >= out_boxes[:, :2])


@st.composite
def wbf_inputs(draw):
    m = draw(st.integers(0, 3))
    lists = [draw(box_inputs()) for _ in range(m)]
    boxes_list = [b for b, *_ in lists]
    scores_list = [np.clip(s, 0, 1) if draw(st.booleans()) else s for _, s, *_ in lists]
    labels_list = [lab if lab is not None else np.zeros(len(b), np.int64) for b, _, lab, *_ in lists]
    weights = draw(
        st.one_of(st.none(), st.lists(st.one_of(st.floats(0.1, 5), ANY_FLOAT), min_size=m, max_size=m))
    )
    thr = draw(st.one_of(st.floats(0, 1), ANY_FLOAT))
    skip = draw(st.one_of(st.floats(0, 1), ANY_FLOAT))
    conf_type = draw(st.sampled_from(_merge_ref.CONF_TYPES + ("median",)))
    return (
        boxes_list,
        scores_list,
        labels_list,
        weights,
        thr,
        skip,
        conf_type,
        draw(st.booleans()),
        draw(st.booleans()),
    )


@pytest.mark.parametrize("backend_name", BACKENDS)
@PROPERTY_SETTINGS
@given(data=wbf_inputs())
def test_wbf_on_arbitrary_arrays(backend_name, data):
    *args, clip = data
    try:
        boxes, scores, labels = merge.wbf(*args, clip=clip, backend=backend_name)
    except (ValueError, TypeError):
        return
    assert boxes.shape == (len(scores), 4) and labels.shape == scores.shape
    assert np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))
    assert np.all(boxes[:, 2:] >= boxes[:, :2]) and np.all(scores >= 0)
    assert np.all(np.diff(scores.astype(np.float64)) <= 0)
    assert len(scores) <= sum(len(b) for b in args[0])


@C_SKIP
@settings(max_examples=150, deadline=None)
@given(data=box_inputs())
def test_c_and_reference_agree_on_arbitrary_arrays(data):
    """Same result, or the same kind of error, on the C path and the NumPy path."""
    boxes, scores, labels, thr, metric = data
    outcomes = []
    for name in ("c", "numpy"):
        try:
            outcomes.append(merge.nms(boxes, scores, labels, thr, metric, backend=name).tolist())
        except (ValueError, TypeError) as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]


# --------------------------------------------------------------------------------------------------
# The kernels called directly: they re-check everything the wrapper checked
# --------------------------------------------------------------------------------------------------

KERNEL_MODULES = [pytest.param("c", marks=C_SKIP), "numpy"]

ARRAYS = st.one_of(
    hnp.arrays(
        st.sampled_from([np.float64, np.float32, np.int64, np.int32, np.bool_]),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
        elements=None,
    ),
    st.builds(lambda a: a[::2], hnp.arrays(np.float64, st.tuples(st.integers(0, 8), st.just(4)))),  # strided
    st.builds(lambda a: a[:, 0], hnp.arrays(np.int64, st.tuples(st.integers(0, 8), st.just(2)))),
    st.none(),
    st.just([[0.0, 0.0, 1.0, 1.0]]),
    st.just(b"\x00" * 32),
)


def _readonly(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("kernel_name", KERNEL_MODULES)
@settings(max_examples=150, deadline=None)
@given(
    args=st.lists(ARRAYS, min_size=11, max_size=11),
    thr=ANY_FLOAT,
    word=st.sampled_from(["iou", "ios", "avg", "max", 3]),
)
def test_kernels_never_crash_on_garbage(kernel_name, args, thr, word):
    kernels = merge._kernels(kernel_name)
    calls = [
        (kernels.nms, args[:3] + [thr, word, args[3]]),
        (kernels.greedy_nmm, args[:3] + [thr, word] + args[3:7]),
        (kernels.wbf, args[:5] + [thr, word, True] + args[5:8]),
    ]
    for fn, call_args in calls:
        try:
            fn(*call_args)
        except (ValueError, TypeError):
            pass


@pytest.mark.parametrize("kernel_name", KERNEL_MODULES)
def test_kernels_check_buffers_again(kernel_name):
    k = merge._kernels(kernel_name)
    boxes, scores, labels = np.array(BOX), np.array([0.9, 0.8]), np.zeros(2, np.int64)
    keep = np.empty(2, np.int64)
    assert k.nms(boxes, scores, labels, 0.5, "iou", keep) == 2  # IoU 64/136 < 0.5
    bad = [
        ((boxes.astype(np.float32), scores, labels, 0.5, "iou", keep), TypeError, "boxes"),
        (
            (
                np.asfortranarray(np.array(BOX * 2)),
                np.zeros(4),
                np.zeros(4, np.int64),
                0.5,
                "iou",
                np.empty(4, np.int64),
            ),
            ValueError,
            "C-contiguous",
        ),
        ((boxes, scores[:1], labels, 0.5, "iou", keep), ValueError, "scores"),
        ((boxes, scores, labels.astype(np.int32), 0.5, "iou", keep), TypeError, "labels"),
        ((boxes, scores, labels, 0.5, "iou", _readonly(keep)), ValueError, "keep"),
        ((boxes, scores, labels, 0.5, "iou", np.empty(3, np.int64)), ValueError, "keep"),
        (
            (np.array([[0, 0, np.nan, 1.0]]), scores[:1], labels[:1], 0.5, "iou", keep[:1]),
            ValueError,
            "finite",
        ),
        ((np.array([[2.0, 0, 1, 1]]), scores[:1], labels[:1], 0.5, "iou", keep[:1]), ValueError, "x2 >= x1"),
        ((boxes, scores, labels, 1.5, "iou", keep), ValueError, "iou_thr"),
        ((boxes, scores, labels, 0.5, "IOU", keep), ValueError, "metric"),
    ]
    for args, exc, fragment in bad:
        with pytest.raises(exc, match=fragment):
            k.nms(*args)
    n = 2
    out = np.empty((n, 4)), np.empty(n), np.empty(n, np.int64)
    good = (boxes, scores, labels, np.zeros(n, np.int64), np.ones(1), 0.5, "avg", False, *out)
    assert k.wbf(*good) == 2
    for i, value, exc, fragment in [
        (3, np.array([0, 1]), ValueError, "models"),  # model 1 of 1 weight
        (4, np.array([0.0]), ValueError, "weights"),
        (1, np.array([0.9, 1.5]), ValueError, r"\[0, 1\]"),
        (0, np.array([[0.0, 0, 0, 1], [0, 0, 1, 1]]), ValueError, "positive areas"),
        (6, "median", ValueError, "conf_type"),
    ]:
        args = list(good)
        args[i] = value
        with pytest.raises(exc, match=fragment):
            k.wbf(*args)


# --------------------------------------------------------------------------------------------------
# Backend selection, GIL, threads
# --------------------------------------------------------------------------------------------------


def _backend_in_subprocess(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("EDGETILE_PUREPYTHON", None)
    if env_value is not None:
        env["EDGETILE_PUREPYTHON"] = env_value
    code = "from edgetile.runtime import merge; print(merge.BACKEND, merge.AVAILABLE_BACKENDS)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_edgetile_purepython_forces_the_numpy_reference():
    assert _backend_in_subprocess("1") == "numpy ('numpy',)"


@C_SKIP
def test_the_c_kernels_are_the_default_when_built():
    assert _backend_in_subprocess(None) == "c ('c', 'numpy')"
    assert _backend_in_subprocess("0") == "c ('c', 'numpy')"


@C_SKIP
def test_c_kernels_release_the_gil():
    """Another Python thread runs while the C kernel works, and only because the kernel let it.

    The switch interval is raised to an hour, so the interpreter never takes the GIL from the main thread
    by time: the waiting thread gets it only when the main thread gives it up itself. The kernel is
    called directly with arrays it takes as they are, so no NumPy conversion before it can be what gave
    the GIL up. The waiting thread records whether the main thread is inside the kernel call at that
    moment: True if the kernel released the GIL, False if it only ran at the join afterwards.
    """
    rng = np.random.default_rng(0)
    n = 100_000
    xy = rng.random((n, 2)) * [4000, 3000]
    boxes = np.ascontiguousarray(np.concatenate([xy, xy + rng.uniform(10, 120, (n, 2))], axis=1))
    scores, labels, keep = rng.random(n), np.zeros(n, np.int64), np.empty(n, np.int64)
    inside, seen, go = [False], [], threading.Event()

    def observe():
        go.wait()
        seen.append(inside[0])

    t = threading.Thread(target=observe)
    t.start()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(3600.0)
    try:
        inside[0] = True
        go.set()  # the observer now waits for the GIL, which this thread keeps until the kernel
        merge._C_KERNELS.nms(boxes, scores, labels, 0.5, "iou", keep)  # about a second of C
        inside[0] = False
    finally:
        sys.setswitchinterval(interval)
        t.join()
    assert seen == [True], "the observing thread ran only after the C call returned: the GIL was held"


@C_SKIP
def test_c_kernels_are_thread_safe():
    rng = np.random.default_rng(1)
    sets = []
    for _ in range(4):
        xy = rng.random((3000, 2)) * 2000
        b = np.concatenate([xy, xy + rng.uniform(10, 60, (3000, 2))], axis=1)
        sets.append((b, rng.random(3000), rng.integers(0, 2, 3000)))
    expected = [(merge.nms(*s, backend="c"), merge.wbf([s[0]], [s[1]], [s[2]], backend="c")) for s in sets]
    results = [None] * 8

    def work(k):
        s = sets[k % 4]
        results[k] = (merge.nms(*s, backend="c"), merge.wbf([s[0]], [s[1]], [s[2]], backend="c"))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, (keep, fused) in enumerate(results):
        np.testing.assert_array_equal(keep, expected[k % 4][0])
        for a, b in zip(fused, expected[k % 4][1]):
            np.testing.assert_array_equal(a, b)
