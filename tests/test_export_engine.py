"""TensorRT engine building: the version dispatch (pure), the builder's call sequence, the sidecar.

TensorRT cannot be installed where these tests run (no GPU; the builder's wheels fetch from NVIDIA at
install time), so:

* The dispatch (``trt_api``, ``plan_build``) is tested as the pure functions it is, over a table of
  versions from JetPack 5.1 to 7.
* The builder's call sequence is tested against ``FakeTrt``: a STAND-IN FOR TENSORRT'S API SHAPE,
  not TensorRT. It exposes, per version, exactly the names that the real Python bindings of that
  version have (tests/data/tensorrt_api_names.json, read from the tensorrt.so of the 8.6.1, 10.3.0
  and 11.4.0 wheels), so code reaching for a name that a version lacks fails as it would there, and
  it records every call so the test can assert what was asked of TensorRT. It builds nothing.
* A real build, marked ``needs_trt``, runs where TensorRT and a GPU are present and is skipped here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_models import conv_blob_model, write_photos

from edgetile.export.engine import (
    BuildError,
    BuildRefused,
    EngineRequest,
    OnnxFacts,
    build_engine,
    onnx_facts,
    plan_build,
    resolve_batch,
    trt_api,
)
from edgetile.export.int8 import Int8Config, quantize_int8
from edgetile.export.onnx_fp16 import convert_to_fp16
from edgetile.runtime.cli import main
from edgetile.runtime.engine_meta import (
    EngineIncompatible,
    EngineMeta,
    check_engine_compatible,
    read_engine_sidecar,
    sidecar_path,
    write_engine_sidecar,
)

API_NAMES = json.loads((Path(__file__).parent / "data" / "tensorrt_api_names.json").read_text())["versions"]

# ---------------------------------------------------------------------------------------------------
# trt_api: what each TensorRT version offers.


@pytest.mark.parametrize(
    "version, explicit_batch, strongly_typed_only, precision_flags, implicit_int8, calib_dep",
    [
        ("8.5.2.2", True, False, True, True, False),  # JetPack 5.1
        ("8.6.2", True, False, True, True, False),  # JetPack 6.0
        ("10.3.0", False, False, True, True, True),  # JetPack 6.1 / 6.2
        ("10.13.0", False, False, True, True, True),  # JetPack 7.0 (Thor)
        ("10.16.1", False, False, True, True, True),  # JetPack 7.2
        ("11.4.1", False, True, False, False, True),  # JetPack 7.2 on AGX Orin / Thor
    ],
)
def test_trt_api_table(
    version, explicit_batch, strongly_typed_only, precision_flags, implicit_int8, calib_dep
):
    api = trt_api(version)
    assert (
        api.explicit_batch_flag,
        api.strongly_typed_only,
        api.precision_flags,
        api.implicit_int8,
        api.calibrators_deprecated,
    ) == (explicit_batch, strongly_typed_only, precision_flags, implicit_int8, calib_dep)
    assert api.precision_flags_deprecated == (api.version[:2] >= (10, 12))


@pytest.mark.parametrize(
    "version, message",
    [
        ("8.2.1", "older than 8.5"),  # JetPack 4.6: out of scope
        ("7.1.3", "older than 8.5"),
        ("12.0.0", "newer than any version"),
        ("ten", "expected something like 10.3.0"),
    ],
)
def test_trt_api_refuses(version, message):
    with pytest.raises((BuildRefused, ValueError), match=message):
        trt_api(version)


def test_the_api_table_agrees_with_the_real_bindings():
    """trt_api's claims against the names found in NVIDIA's own bindings of 8.6.1, 10.3.0 and 11.4.0."""
    for version, names in API_NAMES.items():
        api = trt_api(version)
        present, absent = set(names["present"]), set(names["absent"])
        assert ("EXPLICIT_BATCH" in present) == (api.explicit_batch_flag or version.startswith("10."))
        assert ("EXPLICIT_BATCH" in absent) == (api.version[0] >= 11)
        assert ("STRONGLY_TYPED" in present) == (api.version[0] >= 10)
        assert ("IInt8EntropyCalibrator2" in present) == api.implicit_int8
        assert ("int8_calibrator" in present) == api.implicit_int8
        assert ("set_calibration_profile" in present) == api.implicit_int8
        assert ("platform_has_fast_fp16" in absent) == api.strongly_typed_only
        # what the builder uses in every version
        for name in (
            "set_memory_pool_limit",
            "build_serialized_network",
            "parse_from_file",
            "get_error",
            "create_optimization_profile",
            "set_shape",
            "create_timing_cache",
            "set_timing_cache",
            "GPU_FALLBACK",
            "DLA_core",
            "default_device_type",
            "num_DLA_cores",
            "WORKSPACE",
            "num_io_tensors",
            "set_input_shape",
            "set_tensor_address",
            "execute_async_v3",
        ):
            assert name in present, (version, name)


# ---------------------------------------------------------------------------------------------------
# plan_build: which combinations are built how, and which are refused before building.

DYNAMIC = OnnxFacts("images", None, (64, 64), has_qdq=False, float16=False, names={0: "person"})
QDQ = OnnxFacts("images", None, (64, 64), has_qdq=True, float16=False, names={0: "person"})
FIXED4 = OnnxFacts("images", 4, (64, 64), has_qdq=False, float16=False, names={0: "person"})
CALIB = Path("photos")


@pytest.mark.parametrize(
    "version, facts, req, network_flags, builder_flags, convert, calibrator, source",
    [
        # fp16: builder flag up to 10.x, FP16-converted ONNX built strongly typed on 11
        ("8.5.2", DYNAMIC, EngineRequest("fp16"), ("EXPLICIT_BATCH",), ("FP16",), False, None, None),
        ("10.3.0", DYNAMIC, EngineRequest("fp16"), (), ("FP16",), False, None, None),
        ("11.4.1", DYNAMIC, EngineRequest("fp16"), ("STRONGLY_TYPED",), (), True, None, None),
        # an ONNX that is already FP16 is not converted again
        (
            "11.4.1",
            OnnxFacts("images", None, (64, 64), False, True, {}),
            EngineRequest("fp16"),
            ("STRONGLY_TYPED",),
            (),
            False,
            None,
            None,
        ),
        # fp32
        ("8.6.2", DYNAMIC, EngineRequest("fp32"), ("EXPLICIT_BATCH",), (), False, None, None),
        ("11.4.1", DYNAMIC, EngineRequest("fp32"), ("STRONGLY_TYPED",), (), False, None, None),
        # int8 from Q/DQ: INT8 (+FP16 for the float tail) up to 10.x, strongly typed on 11
        ("8.6.2", QDQ, EngineRequest("int8"), ("EXPLICIT_BATCH",), ("INT8", "FP16"), False, None, "qdq"),
        ("10.3.0", QDQ, EngineRequest("int8"), (), ("INT8", "FP16"), False, None, "qdq"),
        ("11.4.1", QDQ, EngineRequest("int8"), ("STRONGLY_TYPED",), (), False, None, "qdq"),
        # int8 by implicit calibration (TensorRT <= 10 only)
        (
            "8.5.2",
            DYNAMIC,
            EngineRequest("int8", calib=CALIB, calib_method="entropy"),
            ("EXPLICIT_BATCH",),
            ("INT8", "FP16"),
            False,
            "IInt8EntropyCalibrator2",
            "calibrator",
        ),
        (
            "10.3.0",
            DYNAMIC,
            EngineRequest("int8", calib=CALIB, calib_method="minmax"),
            (),
            ("INT8", "FP16"),
            False,
            "IInt8MinMaxCalibrator",
            "calibrator",
        ),
        # DLA: GPU fallback added
        (
            "10.3.0",
            DYNAMIC,
            EngineRequest("fp16", dla_core=0, batch_min=4, batch_opt=4, batch_max=4),
            (),
            ("FP16", "GPU_FALLBACK"),
            False,
            None,
            None,
        ),
        (
            "11.4.1",
            QDQ,
            EngineRequest("int8", dla_core=1, batch_min=2, batch_opt=2, batch_max=2),
            ("STRONGLY_TYPED",),
            ("GPU_FALLBACK",),
            False,
            None,
            "qdq",
        ),
    ],
)
def test_plan_build_table(version, facts, req, network_flags, builder_flags, convert, calibrator, source):
    plan = plan_build(version, req, facts)
    assert plan.network_flags == network_flags
    assert plan.builder_flags == builder_flags
    assert plan.convert_fp16 == convert
    assert plan.calibrator == calibrator
    assert plan.int8_source == source
    assert plan.workspace_bytes == req.workspace_mb * 1024 * 1024


@pytest.mark.parametrize(
    "version, facts, req, message",
    [
        ("11.4.1", DYNAMIC, EngineRequest("int8", calib=CALIB), "builds INT8 only from a Q/DQ ONNX"),
        ("11.0.0", DYNAMIC, EngineRequest("int8"), "builds INT8 only from a Q/DQ ONNX"),
        ("10.3.0", DYNAMIC, EngineRequest("int8"), "needs calibration: give --calib DIR"),
        ("10.3.0", QDQ, EngineRequest("int8", calib=CALIB), "--calib would be ignored"),
        ("8.6.2", QDQ, EngineRequest("fp16"), "holds Q/DQ nodes"),
        ("11.4.1", QDQ, EngineRequest("fp32"), "holds Q/DQ nodes"),
        ("10.3.0", DYNAMIC, EngineRequest("fp16", calib=CALIB), "--calib is for --precision int8"),
        (
            "10.3.0",
            DYNAMIC,
            EngineRequest("fp32", dla_core=0, batch_min=1, batch_opt=1, batch_max=1),
            "DLA runs FP16 and INT8 only",
        ),
        ("10.3.0", DYNAMIC, EngineRequest("fp16", dla_core=0), "DLA needs a fixed batch"),
        (
            "10.3.0",
            DYNAMIC,
            EngineRequest("fp16", batch_min=8, batch_opt=4, batch_max=16),
            "1 <= --batch-min",
        ),
        ("10.3.0", FIXED4, EngineRequest("fp16", batch_max=8), "fixed batch of 4"),
        ("8.2.1", DYNAMIC, EngineRequest("fp16"), "older than 8.5"),
    ],
)
def test_plan_build_refuses_before_building(version, facts, req, message):
    with pytest.raises(BuildRefused, match=message):
        plan_build(version, req, facts)


@pytest.mark.parametrize(
    "facts, req, expected",
    [
        (DYNAMIC, EngineRequest(), (1, 8, 8)),  # the runtime's default batch of 8
        (DYNAMIC, EngineRequest(batch_max=32), (1, 8, 32)),
        (DYNAMIC, EngineRequest(batch_opt=16), (1, 16, 16)),
        (DYNAMIC, EngineRequest(batch_max=4), (1, 4, 4)),
        (FIXED4, EngineRequest(), (4, 4, 4)),  # a fixed-batch ONNX fixes the range
    ],
)
def test_batch_range_defaults(facts, req, expected):
    assert resolve_batch(req, facts) == expected


# ---------------------------------------------------------------------------------------------------
# Reading the ONNX and converting it to FP16 (both run here for real).


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    fp32 = conv_blob_model(d / "blob.onnx")
    write_photos(d / "calib", 3, seed=4)
    qdq = quantize_int8(fp32, d / "calib", d / "blob_int8.onnx", Int8Config(calib_count=16, tile=128)).path
    return SimpleNamespace(dir=d, fp32=fp32, qdq=qdq, calib=d / "calib")


def test_onnx_facts(models):
    f = onnx_facts(models.fp32)
    assert (f.input_name, f.batch, f.input_hw, f.has_qdq, f.float16, f.names) == (
        "images",
        None,
        (64, 64),
        False,
        False,
        {0: "person"},
    )
    assert onnx_facts(models.qdq).has_qdq


def test_fp16_conversion_keeps_io_and_tail_float_and_matches_fp32(models, tmp_path):
    out = convert_to_fp16(models.fp32, tmp_path / "fp16.onnx")
    m = onnx.load(str(out))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    inits = {i.name: i.data_type for i in m.graph.initializer}
    nodes = {n.name: n for n in m.graph.node}
    assert (
        inits[nodes["cell_redness"].input[1]] == onnx.TensorProto.FLOAT16
    )  # the convolutions compute in FP16
    assert inits[nodes["score_conv"].input[1]] == onnx.TensorProto.FLOAT16
    assert inits[nodes["boxes"].input[1]] == onnx.TensorProto.FLOAT  # the box tail stays FP32 (the grid)
    assert nodes["score_sigmoid"].input[0].endswith("__fp32")  # cast back where FP16 meets the tail
    assert onnx_facts(out).float16
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    a = ort.InferenceSession(str(models.fp32)).run(None, {"images": x})[0]
    b = ort.InferenceSession(str(out)).run(None, {"images": x})[0]
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert np.abs(a[:, 4] - b[:, 4]).max() < 2e-2


# ---------------------------------------------------------------------------------------------------
# The builder's call sequence against a stand-in for TensorRT's API shape.


class _Enum:
    """Enum members as ints, holding only the names that a TensorRT version has."""

    def __init__(self, members: dict[str, int]):
        self.__dict__.update(members)


class FakeTrt:
    """STAND-IN FOR THE SHAPE OF TENSORRT'S PYTHON API of one version (8.6, 10.3 or 11.4); builds nothing.

    Names absent from that version's real bindings are absent here too; every call is recorded in
    ``calls``. The serialized "plan" is a few marker bytes.
    """

    def __init__(self, version: str, parser_errors=(), dla_cores=2, timing_cache_ok=True):
        self.__version__ = version
        self.calls: list[tuple] = []
        names = API_NAMES[".".join(version.split(".")[:3])]["present"]
        major = int(version.split(".")[0])
        flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 4}
        self.NetworkDefinitionCreationFlag = _Enum({k: v for k, v in flags.items() if k in names})
        builder_flags = {"GPU_FALLBACK": 3}
        if major <= 10:  # BuilderFlag.FP16 / INT8 are gone in 11 (strongly typed networks only)
            builder_flags.update(FP16=0, INT8=1)
        self.BuilderFlag = _Enum(builder_flags)
        self.MemoryPoolType = _Enum({"WORKSPACE": 0})
        self.DeviceType = _Enum({"GPU": 0, "DLA": 1})
        rec = self.calls
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                rec.append(("Logger", level))

        class Network:
            pass

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                rec.append(("profile.set_shape", name, mn, opt, mx))

        class TimingCache:
            def serialize(self):
                return b"timing-cache"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                rec.append(("set_flag", flag))

            def add_optimization_profile(self, p):
                rec.append(("add_optimization_profile",))

            def create_timing_cache(self, blob):
                rec.append(("create_timing_cache", bytes(blob)))
                return TimingCache()

            def set_timing_cache(self, cache, ignore_mismatch):
                rec.append(("set_timing_cache", ignore_mismatch))
                return timing_cache_ok

            def get_timing_cache(self):
                return TimingCache()

            def __setattr__(self, name, value):
                allowed = {"default_device_type", "DLA_core"}
                if "int8_calibrator" in names:
                    allowed.add("int8_calibrator")
                if name not in allowed:
                    raise AttributeError(f"TensorRT {version} IBuilderConfig has no attribute {name!r}")
                rec.append(("config." + name, value))
                object.__setattr__(self, name, value)

        if "set_calibration_profile" in names:

            def set_calibration_profile(self, p):
                rec.append(("set_calibration_profile",))

            Config.set_calibration_profile = set_calibration_profile

        class Builder:
            num_DLA_cores = dla_cores

            def __init__(self, logger):
                rec.append(("Builder",))

            def create_network(self, flags):
                rec.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.append(("build_serialized_network",))
                cal = getattr(config, "int8_calibrator", None)
                if cal is not None:  # TensorRT drives the calibrator during the build
                    cached = cal.read_calibration_cache()
                    if cached is None:
                        while cal.get_batch(["images"]) is not None:
                            fake.calib_batches += 1
                        cal.write_calibration_cache(b"calibration-table")
                return b"PLAN" + fake.__version__.encode()

        if major <= 10:
            Builder.platform_has_fast_fp16 = True

        class ParserError:
            def __init__(self, desc, node):
                self._desc, self._node = desc, node

            def desc(self):
                return self._desc

            def node(self):
                return self._node

        class OnnxParser:
            def __init__(self, network, logger):
                self.errors = [ParserError(d, n) for d, n in parser_errors]

            def parse_from_file(self, path):
                rec.append(("parse_from_file", path, onnx_facts(path).float16))
                return not self.errors

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, i):
                return self.errors[i]

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.calib_batches = 0
        if "IInt8EntropyCalibrator2" in names:

            class _Calibrator:
                def __init__(self):
                    pass

            self.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (_Calibrator,), {})
            self.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (_Calibrator,), {})

    def __getattr__(self, name):
        raise AttributeError(f"TensorRT {self.__version__} has no attribute {name!r}")

    def called(self, name):
        return [c for c in self.calls if c[0] == name]


class FakeCudaDevice:
    """Stand-in for the runtime's CudaDevice: one Orin GPU (sm 8.7); copies to the GPU, freed device
    buffers and context pushes are counted. It has only names the real classes have (checked below)."""

    name = "Orin"
    compute_capability = "8.7"

    def __init__(self):
        self.copies = 0
        self.freed = 0
        self.pushed = 0
        device = self

        class DeviceBuffer:
            ptr = 0xDEAD

            def upload(self, host, stream, offset=0):
                device.copies += 1

            def close(self):
                device.freed += 1

        class Stream:
            def synchronize(self):
                pass

            def close(self):
                pass

        class HostBuffer:
            def __init__(self, shape, dtype):
                self.array = np.zeros(shape, dtype)

            def close(self):
                self.array = None

        self._classes = DeviceBuffer, Stream, HostBuffer

    @contextlib.contextmanager
    def active(self):
        self.pushed += 1
        try:
            yield self
        finally:
            self.pushed -= 1

    def alloc(self, nbytes):
        return self._classes[0]()

    def stream(self):
        return self._classes[1]()

    def pinned(self, shape, dtype, mapped=False):
        return self._classes[2](shape, dtype)


def test_the_cuda_stand_in_uses_only_names_of_the_real_device():
    from edgetile.runtime.cuda import device as real

    fake = FakeCudaDevice()
    pairs = [(FakeCudaDevice, real.CudaDevice)] + list(
        zip(fake._classes, (real.DeviceBuffer, real.Stream, real.HostBuffer))
    )
    for stand_in, cls in pairs:
        names = {n for n in vars(stand_in) if not n.startswith("_")} - {
            "name",
            "compute_capability",
            "ptr",
            "array",
        }
        assert names <= {n for n in dir(cls)}, (cls.__name__, names - set(dir(cls)))
    assert isinstance(real.DeviceBuffer.ptr, property)


def _build(models, version, req, out, **fake_kwargs):
    trt, cuda = FakeTrt(version, **fake_kwargs), FakeCudaDevice()
    src = models.qdq if req.precision == "int8" and req.calib is None else models.fp32
    result = build_engine(src, out, req, trt=trt, device=cuda, log=lambda m: None)
    assert cuda.pushed == 0  # the context was popped again
    return trt, cuda, result, src


@pytest.mark.parametrize("version, flags", [("8.6.1", 1 << 0), ("10.3.0", 0), ("11.4.0", 1 << 4)])
def test_fp16_build_sequence(models, tmp_path, version, flags):
    trt, _, result, src = _build(
        models, version, EngineRequest("fp16", workspace_mb=512), tmp_path / "m.engine"
    )
    assert trt.called("create_network") == [("create_network", flags)]
    parsed = trt.called("parse_from_file")
    assert len(parsed) == 1
    if version.startswith("11"):  # strongly typed: a converted FP16 ONNX is parsed, no FP16 flag exists
        assert parsed[0][2] is True and parsed[0][1] != str(src)
        assert trt.called("set_flag") == []
    else:
        assert parsed[0] == ("parse_from_file", str(src), False)
        assert trt.called("set_flag") == [("set_flag", trt.BuilderFlag.FP16)]
    assert trt.called("set_memory_pool_limit") == [("set_memory_pool_limit", 0, 512 * 1024 * 1024)]
    assert trt.called("profile.set_shape") == [
        ("profile.set_shape", "images", (1, 3, 64, 64), (8, 3, 64, 64), (8, 3, 64, 64))
    ]
    names = [c[0] for c in trt.calls]
    assert (
        names.index("parse_from_file")
        < names.index("add_optimization_profile")
        < names.index("build_serialized_network")
    )
    assert result.path.read_bytes() == b"PLAN" + version.encode()  # a plain plan, no header
    meta = read_engine_sidecar(result.path)
    assert (meta.tensorrt_version, meta.gpu_name, meta.compute_capability, meta.precision) == (
        version,
        "Orin",
        "8.7",
        "fp16",
    )
    assert (meta.batch_min, meta.batch_opt, meta.batch_max, meta.input_hw) == (1, 8, 8, (64, 64))
    assert meta.names == {0: "person"} and meta.dla_core is None
    assert meta.source_sha256 == hashlib.sha256(Path(src).read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "version, flags, set_flags",
    [("8.6.1", 1 << 0, ["INT8", "FP16"]), ("10.3.0", 0, ["INT8", "FP16"]), ("11.4.0", 1 << 4, [])],
)
def test_int8_from_qdq_build_sequence(models, tmp_path, version, flags, set_flags):
    trt, _, result, src = _build(models, version, EngineRequest("int8"), tmp_path / "q.engine")
    assert trt.called("create_network") == [("create_network", flags)]
    assert trt.called("parse_from_file") == [("parse_from_file", str(src), False)]  # the Q/DQ ONNX as is
    assert [c[1] for c in trt.called("set_flag")] == [getattr(trt.BuilderFlag, f) for f in set_flags]
    assert not any(c[0] == "config.int8_calibrator" for c in trt.calls)
    meta = read_engine_sidecar(result.path)
    assert meta.precision == "int8" and meta.int8_source == "qdq"


def test_int8_calibrator_build_sequence_writes_the_cache(models, tmp_path):
    cache = tmp_path / "m.calib"
    req = EngineRequest(
        "int8", calib=models.calib, calib_count=20, calib_cache=cache, tile=128, batch_opt=4, batch_max=8
    )
    trt, cuda, result, _ = _build(models, "10.3.0", req, tmp_path / "c.engine")
    cal = [c[1] for c in trt.calls if c[0] == "config.int8_calibrator"]
    assert len(cal) == 1 and isinstance(cal[0], trt.IInt8MinMaxCalibrator)  # the default method
    assert cal[0].get_batch_size() == 4  # the profile's optimal batch
    assert trt.called("set_calibration_profile")
    assert trt.calib_batches == 5 and cuda.copies == 5  # 20 tiles in batches of 4
    assert cache.read_bytes() == b"calibration-table"
    assert cuda.freed == 1  # the device buffer was released
    assert read_engine_sidecar(result.path).int8_source == "calibrator"
    # a second build reuses the cache and calibrates nothing
    trt2, cuda2, _, _ = _build(models, "10.3.0", req, tmp_path / "c2.engine")
    assert trt2.calib_batches == 0 and cuda2.copies == 0


def test_dla_build_sequence(models, tmp_path):
    req = EngineRequest("fp16", dla_core=1, batch_min=4, batch_opt=4, batch_max=4)
    trt, _, result, _ = _build(models, "10.3.0", req, tmp_path / "d.engine")
    assert ("config.default_device_type", trt.DeviceType.DLA) in trt.calls
    assert ("config.DLA_core", 1) in trt.calls
    assert ("set_flag", trt.BuilderFlag.GPU_FALLBACK) in trt.calls
    assert read_engine_sidecar(result.path).dla_core == 1
    with pytest.raises(BuildRefused, match="has 0 DLA core"):
        _build(models, "10.3.0", req, tmp_path / "d0.engine", dla_cores=0)


def test_every_parser_error_in_one_message(models, tmp_path):
    errors = [("Unsupported operator Foo", 3), ("Invalid weights for Conv", 7), ("Shape mismatch", -1)]
    with pytest.raises(BuildError) as e:
        _build(models, "8.6.1", EngineRequest("fp16"), tmp_path / "e.engine", parser_errors=errors)
    msg = str(e.value)
    assert "3 error(s)" in msg and "\n" not in msg
    assert "1) node 3: Unsupported operator Foo" in msg and "2) node 7: Invalid weights" in msg
    assert "3) graph: Shape mismatch" in msg
    assert not (tmp_path / "e.engine").exists()


def test_timing_cache_loaded_and_saved(models, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    trt, _, _, _ = _build(models, "10.3.0", EngineRequest("fp16", timing_cache=cache), tmp_path / "t.engine")
    assert trt.called("create_timing_cache") == [("create_timing_cache", b"old")]
    assert cache.read_bytes() == b"timing-cache"
    with pytest.raises(BuildRefused, match="another TensorRT version or device"):
        _build(
            models,
            "10.3.0",
            EngineRequest("fp16", timing_cache=cache),
            tmp_path / "t2.engine",
            timing_cache_ok=False,
        )


def test_refusal_happens_before_tensorrt_is_touched(models, tmp_path):
    trt = FakeTrt("11.4.0")
    with pytest.raises(BuildRefused, match="INT8 only from a Q/DQ ONNX"):
        build_engine(
            models.fp32,
            tmp_path / "x.engine",
            EngineRequest("int8", calib=models.calib),
            trt=trt,
            device=FakeCudaDevice(),
        )
    assert trt.calls == []


def test_a_build_without_pycuda_is_refused_with_the_reason(models, tmp_path):
    if importlib.util.find_spec("pycuda") is not None:
        pytest.skip("pycuda is installed here: the GPU would be opened")
    trt = FakeTrt("10.3.0")
    with pytest.raises(BuildRefused, match="no usable CUDA GPU here .*pycuda is not installed"):
        build_engine(models.fp32, tmp_path / "x.engine", EngineRequest("fp16"), trt=trt, log=lambda m: None)
    assert not (tmp_path / "x.engine").exists()


def test_budget(models, tmp_path):
    from edgetile.export.artifacts import BudgetExceeded

    with pytest.raises(BudgetExceeded):
        _build(models, "10.3.0", EngineRequest("fp16", budget_mb=0.000001), tmp_path / "b.engine")
    assert (tmp_path / "b.engine").is_file()


def test_cli_engine_without_tensorrt_says_where_to_build(models, capsys):
    pytest.importorskip("edgetile.export.engine")
    if "tensorrt" in sys.modules or _has("tensorrt"):
        pytest.skip("TensorRT is installed here; this checks the message where it is not")
    assert main(["export", "engine", str(models.fp32), "--precision", "fp16"]) == 2
    assert "TensorRT is not installed here" in capsys.readouterr().err


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------------------------------
# The sidecar and the runtime's compatibility check.


def _meta(**kw):
    base = dict(
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="fp16",
        batch_min=1,
        batch_opt=8,
        batch_max=8,
        input_hw=(1024, 1024),
        names={0: "person"},
        source_sha256="a" * 64,
        source_onnx="person.onnx",
    )
    base.update(kw)
    return EngineMeta(**base)


def test_sidecar_round_trip(tmp_path):
    engine = tmp_path / "person_fp16.engine"
    engine.write_bytes(b"plan")
    path = write_engine_sidecar(engine, _meta(dla_core=0))
    assert path == sidecar_path(engine) == tmp_path / "person_fp16.engine.json"
    assert read_engine_sidecar(engine) == _meta(dla_core=0)
    d = json.loads(path.read_text())
    assert d["format"] == "edgetile-engine" and d["names"] == {"0": "person"}


@pytest.mark.parametrize(
    "here, error",
    [
        (("10.3.0", "Orin", "8.7"), None),
        (("10.3.0.26", "Orin", "8.7"), None),  # the build number does not matter
        (
            ("8.6.2", "Orin", "8.7"),
            "engine built for TensorRT 10.3.0 on GPU Orin .*this is TensorRT 8.6.2 on GPU Orin",
        ),
        (("10.3.1", "Orin", "8.7"), "this is TensorRT 10.3.1"),
        (("10.3.0", "Xavier", "7.2"), "on GPU Orin .*this is TensorRT 10.3.0 on GPU Xavier"),
    ],
)
def test_check_engine_compatible(here, error):
    if error is None:
        assert check_engine_compatible(_meta(), *here) == []
    else:
        with pytest.raises(EngineIncompatible, match=error):
            check_engine_compatible(_meta(), *here)


def test_same_compute_capability_other_gpu_is_a_warning():
    warnings = check_engine_compatible(_meta(gpu_name="NVIDIA Jetson AGX Orin"), "10.3.0", "Orin", "8.7")
    assert len(warnings) == 1 and "rebuild it here" in warnings[0]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "expected its sidecar"),
        ("{not json", "expected JSON"),
        (json.dumps({"format": "other"}), "expected an edgetile-engine sidecar"),
        (
            json.dumps({"format": "edgetile-engine", "format_version": 1, "tensorrt_version": "10.3"}),
            "missing field",
        ),
        (json.dumps({**json.loads(_meta().to_json()), "precision": "int4"}), "precision: expected one of"),
        (json.dumps({**json.loads(_meta().to_json()), "batch_min": 9}), "min <= opt <= max"),
    ],
)
def test_bad_sidecars_are_refused_with_a_reason(tmp_path, content, message):
    engine = tmp_path / "m.engine"
    if content is not None:
        sidecar_path(engine).write_text(content)
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        read_engine_sidecar(engine)


def test_engine_meta_is_stdlib_only():
    code = (
        "import sys, edgetile.runtime.engine_meta; "
        "heavy = [m for m in ('numpy', 'onnx', 'torch', 'tensorrt', 'pycuda') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # numpy comes with edgetile.runtime's own package import; nothing heavier may
    assert set(eval(out)) <= {"numpy"}


# ---------------------------------------------------------------------------------------------------
# A real build: only where TensorRT and a GPU are present.


@pytest.mark.needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_build_loads_back(models, tmp_path, precision):
    import tensorrt as trt

    src = models.qdq if precision == "int8" else models.fp32
    result = build_engine(
        src, tmp_path / f"m_{precision}.engine", EngineRequest(precision, batch_max=4), log=lambda m: None
    )
    meta = read_engine_sidecar(result.path)
    assert meta.tensorrt_version == trt.__version__
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(result.path.read_bytes())
    assert engine is not None
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert "images" in names and "output0" in names


def test_fp16_conversion_of_an_ultralytics_export(tmp_path):
    from export_models import make_tiny_pt

    from edgetile.export.int8 import head_tail_nodes
    from edgetile.export.onnx import OnnxExportConfig, export_onnx, verification_tiles

    fp32 = export_onnx(make_tiny_pt(tmp_path / "t.pt"), tmp_path / "t.onnx", OnnxExportConfig(imgsz=64))
    fp16 = convert_to_fp16(fp32, tmp_path / "t16.onnx")
    m = onnx.load(str(fp16))
    tail = set(head_tail_nodes(onnx.load(str(fp32))))
    dfl = next(n for n in m.graph.node if n.name in tail and n.op_type == "Conv")
    inits = {i.name: i.data_type for i in m.graph.initializer}
    assert inits[dfl.input[1]] == onnx.TensorProto.FLOAT  # the DFL projection stays FP32
    convs = [n for n in m.graph.node if n.op_type == "Conv" and n.name not in tail]
    assert all(inits[c.input[1]] == onnx.TensorProto.FLOAT16 for c in convs)
    tiles, _ = verification_tiles(64, None, count=4, tile=128)
    a = ort.InferenceSession(str(fp32)).run(None, {"images": tiles})[0]
    b = ort.InferenceSession(str(fp16)).run(None, {"images": tiles})[0]
    assert np.abs(a[:, :4] - b[:, :4]).max() < 0.5  # px
    assert np.abs(a[:, 4:] - b[:, 4:]).max() < 1e-2


def test_registering_the_export_command_imports_nothing_heavy():
    code = (
        "import sys; from edgetile.runtime.cli import build_parser; p = build_parser(); "
        "p.parse_args(['export', 'engine', 'm.onnx', '--precision', 'int8']); "
        "print([m for m in ('torch', 'ultralytics', 'onnx', 'onnxruntime', 'tensorrt', 'pycuda') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
