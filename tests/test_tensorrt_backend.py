"""The TensorRT backend: version dispatch, engine files, and its calls into TensorRT's name-based API.

TensorRT cannot be installed where this project's tests run (its wheels fetch libnvinfer from NVIDIA
at install time, and there is no GPU). So:

* Pure logic (version table, Ultralytics engine header, metadata) is tested against real inputs.
* Which TensorRT calls the backend makes is tested against ``StandInTensorRT`` (tests/trt_stand_in.py,
  shared with the builder's tests): NOT TensorRT, a stand-in with the API surface (names, argument
  order, return conventions) of TensorRT 8.6, 10 and 11's Python bindings, offering only the names
  tests/data/tensorrt_api_names.json records for each version and recording the calls. It computes
  nothing; it shows that the backend uses the name-based tensor API, never the binding-index API
  removed in 10, and no name a version lacks.
* The real thing runs in the ``needs_trt`` tests at the end: engines built from a tiny ONNX model by
  edgetile's own builder, compared with ONNX Runtime and with the CPU path. They are skipped here and
  run wherever TensorRT, pycuda and a GPU are present.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from trt_stand_in import API_NAMES, DataType, StandInTensorRT, api_names

from conftest import scene_with_people
from edgetile.runtime.backends import BackendUnavailable, create_backend
from edgetile.runtime.backends.tensorrt import (
    EngineExecution,
    TensorRTBackend,
    deserialize,
    engine_io,
    make_logger,
    metadata_from_sidecar,
    metadata_from_ultralytics,
    runtime_api,
    split_plan,
)
from edgetile.runtime.engine_meta import EngineMeta
from edgetile.runtime.model import model_info

# --- versions ----------------------------------------------------------------------------------------

API_TABLE = [
    # (version, implicit-batch engines can exist, activation-memory attribute)
    ("8.5.2.2", True),  # JetPack 5.1
    ("8.6.2.3", True),  # JetPack 6.0
    ("10.0.1", False),
    ("10.3.0.30", False),  # JetPack 6.1/6.2
    ("10.16.0", False),  # JetPack 7.2
    ("11.4.1", False),  # JetPack 7.2 on AGX Orin / Thor
]


@pytest.mark.parametrize("version,implicit", API_TABLE)
def test_runtime_api_per_version(version, implicit):
    api = runtime_api(version)
    assert api.implicit_batch_engines is implicit
    assert api.label == ".".join(version.split(".")[:3])


@pytest.mark.parametrize(
    "version,message",
    [
        ("8.4.3", "older than 8.5 .*JetPack 4.x is not supported"),  # no name-based tensor API
        ("8.2.1", "older than 8.5"),  # JetPack 4.6
        ("12.0.0", "newer than any version edgetile was written against"),
    ],
)
def test_runtime_api_refuses_unsupported_versions(version, message):
    with pytest.raises(BackendUnavailable, match=message):
        runtime_api(version)


def test_runtime_api_refuses_an_unreadable_version():
    with pytest.raises(ValueError, match="expected something like 10.3.0, found 'dev'"):
        runtime_api("dev")


# --- here, without TensorRT --------------------------------------------------------------------------


def test_available_says_why_not_here():
    ok, why = TensorRTBackend.available()
    assert not ok
    assert "TensorRT is not installed here" in why and "JetPack" in why


def test_auto_backend_for_an_engine_is_tensorrt_and_fails_with_the_reason(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(
        BackendUnavailable, match="backend 'tensorrt' is not usable here: TensorRT is not installed"
    ):
        create_backend("auto", engine)


def test_importing_the_backend_and_cuda_modules_loads_no_heavy_library():
    import subprocess
    import sys

    code = (
        "import sys, edgetile.runtime.backends.tensorrt, edgetile.runtime.cuda.device, "
        "edgetile.runtime.cuda.preprocess, edgetile.runtime.cuda.filter, edgetile.runtime.cuda.pipeline; "
        "print(sorted(m for m in ('tensorrt', 'pycuda', 'torch', 'onnx', 'ultralytics') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bench_gpu_exits_with_the_reason_where_it_cannot_run(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--engine", str(tmp_path / "m.engine")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert (
        "bench_gpu: needs a CUDA GPU with TensorRT and pycuda; cannot run here: TensorRT is not installed"
        in out.stderr
    )


def test_bench_gpu_floor_counts_the_bytes_of_twelve_1024_tiles():
    import importlib.util
    from pathlib import Path

    from edgetile.runtime.preprocess import tile_views
    from edgetile.runtime.tiling import plan_tiles

    spec = importlib.util.spec_from_file_location(
        "bench_gpu", Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    views = tile_views(plan_tiles(4000, 3000, 1024, 0.0), 1024, (1024, 1024), (4000, 3000))
    assert len(views) == 12  # a 4000x3000 photo into 12 tiles of 1024^2
    read, written = bench.preprocess_floor_bytes(views, (4000, 3000), (1024, 1024), 2)
    assert (read, written) == (12 * 1024 * 1024 * 3, 12 * 3 * 1024 * 1024 * 2)  # no resize: each pixel once
    views = tile_views(plan_tiles(4000, 3000, 1024, 0.0), 1024, (512, 512), (4000, 3000))
    read, _ = bench.preprocess_floor_bytes(views, (4000, 3000), (512, 512), 2)
    assert read == 12 * 1024 * 1024 * 3  # a 2x downscale samples every source pixel too


# --- engine files ------------------------------------------------------------------------------------


def _ultralytics_engine(meta: dict, plan: bytes) -> bytes:
    head = json.dumps(meta).encode()
    return len(head).to_bytes(4, "little") + head + plan


def test_split_plan_reads_ultralytics_engines():
    meta = {"names": {"0": "person", "1": "car"}, "imgsz": [640, 640], "stride": 32, "batch": 1}
    plan, found = split_plan(_ultralytics_engine(meta, b"ftrt-the-plan"))
    assert plan == b"ftrt-the-plan" and found == meta


@pytest.mark.parametrize(
    "data",
    [
        b"ftrt\x00\x01plain plan bytes",  # a plain plan
        (20).to_bytes(4, "little") + b"not json at all......" + b"rest",  # a length, but no JSON after it
        (10**9).to_bytes(4, "little") + b"{}",  # a length larger than the file
        b"",
    ],
)
def test_split_plan_leaves_plain_plans_alone(data):
    assert split_plan(data) == (data, None)


def test_metadata_from_the_sidecar_is_what_model_info_reads():
    meta = EngineMeta(
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="fp16",
        batch_min=1,
        batch_opt=8,
        batch_max=8,
        input_hw=(640, 512),
        names={0: "person", 1: "car"},
        source_sha256="ab" * 32,
        stride=32,
    )
    backend = types.SimpleNamespace(metadata=metadata_from_sidecar(meta), input_shape=(None, 3, 640, 512))
    info = model_info(backend, "model.engine")
    assert info.names == {0: "person", 1: "car"} and info.input_hw == (640, 512) and info.stride == 32
    assert info.batch is None


def test_metadata_from_ultralytics_json_is_what_model_info_reads():
    md = metadata_from_ultralytics(
        {"names": {"0": "person"}, "imgsz": [1024, 1024], "stride": 32, "task": "detect"}
    )
    info = model_info(types.SimpleNamespace(metadata=md, input_shape=(4, 3, -1, -1)), "yolo.engine")
    assert info.names == {0: "person"} and info.input_hw == (1024, 1024) and info.batch == 4


# --- the name-based API, against a stand-in ----------------------------------------------------------


@pytest.mark.parametrize("version", sorted(API_NAMES))
def test_the_runtime_api_table_agrees_with_the_real_bindings(version):
    """runtime_api's claims against the names recorded from NVIDIA's bindings of 8.6.1, 10.3.0 and 11.4.0."""
    api, engine = runtime_api(version), api_names(version, "ICudaEngine")
    assert ("has_implicit_batch_dimension" in engine) == (api.version[0] < 11)
    binding_api = {"num_bindings", "get_binding_index", "binding_is_input", "execute_async_v2"}
    assert (binding_api <= api_names(version)) == api.implicit_batch_engines
    assert not binding_api & api_names(version) or api.version[0] < 10


@pytest.mark.parametrize(
    "version, reach",
    [
        # the binding-index API is gone from 10
        ("10.3.0", lambda trt: trt.make_engine().num_bindings),
        ("11.4.1", lambda trt: trt.make_engine().get_binding_index),
        ("10.3.0", lambda trt: trt.make_engine().create_execution_context().execute_async_v2),
        # ICudaEngine lost these in 11 (the name lives on in other classes' strings)
        ("11.4.1", lambda trt: trt.make_engine().has_implicit_batch_dimension),
        # never recorded for any version: not a TensorRT name
        ("10.3.0", lambda trt: trt.make_engine().get_binding_shape_v9),
        # implicit INT8 calibration is gone from 11
        ("11.4.1", lambda trt: trt.IInt8EntropyCalibrator2),
    ],
)
def test_the_stand_in_refuses_what_a_version_lacks(version, reach):
    with pytest.raises(AttributeError, match=f"TensorRT {version} .*has no attribute"):
        reach(StandInTensorRT(version, DYNAMIC))


F, H = DataType.FLOAT, DataType.HALF
DYNAMIC = [
    ("images", "in", F, (-1, 3, 256, 256), ((1, 3, 256, 256), (8, 3, 256, 256), (8, 3, 256, 256))),
    ("output0", "out", F, (-1, 5, 1024), None),
]
FIXED_FP16 = [("images", "in", H, (4, 3, 320, 320), None), ("output0", "out", H, (4, 6, 1600), None)]
VERSIONS = ["8.6.2", "10.3.0", "11.4.1"]


@pytest.mark.parametrize("version", VERSIONS)
def test_engine_io_reads_tensors_by_name(version):
    trt = StandInTensorRT(version, DYNAMIC)
    io = engine_io(trt, trt.make_engine(), runtime_api(version))
    assert (io.input.name, io.input.dtype, io.input_hw, io.batch_min, io.batch_max) == (
        "images",
        np.float32,
        (256, 256),
        1,
        8,
    )
    assert io.dynamic_batch and [o.name for o in io.outputs] == ["output0"]
    assert ("get_tensor_profile_shape", "images", 0) in trt.calls
    trt = StandInTensorRT(version, FIXED_FP16)
    io = engine_io(trt, trt.make_engine(), runtime_api(version))
    assert (io.input.dtype, io.outputs[0].dtype, io.batch_min, io.batch_max) == (np.float16, np.float16, 4, 4)
    assert not io.dynamic_batch and not any(c[0] == "get_tensor_profile_shape" for c in trt.calls)


ENGINE_ERRORS = [
    # (tensors, message)
    (
        [DYNAMIC[0], ("mask", "in", F, (1, 1, 8, 8), None), DYNAMIC[1]],
        r"one image input, found 2: \['images', 'mask'\]",
    ),
    (
        [("images", "in", F, (1, 1, 256, 256), None), DYNAMIC[1]],
        r"expected shape \(B, 3, H, W\), found \(1, 1, 256, 256\)",
    ),
    (
        [DYNAMIC[0], ("ids", "out", DataType.INT32, (-1, 100), None)],
        "tensor 'ids': expected float32 or float16",
    ),
    ([DYNAMIC[0]], "at least one output"),
]


@pytest.mark.parametrize("tensors,message", ENGINE_ERRORS)
def test_engine_io_refuses_what_is_not_an_image_detector(tensors, message):
    trt = StandInTensorRT("10.3.0", tensors)
    with pytest.raises(ValueError, match=message):
        engine_io(trt, trt.make_engine(), runtime_api("10.3.0"), "m.engine")


def test_implicit_batch_engines_are_refused_on_8x():
    trt = StandInTensorRT("8.6.2", DYNAMIC, implicit_batch=True)
    with pytest.raises(ValueError, match="implicit batch dimension .* rebuild it"):
        engine_io(trt, trt.make_engine(), runtime_api("8.6.2"))


@pytest.mark.parametrize("version", VERSIONS)
def test_execution_binds_by_name_and_enqueues_v3(version):
    trt = StandInTensorRT(version, DYNAMIC)
    io = engine_io(trt, trt.make_engine(), runtime_api(version))
    ex = EngineExecution(trt.make_engine(), io, "m.engine")
    assert ex.set_batch(5) is True and ex.set_batch(5) is False  # a shape is set once, not per call
    assert ex.output_shapes == {"output0": (5, 5, 1024)}
    assert ex.nbytes("images") == 5 * 3 * 256 * 256 * 4 and ex.nbytes("output0") == 5 * 5 * 1024 * 4
    ex.enqueue(0x1000, {"output0": 0x2000}, 77)
    tail = trt.calls[-3:]
    assert tail == [
        ("set_tensor_address", "images", 0x1000),
        ("set_tensor_address", "output0", 0x2000),
        ("execute_async_v3", 77),
    ]
    assert ("set_input_shape", "images", (5, 3, 256, 256)) in trt.calls
    assert not any(c[0] in ("binding API", "execute_async_v2") for c in trt.calls)


def test_fixed_shape_engines_get_no_set_input_shape():
    trt = StandInTensorRT("10.3.0", FIXED_FP16)
    ex = EngineExecution(trt.make_engine(), engine_io(trt, trt.make_engine(), runtime_api("10.3.0")))
    ex.set_batch(4)
    assert not any(c[0] == "set_input_shape" for c in trt.calls)
    with pytest.raises(ValueError, match=r"accepts 4..4 views per call .* found 3"):
        ex.set_batch(3)


def test_batch_outside_the_profile_is_refused_with_the_range():
    trt = StandInTensorRT("10.3.0", DYNAMIC)
    ex = EngineExecution(
        trt.make_engine(), engine_io(trt, trt.make_engine(), runtime_api("10.3.0")), "m.engine"
    )
    with pytest.raises(
        ValueError, match=r"engine m.engine accepts 1..8 views per call .* found 9; pass --batch 8"
    ):
        ex.set_batch(9)


def test_refused_shape_and_failed_execution_raise():
    from edgetile.runtime.cuda.device import CudaError

    trt = StandInTensorRT("10.3.0", DYNAMIC, refuse_shapes=True)
    ex = EngineExecution(
        trt.make_engine(), engine_io(trt, trt.make_engine(), runtime_api("10.3.0")), "m.engine"
    )
    with pytest.raises(ValueError, match=r"TensorRT refused input shape \(2, 3, 256, 256\)"):
        ex.set_batch(2)
    trt = StandInTensorRT("10.3.0", DYNAMIC, execute_ok=False)
    log = ["ERROR: [executionContext.cpp::enqueueV3] Error Code 1: Cuda Runtime (out of memory)"]
    ex = EngineExecution(
        trt.make_engine(), engine_io(trt, trt.make_engine(), runtime_api("10.3.0")), "m.engine", log
    )
    ex.set_batch(2)
    with pytest.raises(
        CudaError, match=r"m.engine: TensorRT execute_async_v3 failed: ERROR: .*out of memory"
    ):
        ex.enqueue(1, {"output0": 2}, 3)
    with pytest.raises(RuntimeError, match="set_batch must be called"):
        EngineExecution(trt.make_engine(), ex.io).enqueue(1, {"output0": 2}, 3)


def test_logger_keeps_warnings_and_errors_only():
    trt = StandInTensorRT("10.3.0", DYNAMIC)
    log = make_logger(trt)
    sev = trt.ILogger.Severity
    log.log(sev.INFO, "loaded")
    log.log(sev.WARNING, "engine built on another device")
    log.log(sev.ERROR, "out of memory")
    assert log.lines == ["WARNING: engine built on another device", "ERROR: out of memory"]
    for i in range(100):
        log.log(sev.ERROR, f"e{i}")
    assert len(log.lines) == 50 and log.lines[-1] == "ERROR: e99"


def test_deserialize_sets_the_dla_core_first_and_reports_tensorrts_reason():
    trt = StandInTensorRT("8.6.2", DYNAMIC)
    runtime, engine = deserialize(trt, b"plan", make_logger(trt), 1, "m.engine")
    names = [c[0] for c in trt.calls]
    assert names.index("DLA_core") < names.index("deserialize_cuda_engine") and runtime.DLA_core == 1
    bad = StandInTensorRT("10.3.0", DYNAMIC, plan_ok=False)
    with pytest.raises(
        ValueError,
        match="m.engine: TensorRT 10.3.0 could not deserialize this engine: ERROR: "
        "Serialization assertion failed",
    ):
        deserialize(bad, b"plan", make_logger(bad), None, "m.engine")


# --- the real thing (GPU, TensorRT, pycuda) ----------------------------------------------------------

PEOPLE = [
    (490, 100, 530, 180),
    (370, 300, 400, 360),
    (600, 470, 640, 530),
    (1270, 480, 1300, 560),
    (100, 700, 160, 730),
    (1440, 940, 1500, 1000),
]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Engines of the red-blob model built here by edgetile's builder: fp32 dynamic 1..8, fp16, fixed 4."""
    from edgetile.export.engine import EngineRequest, build_engine
    from onnx_models import red_blob_model

    d = tmp_path_factory.mktemp("engines")
    dyn = red_blob_model(d / "blob.onnx", input_hw=(256, 256))
    fixed = red_blob_model(d / "blob4.onnx", input_hw=(256, 256), batch=4)
    quiet = lambda *_: None  # noqa: E731
    out = {
        "onnx": dyn,
        "fp32": build_engine(
            dyn, d / "fp32.engine", EngineRequest(precision="fp32", batch_max=8), log=quiet
        ).path,
        "fp16": build_engine(
            dyn, d / "fp16.engine", EngineRequest(precision="fp16", batch_max=8), log=quiet
        ).path,
        "fixed": build_engine(fixed, d / "fixed.engine", EngineRequest(precision="fp32"), log=quiet).path,
    }
    return out


