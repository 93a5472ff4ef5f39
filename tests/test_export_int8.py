"""INT8 Q/DQ quantization on runtime tiles, the head exclusion, and the FP32 vs INT8 accuracy report."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_models import conv_blob_model, make_tiny_pt, write_coco, write_photos
from onnx import numpy_helper

from edgetile.export.artifacts import BudgetExceeded, ExportError
from edgetile.export.int8 import (
    SMALL_CALIBRATION,
    Int8Config,
    accuracy_report,
    check_qdq,
    head_tail_nodes,
    quantize_int8,
)
from edgetile.export.onnx import OnnxExportConfig, export_onnx
from edgetile.export.tiles import plan_runtime_tiles
from edgetile.runtime.backends import create_backend
from edgetile.runtime.cli import main
from edgetile.runtime.model import model_info
from edgetile.runtime.preprocess import preprocess_reference
from edgetile.runtime.tiling import plan_tiles


@pytest.fixture(scope="module")
def yolo_onnx(tmp_path_factory):
    d = tmp_path_factory.mktemp("yolo")
    return export_onnx(make_tiny_pt(d / "tiny.pt"), d / "tiny.onnx", OnnxExportConfig(imgsz=64))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_photos(d / "calib", 4, seed=2)  # red "people" among noise, 256x256
    write_photos(d / "grey", 4, seed=3, red=False)  # the same ground without anybody
    write_coco(d / "val", 6, seed=1)
    return d


def _consumers(model):
    out = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


@pytest.mark.slow
def test_head_tail_of_an_ultralytics_export(yolo_onnx):
    model = onnx.load(str(yolo_onnx))
    tail = set(head_tail_nodes(model))
    by_name = {n.name: n for n in model.graph.node}
    ops = {by_name[t].op_type for t in tail}
    assert {"Softmax", "Sigmoid", "Concat", "Conv"} <= ops  # DFL softmax and its conv, class sigmoid, concat
    tail_convs = [t for t in tail if by_name[t].op_type == "Conv"]
    assert len(tail_convs) == 1 and "dfl" in tail_convs[0]  # the learned head convolutions are not tail
    producer = {o: n for n in model.graph.node for o in n.output}
    assert producer[model.graph.output[0].name].name in tail
    # Every input of a tail node comes from the tail, a learned convolution, or a constant.
    inits = {i.name for i in model.graph.initializer}
    for t in tail:
        for i in by_name[t].input:
            if i and i not in inits:
                src = producer[i]
                assert src.name in tail or src.op_type == "Conv", (t, src.name)


@pytest.mark.slow
def test_qdq_graph_is_what_tensorrt_accepts(yolo_onnx, data, tmp_path):
    r = quantize_int8(yolo_onnx, data / "calib", tmp_path / "q.onnx", Int8Config(calib_count=12, tile=128))
    q = onnx.load(str(r.path))
    assert r.calib_tiles == 12 and r.calib_photos == 4 and r.available_tiles == 36
    inits = {i.name: i for i in q.graph.initializer}
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:  # symmetric INT8: zero point 0
        zp = inits[n.input[2]]
        assert zp.data_type == onnx.TensorProto.INT8 and not np.any(numpy_helper.to_array(zp))
    consumers = _consumers(q)
    producer = {o: n for n in q.graph.node for o in n.output}
    convs = [n for n in q.graph.node if n.op_type == "Conv" and "dfl" not in n.name]
    for conv in convs:  # per-channel weights, quantized activations in, float bias
        w_dq = producer[conv.input[1]]
        assert w_dq.op_type == "DequantizeLinear"
        channels = inits[w_dq.input[0]].dims[0]
        assert numpy_helper.to_array(inits[w_dq.input[1]]).size == channels
        assert producer[conv.input[0]].op_type == "DequantizeLinear"
        if len(conv.input) > 2:
            assert conv.input[2] in inits and inits[conv.input[2]].data_type == onnx.TensorProto.FLOAT
        # no Q/DQ right after a weighted layer (TensorRT fuses it with its activation)
        assert all(c.op_type != "QuantizeLinear" for c in consumers.get(conv.output[0], []))
    # The head tail stays float: no node of it reads a dequantized tensor.
    for name in r.excluded:
        node = next(n for n in q.graph.node if n.name == name)
        assert all(
            producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input
        ), name
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["names"] == "{0: 'person'}" and meta["imgsz"] == "[64, 64]"
    assert meta["edgetile_calibration"].startswith("12 tiles, minmax")  # the default method
    assert check_qdq(q) == r.quantized_inputs
    with create_backend("onnxruntime", r.path) as be:  # the runtime loads it as any model
        info = model_info(be, str(r.path))
        assert info.input_hw == (64, 64) and info.batch is None
        assert be.infer(np.zeros((2, 3, 64, 64), np.float32))[0].shape[:2] == (2, 5)


@pytest.mark.slow
def test_quantize_head_puts_qdq_on_the_dfl(yolo_onnx, data, tmp_path):
    r = quantize_int8(
        yolo_onnx,
        data / "calib",
        tmp_path / "qh.onnx",
        Int8Config(calib_count=8, tile=128, method="minmax", exclude_head=False),
    )
    q = onnx.load(str(r.path))
    producer = {o: n for n in q.graph.node for o in n.output}
    dfl = next(n for n in q.graph.node if n.op_type == "Conv" and "dfl" in n.name)
    assert r.excluded == []
    assert producer[dfl.input[1]].op_type == "DequantizeLinear"


def test_calibration_tiles_are_cut_as_the_runtime_cuts_them(data):
    plan = plan_runtime_tiles([data / "calib"], 100, (64, 64), tile=128, overlap=0.2)
    windows = plan_tiles(256, 256, 128, 0.2)
    assert plan.count == plan.available == 4 * len(windows)
    tiles = list(plan)
    image = cv2.imread(plan.photos[0])
    for tile, win in zip(tiles[: len(windows)], windows):
        ref = preprocess_reference(image, tuple(int(v) for v in win), (64, 64), (64, 64))
        np.testing.assert_allclose(tile, ref, atol=1e-6)


def test_calibration_tiles_spread_over_every_photo(data):
    plan = plan_runtime_tiles([data / "calib"], 6, (64, 64), tile=128)
    assert plan.count == 6 and plan.available == 36
    # evenly spaced over the 36 tiles of 4 photos (9 each): tiles 0, 7, 14, 21, 28, 35
    assert [len(p) for p in plan.picks] == [2, 1, 1, 2]
    windows = plan_tiles(256, 256, 128, 0.2)
    np.testing.assert_array_equal(plan.picks[0], windows[[0, 7]])
    np.testing.assert_array_equal(plan.picks[3], windows[[1, 8]])


@pytest.mark.slow
def test_no_calibration_photos_is_one_clear_error(tmp_path, yolo_onnx):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="expected photos"):
        quantize_int8(yolo_onnx, tmp_path / "empty", tmp_path / "x.onnx", Int8Config(calib_count=4))


@pytest.mark.slow
def test_budget_is_checked(yolo_onnx, data, tmp_path):
    with pytest.raises(BudgetExceeded, match="over the weight budget"):
        quantize_int8(
            yolo_onnx, data / "calib", tmp_path / "b.onnx", Int8Config(calib_count=4, tile=128, budget_mb=0.5)
        )
    assert (tmp_path / "b.onnx").is_file()


@pytest.mark.parametrize("method", ["entropy", "minmax", "percentile"])
def test_accuracy_report_fp32_and_int8_side_by_side(method, data, tmp_path):
    fp32 = conv_blob_model(tmp_path / "blob.onnx")
    r = quantize_int8(
        fp32, data / "calib", tmp_path / "blob_int8.onnx", Int8Config(calib_count=36, method=method, tile=128)
    )
    assert set(r.excluded) == {"head_concat", "score_flat", "score_sigmoid", "boxes", "zeros"}
    report = accuracy_report(fp32, r.path, data / "val" / "annotations.json", r.calibration_line(), tile=128)
    assert report.photos == 6 and report.boxes > 0
    assert report.fp32.map50 > 0.2  # the blob detector finds the red squares
    assert abs(report.drop50) <= 0.02 and report.passed
    text = "\n".join(report.lines())
    assert "FP32" in text and "INT8" in text and "mAP@0.5" in text and "mAP@0.75" in text
    assert "calibration: 36 tile(s) from 4 photo(s)" in text
    assert f"fewer than {SMALL_CALIBRATION} tiles" in text  # 36 tiles is a small calibration set


def test_a_calibration_set_without_the_objects_collapses_and_the_report_says_so(data, tmp_path, capsys):
    fp32 = conv_blob_model(tmp_path / "blob.onnx")
    code = main(
        [
            "export",
            "int8",
            str(fp32),
            "--calib",
            str(data / "grey"),
            "--calib-count",
            "16",
            "--val",
            str(data / "val" / "annotations.json"),
            "--tile",
            "128",
            "--out",
            str(tmp_path / "collapsed.onnx"),
        ]
    )
    out = capsys.readouterr()
    assert code == 1
    assert out.out.strip() == str(tmp_path / "collapsed.onnx")
    assert "verdict: FAIL" in out.err and "WARNING: INT8 loses" in out.err
    assert "calibration: 16 tile(s)" in out.err
    int8_row = next(line for line in out.err.splitlines() if line.startswith("INT8"))
    assert float(int8_row.split()[1]) < 0.05  # mAP@0.5 of the collapsed model


def test_cli_int8_passes_with_field_calibration(data, tmp_path, capsys):
    fp32 = conv_blob_model(tmp_path / "blob.onnx")
    code = main(
        [
            "export",
            "int8",
            str(fp32),
            "--calib",
            str(data / "calib"),
            "--val",
            str(data / "val" / "annotations.json"),
            "--tile",
            "128",
            "--method",
            "minmax",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.strip() == str(tmp_path / "blob_int8.onnx")  # default: beside the input
    assert "verdict: PASS" in out.err


def test_cli_int8_usage_errors(data, tmp_path, capsys):
    fp32 = conv_blob_model(tmp_path / "blob.onnx")
    assert main(["export", "int8", str(fp32), "--calib", str(data / "calib")]) == 2
    assert "--val: expected an annotated validation set" in capsys.readouterr().err
    assert main(["export", "int8", str(fp32), "--calib", str(tmp_path / "nowhere"), "--no-report"]) == 2
    assert "--calib: not found" in capsys.readouterr().err


def test_int8_runs_close_to_fp32_on_field_tiles(data, tmp_path):
    fp32 = conv_blob_model(tmp_path / "blob.onnx")
    r = quantize_int8(fp32, data / "calib", tmp_path / "i.onnx", Int8Config(calib_count=36, tile=128))
    tiles = np.stack(list(plan_runtime_tiles([data / "calib"], 8, (64, 64), tile=128)))
    a = ort.InferenceSession(str(fp32)).run(None, {"images": tiles})[0]
    b = ort.InferenceSession(str(r.path)).run(None, {"images": tiles})[0]
    np.testing.assert_array_equal(a[:, :4], b[:, :4])  # boxes: the float tail is untouched
    assert np.abs(a[:, 4] - b[:, 4]).max() < 0.1


@pytest.mark.parametrize(
    "fp32, int8, passed, why",
    [
        ((0.80, 0.60, 0.90), (0.79, 0.58, 0.89), True, None),  # within both limits
        ((0.80, 0.60, 0.90), (0.70, 0.50, 0.88), False, "loses 0.1000 mAP@0.5"),
        # ranks as well (mAP kept) but scores everything lower: recall at --conf collapses
        ((0.80, 0.60, 0.90), (0.80, 0.60, 0.20), False, "loses 0.700 recall at score 0.25"),
    ],
)
def test_report_verdict(fp32, int8, passed, why):
    from types import SimpleNamespace

    from edgetile.export.int8 import AccuracyReport

    def result(m50, m75, recall):
        return SimpleNamespace(
            map50=m50, map75=m75, map50_95=m75 / 2, recall=recall, precision=0.5, score_thr=0.25
        )

    report = AccuracyReport(result(*fp32), result(*int8), 0.02, "calibration: 512 tile(s)", "setting", 10, 40)
    assert report.passed is passed
    verdict = report.lines()[-1]
    assert verdict.startswith("verdict: PASS" if passed else "verdict: FAIL")
    if why:
        assert why in verdict
