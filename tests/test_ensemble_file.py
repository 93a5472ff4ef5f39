"""Ensemble files: one --model word naming several models, their weights and the fusion settings.

Read in the options layer (YAML with PyYAML, JSON with nothing more; members relative to the file),
accepted by detect, serve, eval, pseudo-label and export engine as one model is. The models are the
tiny red-blob ONNX models of tests/onnx_models.py and tests/export_models.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from export_models import conv_blob_model
from test_export_engine import FakeCudaDevice
from trt_stand_in import StandInTensorRT

from edgetile.runtime.cli import build_parser, main
from edgetile.runtime.options import UsageError
from edgetile.runtime.options.detect import (
    expand_models,
    open_detector,
    read_ensemble,
    write_ensemble,
)
from onnx_models import red_blob_model


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    d = tmp_path_factory.mktemp("ens")
    (d / "m").mkdir()
    return d, red_blob_model(d / "m" / "a.onnx"), red_blob_model(d / "m" / "b.onnx")


def test_written_file_reads_back_with_paths_relative_to_it(members, tmp_path):
    d, a, b = members
    for name in ("ens.yaml", "ens.json"):
        path = write_ensemble(d / name, [a, b], [1, 2], 0.6, notes=["made by a test"])
        ens = read_ensemble(path)
        assert ens.models == (str(d / "m" / "a.onnx"), str(d / "m" / "b.onnx"))
        assert (ens.weights, ens.fusion_iou, ens.notes) == ((1.0, 2.0), 0.6, ("made by a test",))
    assert "m/a.onnx" in (d / "ens.yaml").read_text()  # relative: the folder can move
    doc = json.loads((d / "ens.json").read_text())
    assert doc["models"][1] == {"path": "m/b.onnx", "weight": 2.0}


def test_json_needs_no_pyyaml(members):
    d, a, b = members
    write_ensemble(d / "lean.json", [a, b], [1, 2])
    code = (
        "import sys; sys.modules['yaml'] = None\n"  # importing yaml now fails, as on a lean install
        "from edgetile.runtime.options.detect import read_ensemble\n"
        f"print(read_ensemble({str(d / 'lean.json')!r}).weights)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(1.0, 2.0)"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[a.onnx]", "expected a mapping with 'models'"),  # a list, not a mapping
        ("models: []", "models: expected a list of members"),  # no members
        ("models: [m/a.onnx]\nmodel: x", "unknown key"),  # a typo of a key
        ("models: [missing.onnx]", "model file not found"),  # a missing member
        ("models: [{path: m/a.onnx, weight: 0}]", "weight: expected a positive number"),  # zero weight
        ("models: [{path: m/a.onnx, weigth: 2}]", "unknown key"),  # a typo in a member
        ("models: [m/a.onnx]\nfusion: {method: nms}", "fusion method: expected one of wbf"),
        ("models: [m/a.onnx]\nfusion: {iou: 1.5}", "fusion iou: expected a number in"),
        ("models: [other.yaml]", "found another ensemble file"),  # no nesting
        ("models: [m/a.onnx\n", "not valid YAML"),
    ],
)
def test_bad_files_are_refused_in_one_line(members, text, message):
    d, _, _ = members
    (d / "other.yaml").write_text("models: [m/a.onnx]\n")
    path = d / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_ensemble(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    "words, weights, expected_weights, expected_count",
    [
        (["ens.yaml"], None, [1.0, 2.0], 2),  # the file's weights
        (["ens.yaml"], [3.0, 1.0], [3.0, 1.0], 2),  # --model-weights win over the file's
        (["ens.yaml", "m/a.onnx"], None, [1.0, 2.0, 1.0], 3),  # a plain model next to a file weighs 1
        (["m/a.onnx", "m/b.onnx"], None, None, 2),  # no ensemble file: as before
    ],
)
def test_expanding_model_words(members, monkeypatch, words, weights, expected_weights, expected_count):
    d, a, b = members
    write_ensemble(d / "ens.yaml", [a, b], [1, 2], 0.6)
    monkeypatch.chdir(d)
    ms = expand_models(words, weights)
    assert len(ms.paths) == expected_count and ms.weights == expected_weights
    assert ms.fusion_iou == (0.6 if "ens.yaml" in words else None)


def test_weights_counted_by_members(members, monkeypatch):
    d, a, b = members
    write_ensemble(d / "ens.yaml", [a, b], [1, 2])
    monkeypatch.chdir(d)
    with pytest.raises(UsageError, match="expected 2 weight\\(s\\), one per model \\(ensemble files counted"):
        expand_models(["ens.yaml"], [1.0])


def test_detect_with_an_ensemble_file_fuses_like_the_same_models_given_one_by_one(members, tmp_path):
    d, a, b = members
    ens = write_ensemble(d / "det.yaml", [a, b], [1, 2], 0.55)
    img = np.full((256, 256, 3), 128, np.uint8)
    img[40:48, 40:48] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "p.png"), img)
    common = ["--tile", "256", "--conf", "0.3", "--quiet"]
    assert (
        main(["detect", str(tmp_path / "p.png"), "--model", str(ens), "--out", str(tmp_path / "e"), *common])
        == 0
    )
    assert (
        main(
            [
                "detect",
                str(tmp_path / "p.png"),
                "--model",
                str(a),
                str(b),
                "--model-weights",
                "1",
                "2",
                "--out",
                str(tmp_path / "s"),
                *common,
            ]
        )
        == 0
    )
    one = json.loads((tmp_path / "e" / "detections.json").read_text())
    two = json.loads((tmp_path / "s" / "detections.json").read_text())
    assert one[0]["detections"] == two[0]["detections"] and len(one[0]["detections"]) == 1


def test_serve_parses_and_opens_an_ensemble_file(members):
    d, a, b = members
    ens = write_ensemble(d / "serve.yaml", [a, b], [1, 2], 0.5)
    from edgetile.runtime.options.files import resolve_options

    a_ = build_parser().parse_args(["serve", "--model", str(ens), "--watch", str(d), "--tile", "256"])
    opts = resolve_options(a_)
    with open_detector(opts) as det:
        assert len(det._models) == 2 and [m.weight for m in det._models] == [1.0, 2.0]
        assert det.config.fusion_iou == 0.5


def test_eval_takes_an_ensemble_file(members, tmp_path, capsys):
    d, a, b = members
    ens = write_ensemble(d / "eval.yaml", [a, b], [1, 2])
    img = np.full((256, 256, 3), 128, np.uint8)
    img[40:48, 40:48] = (0, 0, 255)
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "p.png"), img)
    coco = {
        "images": [{"id": 1, "file_name": "p.png", "width": 256, "height": 256}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [36, 36, 16, 16], "area": 256, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    code = main(
        ["eval", "--model", str(ens), "--data", str(tmp_path / "ann.json"), "--tile", "256"]
        + ["--out", str(tmp_path / "ev"), "--sweep", "--sweep-merge", "ios", "--quiet"]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["recall"] == 1.0
    best = (tmp_path / "ev" / "best_detect.yaml").read_text()
    assert str(ens) in best and "model-weights" not in best  # the weights live in the ensemble file


def test_export_engine_cli_accepts_the_file_and_refuses_without_tensorrt(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here; this checks the message where it is not")
    a = conv_blob_model(tmp_path / "a.onnx")
    b = conv_blob_model(tmp_path / "b.onnx")
    ens = write_ensemble(tmp_path / "ens.yaml", [a, b], [1, 2])
    assert main(["export", "engine", str(ens), "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed here" in err  # the file was accepted: the refusal is TensorRT's
    assert not list(tmp_path.glob("*.engine"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [missing.onnx]\n")
    assert main(["export", "engine", str(bad)]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_export_engine_builds_one_engine_per_member_and_an_ensemble_of_engines(tmp_path):
    from edgetile.export.engine import EngineRequest, build_ensemble_engines

    a = conv_blob_model(tmp_path / "a.onnx")
    b = conv_blob_model(tmp_path / "b.onnx")
    ens = write_ensemble(tmp_path / "ens.yaml", [a, b], [1, 2], 0.6, notes=["folds"])
    trt, device = StandInTensorRT("10.3.0"), FakeCudaDevice()
    out, results = build_ensemble_engines(
        ens, None, EngineRequest("fp16"), trt=trt, device=device, log=lambda m: None
    )
    assert out == tmp_path / "ens_fp16.yaml"
    assert [r.path.name for r in results] == ["ens_fp16_0_a.engine", "ens_fp16_1_b.engine"]
    assert len(trt.called("parse_from_file")) == 2
    engines = read_ensemble(out)
    assert [p.split("/")[-1] for p in engines.models] == ["ens_fp16_0_a.engine", "ens_fp16_1_b.engine"]
    assert (engines.weights, engines.fusion_iou) == ((1.0, 2.0), 0.6)
    assert all(r.sidecar.is_file() for r in results)


def test_export_engine_refuses_every_member_before_building_any(tmp_path):
    from edgetile.export.engine import BuildRefused, EngineRequest, build_ensemble_engines

    a = conv_blob_model(tmp_path / "a.onnx")
    b = conv_blob_model(tmp_path / "b.onnx")
    ens = write_ensemble(tmp_path / "ens.yaml", [a, b])
    trt = StandInTensorRT("11.4.0")  # INT8 only from a Q/DQ ONNX there
    with pytest.raises(BuildRefused, match="ensemble member 0 .*INT8 only from a Q/DQ ONNX"):
        build_ensemble_engines(
            ens, None, EngineRequest("int8", calib=tmp_path), trt=trt, device=FakeCudaDevice()
        )
    assert trt.calls == [] and not list(tmp_path.glob("*.engine"))