@pytest.mark.needs_trt
@pytest.mark.parametrize("kind,atol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_infer_matches_onnxruntime(engines, kind, atol):
    from edgetile.runtime.backends.onnxruntime import OnnxRuntimeBackend

    rng = np.random.default_rng(0)
    with TensorRTBackend(engines[kind]) as trt_be, OnnxRuntimeBackend(engines["onnx"]) as ort_be:
        for b in (1, 3, 8):
            x = rng.random((b, 3, 256, 256)).astype(np.float32)
            want = ort_be.infer(x)[0]
            got = trt_be.infer(x.astype(trt_be.input_dtype))[0]
            assert got.shape == want.shape
            np.testing.assert_allclose(got.astype(np.float32), want, atol=atol)


@pytest.mark.needs_trt
@pytest.mark.parametrize("kind", ["fp32", "fp16", "fixed"])
@pytest.mark.parametrize("gpu_preprocess", [True, False])
def test_detector_on_tensorrt_finds_what_the_cpu_path_finds(engines, kind, gpu_preprocess):
    from edgetile.runtime.detector import DetectConfig, Detector

    image = scene_with_people(1500, 1000, PEOPLE, seed=3)
    cfg = DetectConfig(
        tile=512, overlap=0.25, batch=4 if kind == "fixed" else 5, tta=("flip",), full_frame=True
    )
    backend = TensorRTBackend(engines[kind], gpu_preprocess=gpu_preprocess)
    assert backend.has_gpu_path == gpu_preprocess
    with Detector(engines["onnx"], config=cfg) as cpu, Detector(backend, config=cfg) as gpu:
        want = cpu.detect(image)
        for _ in range(2):  # the second image reuses every buffer
            got = gpu.detect(image)
    assert len(want) >= len(PEOPLE)
    if kind != "fp16":
        assert len(got) == len(want)
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=1e-3)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
        return
    # FP16 inference moves scores a little: every confident CPU box has its GPU twin, counts agree closely.
    assert abs(len(got) - len(want)) <= max(2, len(want) // 20)
    for box in want.xyxy[want.scores > 0.6]:
        iw = np.clip(np.minimum(box[2], got.xyxy[:, 2]) - np.maximum(box[0], got.xyxy[:, 0]), 0, None)
        ih = np.clip(np.minimum(box[3], got.xyxy[:, 3]) - np.maximum(box[1], got.xyxy[:, 1]), 0, None)
        union = (
            (box[2] - box[0]) * (box[3] - box[1])
            + (got.xyxy[:, 2] - got.xyxy[:, 0]) * (got.xyxy[:, 3] - got.xyxy[:, 1])
            - iw * ih
        )
        assert (iw * ih / union).max() > 0.9, box


@pytest.mark.needs_trt
def test_engine_from_another_tensorrt_is_refused_before_loading(engines, tmp_path):
    import shutil

    from edgetile.runtime.engine_meta import EngineIncompatible, read_engine_sidecar, write_engine_sidecar

    copy = tmp_path / "old.engine"
    shutil.copy(engines["fp32"], copy)
    meta = read_engine_sidecar(engines["fp32"])
    write_engine_sidecar(copy, EngineMeta(**{**meta.__dict__, "tensorrt_version": "8.5.2"}))
    with pytest.raises(EngineIncompatible, match="engine built for TensorRT 8.5.2"):
        TensorRTBackend(copy)


@pytest.mark.needs_trt
def test_profile_stages_and_close(engines):
    from edgetile.runtime.preprocess import tile_views
    from edgetile.runtime.tiling import plan_tiles

    image = scene_with_people(1500, 1000, PEOPLE)
    views = tile_views(plan_tiles(1500, 1000, 512, 0.2), 512, (256, 256), (1500, 1000))
    be = TensorRTBackend(engines["fp32"])
    times = be.profile_stages(image, views, 8, 0.25)
    assert set(times) == {"upload", "preprocess", "infer", "filter", "download"}
    assert all(v > 0 for v in times.values()), times
    with pytest.raises(ValueError, match=r"1..8 views per call .* found 9"):
        next(be.infer_views(image, views, 9, 0.25))
    be.close()
    be.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        be.infer(np.zeros((1, 3, 256, 256), np.float32))
