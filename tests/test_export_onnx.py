"""ONNX export through Ultralytics, with edgetile's metadata, and its verification against PyTorch."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from export_models import make_tiny_pt, write_photos
from onnx import numpy_helper

from edgetile.export.artifacts import BudgetExceeded
from edgetile.export.onnx import OnnxExportConfig, export_onnx, verification_tiles, verify_onnx
from edgetile.runtime._version import __version__
from edgetile.runtime.backends import create_backend
from edgetile.runtime.cli import main
from edgetile.runtime.model import model_info
from edgetile.runtime.preprocess import preprocess_reference
from edgetile.runtime.tiling import plan_tiles

IMGSZ = 64


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory):
    return make_tiny_pt(tmp_path_factory.mktemp("pt") / "tiny.pt")


@pytest.fixture(scope="module")
def tiny_onnx(tiny_pt, tmp_path_factory):
    return export_onnx(tiny_pt, tmp_path_factory.mktemp("onnx") / "tiny.onnx", OnnxExportConfig(imgsz=IMGSZ))


def _input_dims(path):
    m = onnx.load(str(path))
    return [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]


@pytest.mark.slow
def test_dynamic_batch_fixed_size_and_metadata_the_runtime_reads(tiny_onnx):
    assert _input_dims(tiny_onnx) == ["batch", 3, IMGSZ, IMGSZ]
    m = onnx.load(str(tiny_onnx))
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["edgetile_version"] == __version__
    assert meta["names"] == "{0: 'person'}" and meta["stride"] == "32"
    # onnxslim folded the anchor grid that the dynamic export computes at run time.
    assert not any(n.op_type == "Shape" for n in m.graph.node)
    with create_backend("onnxruntime", tiny_onnx) as be:
        info = model_info(be, str(tiny_onnx))
        assert (info.names, info.input_hw, info.batch, info.stride) == (
            {0: "person"},
            (IMGSZ, IMGSZ),
            None,
            32,
        )
        out = be.infer(np.zeros((3, 3, IMGSZ, IMGSZ), np.float32))[0]
    assert out.shape == (3, 5, (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2)


@pytest.mark.slow
def test_verification_passes_on_tiles_of_user_photos(tiny_pt, tiny_onnx, tmp_path):
    write_photos(tmp_path / "photos", 2, seed=5, size=(300, 200))
    tiles, source = verification_tiles(IMGSZ, tmp_path / "photos", count=5, tile=128)
    assert tiles.shape == (5, 3, IMGSZ, IMGSZ) and "2 photo(s)" in source
    v = verify_onnx(tiny_pt, tiny_onnx, tiles, source)
    assert v.passed, v.summary()
    assert v.max_box_diff < 1e-2 and v.max_score_diff < 1e-4
    assert "PASS" in v.summary()


def test_verification_tiles_are_the_runtime_preprocessing_of_plan_tiles(tmp_path):
    ((path, _),) = write_photos(tmp_path / "p", 1, seed=6, size=(300, 200))
    tiles, _ = verification_tiles(IMGSZ, tmp_path / "p", count=100, tile=128, overlap=0.2)
    import cv2

    image = cv2.imread(str(path))
    windows = plan_tiles(300, 200, 128, 0.2)
    assert len(tiles) == len(windows)  # every tile when fewer than count
    for tile, win in zip(tiles, windows):
        ref = preprocess_reference(image, tuple(int(v) for v in win), (IMGSZ, IMGSZ), (IMGSZ, IMGSZ))
        np.testing.assert_allclose(tile, ref, atol=1e-6)


@pytest.mark.slow
def test_verification_catches_a_wrong_export(tiny_pt, tiny_onnx, tmp_path):
    broken = onnx.load(str(tiny_onnx))
    # The DFL's fixed projection 0..15, off by one bin: every box distance grows by one stride, the kind of
    # error a wrong head export makes (an untrained backbone barely reacts to corrupted weights).
    dfl = next(n for n in broken.graph.node if n.op_type == "Conv" and "dfl" in n.name)
    init = next(i for i in broken.graph.initializer if i.name == dfl.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1.0, init.name))
    path = tmp_path / "broken.onnx"
    onnx.save(broken, str(path))
    tiles, source = verification_tiles(IMGSZ, None, count=4, tile=128)
    v = verify_onnx(tiny_pt, path, tiles, source)
    assert not v.passed
    assert v.max_box_diff > v.box_tol
    assert "FAIL" in v.summary()


@pytest.mark.slow
def test_fixed_batch_export_runs_padded(tiny_pt, tmp_path):
    out = export_onnx(tiny_pt, tmp_path / "b2.onnx", OnnxExportConfig(imgsz=IMGSZ, batch=2))
    assert _input_dims(out) == [2, 3, IMGSZ, IMGSZ]
    tiles, source = verification_tiles(IMGSZ, None, count=3, tile=128)  # 3 tiles: the last batch is padded
    assert verify_onnx(tiny_pt, out, tiles, source).passed


@pytest.mark.slow
def test_budget_failure_keeps_the_file(tiny_pt, tmp_path):
    with pytest.raises(BudgetExceeded, match=r"over the weight budget of 1 MB"):
        export_onnx(tiny_pt, tmp_path / "big.onnx", OnnxExportConfig(imgsz=IMGSZ, budget_mb=1))
    assert (tmp_path / "big.onnx").stat().st_size > 1024 * 1024


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"imgsz": 100}, "multiple of 32"),  # not a multiple of the stride
        ({"batch": 0}, "positive integer"),
        ({"opset": 9}, "opset"),  # below what the head needs
    ],
)
def test_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OnnxExportConfig(**kwargs)


@pytest.mark.slow
def test_cli_default_out_beside_input_prints_path_and_never_touches_a_neighbour(tiny_pt, tmp_path, capsys):
    work = tmp_path / "w"
    work.mkdir()
    pt = work / "person.pt"
    shutil.copyfile(tiny_pt, pt)
    assert main(["export", "onnx", str(pt), "--imgsz", str(IMGSZ), "--tile", "128"]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1] == str(work / "person.onnx")
    assert "verify: PASS" in out.err
    assert (work / "person.onnx").is_file()
    # --out elsewhere: the file Ultralytics would write beside the .pt must stay as it was.
    (work / "person.onnx").write_bytes(b"user's own file")
    assert (
        main(
            [
                "export",
                "onnx",
                str(pt),
                "--imgsz",
                str(IMGSZ),
                "--out",
                str(tmp_path / "o" / "x.onnx"),
                "--no-verify",
            ]
        )
        == 0
    )
    assert (work / "person.onnx").read_bytes() == b"user's own file"
    assert (tmp_path / "o" / "x.onnx").is_file()


@pytest.mark.slow
def test_cli_exit_codes(tiny_pt, tmp_path, capsys):
    assert main(["export", "onnx", str(tmp_path / "missing.pt")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["export", "onnx", str(tiny_pt), "--imgsz", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    code = main(
        [
            "export",
            "onnx",
            str(tiny_pt),
            "--imgsz",
            str(IMGSZ),
            "--out",
            str(tmp_path / "b.onnx"),
            "--budget-mb",
            "1",
            "--no-verify",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and "over the weight budget" in captured.err
    assert captured.out.strip() == str(tmp_path / "b.onnx")
