"""ONNX -> TensorRT engine for JetPack 5.1 (TensorRT 8.5), 6.x (8.6, 10.3), 7.x (10.13+, 11).

Two halves:

* The dispatch, pure Python and testable anywhere: :func:`trt_api` says what a TensorRT version
  offers, :func:`onnx_facts` reads what the builder needs from the ONNX, and :func:`plan_build`
  turns a request into the exact flags and steps for that version, refusing every precision,
  calibration or DLA combination that version cannot build, with a message, before anything is
  built.
* :func:`build_engine`, the only code that touches TensorRT: builder -> network -> ONNX parser (every
  error gathered into one message) -> config (workspace, one optimization profile for the batch range,
  timing cache, precision, DLA with GPU fallback, calibrator) -> ``build_serialized_network`` -> a
  plain plan file plus its JSON sidecar (:mod:`edgetile.runtime.engine_meta`). The GPU, its context
  and the calibrator's memory come from the runtime's CUDA module (:mod:`edgetile.runtime.cuda.device`);
  the FP16 graph conversion that TensorRT 11 needs is in :mod:`edgetile.export.onnx_fp16`.

The TensorRT facts used here were checked against the Python bindings of TensorRT 8.6.1, 10.3.0 and
11.4.0 (see docs/export.md); 8.5 shares 8.6's API for everything used here.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetile.runtime._version import __version__
from edgetile.runtime.engine_meta import EngineMeta, supported_trt_version, write_engine_sidecar
from edgetile.runtime.files import sha256_file

from .artifacts import DEFAULT_BUDGET_MB, ExportError, check_budget, default_out
from .onnx_fp16 import convert_to_fp16

PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("entropy", "minmax")
#: ONNX metadata copied into the engine's sidecar for the runtime: a crop classifier's threshold and crops,
#: an appearance embedder's vector length, threshold and crops.
CARRIED_META_PREFIX = ("edgetile_verifier_", "edgetile_embedder_")
DEFAULT_WORKSPACE_MB = 1024


class BuildRefused(ExportError):
    """The request cannot be built with this TensorRT; refused before building."""


class BuildError(ExportError):
    """TensorRT failed while parsing or building."""


# ---------------------------------------------------------------------------------------------------
# What each TensorRT version offers.


@dataclass(frozen=True)
class TrtApi:
    """The API generation of one TensorRT version.

    Attributes:
        version: (major, minor, patch).
        explicit_batch_flag: Networks need ``1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` (8.x);
            from 10.0 explicit batch is the only mode and the flag is deprecated, in 11 it is gone.
        strongly_typed_only: Weak typing is removed (11): no precision builder flags, no calibrators;
            the network is created ``STRONGLY_TYPED`` and precision comes from the ONNX's own types.
        precision_flags: ``BuilderFlag.FP16`` / ``INT8`` exist (8.5 to 10.x; deprecated from 10.12).
        implicit_int8: INT8 calibrators (``IInt8EntropyCalibrator2``, ``IInt8MinMaxCalibrator``) and
            ``config.int8_calibrator`` exist (8.5 to 10.x; deprecated from 10.1).
        calibrators_deprecated: 10.1 and later: the calibrators still work but are on their way out.
        precision_flags_deprecated: 10.12 and later.
    """

    version: tuple[int, int, int]
    explicit_batch_flag: bool
    strongly_typed_only: bool
    precision_flags: bool
    implicit_int8: bool
    calibrators_deprecated: bool
    precision_flags_deprecated: bool

    @property
    def label(self) -> str:
        return ".".join(str(v) for v in self.version)


def trt_api(version: str) -> TrtApi:
    """What the TensorRT of this version offers to the builder.

    Raises:
        BuildRefused: Older than 8.5 (JetPack 4.x is out of scope) or a major version newer than 11.
    """
    v = supported_trt_version(
        version,
        "that edgetile's runtime uses",
        "its builder API may differ: build with trtexec from the Q/DQ or FP16 ONNX instead",
        BuildRefused,
    )
    major = v[0]
    return TrtApi(
        version=v,
        explicit_batch_flag=major < 10,
        strongly_typed_only=major >= 11,
        precision_flags=major <= 10,
        implicit_int8=major <= 10,
        calibrators_deprecated=v[:2] >= (10, 1),
        precision_flags_deprecated=v[:2] >= (10, 12),
    )


# ---------------------------------------------------------------------------------------------------
# What the builder needs to know about the ONNX, read without TensorRT.


@dataclass(frozen=True)
class OnnxFacts:
    """The parts of an ONNX that decide how it is built.

    Attributes:
        input_name: Name of the image input.
        batch: Fixed batch size, or None when the batch axis is dynamic.
        input_hw: Input height and width.
        has_qdq: The graph holds QuantizeLinear/DequantizeLinear nodes (explicit INT8).
        float16: The graph computes in FP16 (an FP16-converted ONNX).
        names: Class names from the Ultralytics metadata.
        stride: Largest stride (metadata; 32 when absent).
        extra: Metadata the engine's sidecar carries on to the runtime (a crop classifier's or an
            embedder's threshold and crop geometry, keys starting with "edgetile_verifier_" or
            "edgetile_embedder_").
    """

    input_name: str
    batch: int | None
    input_hw: tuple[int, int]
    has_qdq: bool
    float16: bool
    names: dict[int, str]
    stride: int = 32
    extra: dict[str, str] = field(default_factory=dict)


def onnx_facts(path: str | Path) -> OnnxFacts:
    """Read input shape, Q/DQ presence, float type and metadata from an ONNX file (no TensorRT needed)."""
    import ast

    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError
        raise ExportError(f"model {path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ExportError(
            f"model {path}: expected one image input, found {len(inputs)}: {[i.name for i in inputs]}"
        )
    inp = inputs[0]
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ExportError(
            f"model {path}: input {inp.name!r}: expected shape (B, 3, H, W), found {len(dims)} axes"
        )
    meta = {p.key: p.value for p in model.metadata_props}
    hw = [d.dim_value if d.HasField("dim_value") else None for d in dims[2:]]
    if None in hw:
        imgsz = ast.literal_eval(meta["imgsz"]) if "imgsz" in meta else None
        if imgsz is None:
            raise ExportError(
                f"model {path}: the input size is dynamic and the metadata has no 'imgsz'; "
                "export with 'edgetile export onnx'"
            )
        hw = [imgsz, imgsz] if isinstance(imgsz, int) else list(imgsz)
    batch = dims[0].dim_value if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    names: dict[int, str] = {}
    if "names" in meta:
        raw = ast.literal_eval(meta["names"])
        names = {int(k): str(v) for k, v in (raw.items() if isinstance(raw, dict) else enumerate(raw))}
    fp16 = onnx.TensorProto.FLOAT16
    float16 = (
        any(i.data_type == fp16 for i in model.graph.initializer)
        or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute)
            for n in model.graph.node
        )
        or inp.type.tensor_type.elem_type == fp16
    )
    return OnnxFacts(
        input_name=inp.name,
        batch=batch,
        input_hw=(int(hw[0]), int(hw[1])),
        has_qdq=any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node),
        float16=bool(float16),
        names=names,
        stride=int(meta.get("stride", 32)),
        extra={k: v for k, v in meta.items() if k.startswith(CARRIED_META_PREFIX)},
    )


# ---------------------------------------------------------------------------------------------------
# The request and the plan.


@dataclass(frozen=True)
class EngineRequest:
    """What the user asked for.

    Attributes:
        precision: "fp32", "fp16" or "int8".
        batch_min: Smallest batch the engine accepts (None: 1, or the ONNX's fixed batch).
        batch_opt: Batch TensorRT tunes its kernels for (None: 8, the runtime's default, or the fixed batch).
        batch_max: Largest batch the engine accepts (None: the larger of 8 and batch_opt, or the fixed batch).
        workspace_mb: Builder scratch memory limit in MiB; on Jetson the GPU shares the board's memory.
        dla_core: Run on this DLA core (GPU fallback for the layers it cannot run), or None for the GPU.
        timing_cache: File to load tactic timings from and save them to (builds of the same network
            on the same device become minutes faster).
        calib: Calibration photos for implicit INT8 (TensorRT <= 10, FP32 ONNX), or None.
        calib_method: "minmax" or "entropy" for implicit INT8.
        calib_count: Most calibration tiles.
        calib_cache: Calibration cache file (read when present, written after calibrating).
        tile: Tile side in photo pixels, as the runtime runs (calibration tiles are cut the same way).
        overlap: Tile overlap, as the runtime runs.
        budget_mb: Largest acceptable engine size in MiB.
    """

    precision: str = "fp16"
    batch_min: int | None = None
    batch_opt: int | None = None
    batch_max: int | None = None
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    dla_core: int | None = None
    timing_cache: Path | None = None
    calib: Path | None = None
    calib_method: str = "minmax"
    calib_count: int = 512
    calib_cache: Path | None = None
    tile: int = 1024
    overlap: float = 0.2
    budget_mb: float = DEFAULT_BUDGET_MB

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, found {self.precision!r}")
        if self.calib_method not in CALIB_METHODS:
            raise ValueError(
                f"calib_method: expected one of {', '.join(CALIB_METHODS)}, found {self.calib_method!r}"
            )
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise ValueError(f"workspace_mb: expected a positive size in MiB, found {self.workspace_mb}")
        if self.dla_core is not None and self.dla_core < 0:
            raise ValueError(f"dla_core: expected a core index >= 0, found {self.dla_core}")


@dataclass(frozen=True)
class BuildPlan:
    """Exactly what build_engine will do for one request on one TensorRT version.

    Attributes:
        api: The TensorRT API generation.
        network_flags: NetworkDefinitionCreationFlag members to set.
        builder_flags: BuilderFlag members to set.
        convert_fp16: Convert the ONNX to FP16 before parsing (strongly typed FP16 on TensorRT 11).
        calibrator: "IInt8EntropyCalibrator2" or "IInt8MinMaxCalibrator" for implicit INT8, else None.
        int8_source: "qdq" or "calibrator" for int8 engines, else None.
        shapes: (min, opt, max) input shapes of the one optimization profile.
        dla_core: DLA core, or None.
        workspace_bytes: Workspace memory-pool limit.
        notes: Things the user should know (deprecations, what stays in which precision).
    """

    api: TrtApi
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    convert_fp16: bool
    calibrator: str | None
    int8_source: str | None
    shapes: tuple[tuple[int, int, int, int], tuple[int, int, int, int], tuple[int, int, int, int]]
    dla_core: int | None
    workspace_bytes: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def resolve_batch(req: EngineRequest, facts: OnnxFacts) -> tuple[int, int, int]:
    """The batch range: what the user gave, the rest from the ONNX's fixed batch or the runtime's default 8."""
    if facts.batch is not None:
        fixed = facts.batch
        return (req.batch_min or fixed, req.batch_opt or fixed, req.batch_max or fixed)
    opt = req.batch_opt or max(req.batch_min or 1, min(8, req.batch_max or 8))
    return (req.batch_min or 1, opt, req.batch_max or max(8, opt))


def plan_build(trt_version: str, req: EngineRequest, facts: OnnxFacts) -> BuildPlan:  # noqa: C901 - one decision table of what each TensorRT version can build, each refusal beside its rule
    """Decide how to build, or refuse with the reason, before TensorRT does any work.

    Raises:
        BuildRefused: The request cannot be built by this TensorRT (one line naming what was asked,
            what this version allows, and what to do instead).
    """
    api = trt_api(trt_version)
    v = api.label
    b = resolve_batch(req, facts)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in b) or not 1 <= b[0] <= b[1] <= b[2]:
        raise BuildRefused(f"batch range: expected 1 <= --batch-min <= --batch-opt <= --batch-max, found {b}")
    if facts.batch is not None and b != (facts.batch,) * 3:
        raise BuildRefused(
            f"batch range: the ONNX has a fixed batch of {facts.batch}; expected --batch-min = --batch-opt = "
            f"--batch-max = {facts.batch}, found {b}; export with --batch dynamic for a range"
        )
    notes: list[str] = []
    network_flags: list[str] = ["EXPLICIT_BATCH"] if api.explicit_batch_flag else []
    builder_flags: list[str] = []
    convert_fp16 = False
    calibrator = None
    int8_source = None
    if req.precision != "int8" and req.calib is not None:
        raise BuildRefused(f"--calib is for --precision int8; found --precision {req.precision} with --calib")
    if facts.has_qdq and req.precision != "int8":
        raise BuildRefused(
            f"this ONNX holds Q/DQ nodes (an INT8 model); expected --precision int8 for it, found --precision "
            f"{req.precision}; build {req.precision} engines from the FP32 ONNX"
        )
    if req.precision == "int8":
        if facts.has_qdq:
            if req.calib is not None:
                raise BuildRefused(
                    "this ONNX holds Q/DQ nodes: its INT8 scales are already calibrated, and --calib would be "
                    "ignored; drop --calib, or give the FP32 ONNX to calibrate here"
                )
            int8_source = "qdq"
        elif api.strongly_typed_only:
            raise BuildRefused(
                f"TensorRT {v} builds INT8 only from a Q/DQ ONNX (implicit calibration was removed in 11); "
                "run 'edgetile export int8 MODEL.onnx --calib DIR' first and build its output"
            )
        elif req.calib is None:
            raise BuildRefused(
                "INT8 from an FP32 ONNX needs calibration: give --calib DIR (photos, cut into tiles as the runtime "
                "does) or build the Q/DQ ONNX from 'edgetile export int8'"
            )
        else:
            int8_source = "calibrator"
            calibrator = (
                "IInt8EntropyCalibrator2" if req.calib_method == "entropy" else "IInt8MinMaxCalibrator"
            )
            if b[1] != b[2] or b[0] != b[1]:
                notes.append(f"calibration runs at the optimal batch {b[1]}")
            if api.calibrators_deprecated:
                notes.append(
                    f"TensorRT {v} deprecates implicit INT8 calibration; 'edgetile export int8' "
                    "(explicit Q/DQ) is the path that also works on TensorRT 11"
                )
        if api.precision_flags:
            # INT8 kernels where TensorRT has them; FP16 for the layers left in float (the head's tail).
            builder_flags += ["INT8", "FP16"]
            if api.precision_flags_deprecated:
                notes.append(f"TensorRT {v} deprecates the INT8/FP16 builder flags; they still work here")
        else:
            network_flags.append("STRONGLY_TYPED")
            notes.append("strongly typed: layers outside the Q/DQ pairs run in the ONNX's FP32")
    elif req.precision == "fp16":
        if api.precision_flags:
            builder_flags.append("FP16")
            if api.precision_flags_deprecated:
                notes.append(f"TensorRT {v} deprecates BuilderFlag.FP16; it still works here")
        else:
            network_flags.append("STRONGLY_TYPED")
            convert_fp16 = not facts.float16
            notes.append(
                "strongly typed: the ONNX is converted to FP16 first (inputs, outputs and the box "
                "decoding stay FP32)"
                if convert_fp16
                else "strongly typed: the ONNX is already FP16"
            )
    else:  # fp32
        if api.strongly_typed_only:
            network_flags.append("STRONGLY_TYPED")
    if req.dla_core is not None:
        if req.precision == "fp32":
            raise BuildRefused(
                "DLA runs FP16 and INT8 only; expected --precision fp16 or int8 with --dla, found fp32"
            )
        if b[0] != b[2]:
            raise BuildRefused(
                f"DLA needs a fixed batch; expected --batch-min = --batch-opt = --batch-max with --dla, found {b}"
            )
        builder_flags.append("GPU_FALLBACK")
        notes.append(
            f"DLA core {req.dla_core}: layers the DLA cannot run fall back to the GPU; DLA saves power "
            "and can be slower than the GPU: measure both"
        )
    h, w = facts.input_hw
    shapes = tuple((n, 3, h, w) for n in b)
    return BuildPlan(
        api=api,
        network_flags=tuple(network_flags),
        builder_flags=tuple(builder_flags),
        convert_fp16=convert_fp16,
        calibrator=calibrator,
        int8_source=int8_source,
        shapes=shapes,
        dla_core=req.dla_core,
        workspace_bytes=int(req.workspace_mb) * 1024 * 1024,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------------
# The build, the only part that touches TensorRT.


@dataclass
class EngineResult:
    """What build_engine wrote.

    Attributes:
        path: The plan file.
        sidecar: Its JSON sidecar.
        meta: What the sidecar says.
        plan: How it was built.
        seconds: Build time.
        size_mb: Plan size.
    """

    path: Path
    sidecar: Path
    meta: EngineMeta
    plan: BuildPlan
    seconds: float
    size_mb: float


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BuildRefused(
            f"TensorRT is not installed here ({exc}); build engines on the Jetson that will run them "
            "(JetPack ships TensorRT: see docs/export.md)"
        ) from exc
    return tensorrt


def open_cuda_device():
    """GPU 0 through the runtime's CUDA module (its primary context, buffers and streams).

    Raises:
        BuildRefused: pycuda is missing, or no CUDA driver or GPU can be reached.
    """
    from edgetile.runtime.cuda.device import CudaDevice, CudaError, CudaUnavailable

    try:
        return CudaDevice(0)
    except (CudaUnavailable, CudaError) as exc:
        raise BuildRefused(
            f"no usable CUDA GPU here ({exc}); TensorRT engines are built on the device that runs them, "
            "and pycuda reads its name and compute capability for the sidecar and feeds the INT8 calibrator"
        ) from exc


def parser_errors(parser) -> list[str]:
    """Every error the ONNX parser recorded, one line each, with the node it concerns where known."""
    lines = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        desc = err.desc() if hasattr(err, "desc") else str(err)
        node = err.node() if hasattr(err, "node") else -1
        where = f"node {node}" if node is not None and node >= 0 else "graph"
        if hasattr(err, "node_name") and err.node_name():
            where += f" ({err.node_name()}"
            where += (
                f", {err.node_operator()})" if hasattr(err, "node_operator") and err.node_operator() else ")"
            )
        lines.append(f"{where}: {desc}")
    return lines


def make_calibrator(
    trt, device, method: str, tiles, batch: int, input_shape: tuple[int, int, int, int], cache: Path | None
):
    """An implicit-INT8 calibrator (TensorRT <= 10) feeding runtime tiles in batches of `batch`.

    Its host, device and stream memory come from ``device``; ``close()`` releases them.

    Args:
        trt: The tensorrt module.
        device: A runtime CudaDevice (edgetile.runtime.cuda.device) whose context is active while
            TensorRT calls the calibrator.
        method: "entropy" or "minmax".
        tiles: Iterable of (3, H, W) float32 tiles (a TilePlan).
        batch: Tiles per calibration batch (the profile's optimal batch).
        input_shape: (batch, 3, H, W).
        cache: Calibration cache file: read when present (calibration is then skipped), written after.
    """
    base = trt.IInt8EntropyCalibrator2 if method == "entropy" else trt.IInt8MinMaxCalibrator

    class Calibrator(base):
        def __init__(self) -> None:
            base.__init__(self)
            self.resources = []
            try:
                self.host = device.pinned(input_shape, np.float32)
                self.resources.append(self.host)
                self.buffer = device.alloc(self.host.array.nbytes)
                self.resources.append(self.buffer)
                self.stream = device.stream()
                self.resources.append(self.stream)
            except BaseException:
                self.close()
                raise
            self.iter = iter(tiles)
            self.batches = 0

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names):  # noqa: ARG002 - one input
            for i in range(batch):
                t = next(self.iter, None)
                if t is None:
                    return None  # an incomplete last batch is dropped rather than padded with fake pixels
                self.host.array[i] = t
            self.buffer.upload(self.host.array, self.stream)
            self.stream.synchronize()  # TensorRT reads the batch as soon as this returns
            self.batches += 1
            return [self.buffer.ptr]

        def read_calibration_cache(self):
            if cache is not None and Path(cache).is_file():
                return Path(cache).read_bytes()
            return None

        def write_calibration_cache(self, data) -> None:
            if cache is not None:
                Path(cache).write_bytes(bytes(data))

        def close(self) -> None:
            while self.resources:
                self.resources.pop().close()

    return Calibrator()


def build_engine(
    onnx_path: str | Path,
    out: str | Path | None = None,
    req: EngineRequest | None = None,
    *,
    trt=None,
    device=None,
    log=print,
) -> EngineResult:
    """Build a TensorRT engine and its sidecar.

    Args:
        onnx_path: FP32 ONNX, or the Q/DQ ONNX from ``edgetile export int8``.
        out: Plan file to write (default: beside the ONNX, ``NAME_{precision}.engine``).
        req: Precision, batch range, workspace, DLA, timing cache, calibration, budget.
        trt: The tensorrt module (default: imported here).
        device: The GPU, a runtime CudaDevice (default: GPU 0, opened here and closed after).
        log: Where progress lines go.

    Raises:
        BuildRefused: The request is not buildable with this TensorRT or on this device.
        BuildError: TensorRT's parser or builder failed.
        BudgetExceeded: The engine is larger than the budget (the file is kept).
    """
    req = req or EngineRequest()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"model: file not found: {onnx_path}")
    out = Path(out) if out is not None else default_out(onnx_path, f"_{req.precision}.engine")
    facts = onnx_facts(onnx_path)
    trt = trt if trt is not None else _import_tensorrt()
    plan = plan_build(trt.__version__, req, facts)  # refuse before touching the GPU
    own_device = device is None
    device = device if device is not None else open_cuda_device()
    try:
        return _build(onnx_path, out, req, facts, plan, trt, device, log)
    finally:
        if own_device:
            device.close()


def _build(onnx_path: Path, out: Path, req: EngineRequest, facts, plan, trt, device, log) -> EngineResult:
    """build_engine's work, with the GPU open: TensorRT runs in its primary context."""
    gpu_name, cc = device.name, device.compute_capability
    for note in plan.notes:
        log(f"note: {note}")
    t0 = time.perf_counter()
    calibrator = None
    try:
        with device.active(), tempfile.TemporaryDirectory(prefix="edgetile-engine-") as tmp:
            source = onnx_path
            if plan.convert_fp16:
                source = convert_to_fp16(onnx_path, Path(tmp) / "fp16.onnx")
                log(f"converted to FP16 for strongly typed TensorRT {plan.api.label}: {source.name}")
            logger = trt.Logger(trt.Logger.WARNING)
            builder = trt.Builder(logger)
            flags = 0
            for name in plan.network_flags:
                flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, logger)
            ok = parser.parse_from_file(str(source))
            errors = parser_errors(parser)
            if not ok or errors:
                listing = "; ".join(f"{i + 1}) {e}" for i, e in enumerate(errors)) or "no error recorded"
                raise BuildError(
                    f"TensorRT {plan.api.label}'s ONNX parser rejected {onnx_path.name}: "
                    f"{len(errors)} error(s): {listing}"
                )
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
            for name in plan.builder_flags:
                config.set_flag(getattr(trt.BuilderFlag, name))
            profile = builder.create_optimization_profile()
            profile.set_shape(facts.input_name, *plan.shapes)
            config.add_optimization_profile(profile)
            if plan.dla_core is not None:
                cores = int(builder.num_DLA_cores)
                if plan.dla_core >= cores:
                    raise BuildRefused(
                        f"--dla {plan.dla_core}: this device has {cores} DLA core(s)"
                        + (" (Orin Nano and Thor have none)" if cores == 0 else "")
                    )
                config.default_device_type = trt.DeviceType.DLA
                config.DLA_core = plan.dla_core
            cache = None
            if req.timing_cache is not None:
                blob = Path(req.timing_cache).read_bytes() if Path(req.timing_cache).is_file() else b""
                cache = config.create_timing_cache(blob)
                if not config.set_timing_cache(cache, False):
                    raise BuildRefused(
                        f"--timing-cache {req.timing_cache}: made by another TensorRT version or "
                        "device; delete it or give another file"
                    )
            if plan.calibrator is not None:
                from .tiles import plan_runtime_tiles

                tiles = plan_runtime_tiles(
                    [req.calib], req.calib_count, facts.input_hw, req.tile, req.overlap
                )
                calib_profile = builder.create_optimization_profile()
                opt = plan.shapes[1]
                calib_profile.set_shape(facts.input_name, opt, opt, opt)
                config.set_calibration_profile(calib_profile)
                calibrator = make_calibrator(
                    trt, device, req.calib_method, tiles, opt[0], opt, req.calib_cache
                )
                config.int8_calibrator = calibrator
                log(
                    f"calibration: up to {tiles.count} tile(s) of {len(tiles.photos)} photo(s), {req.calib_method}"
                )
            log(
                f"building {req.precision} engine with TensorRT {plan.api.label} on {gpu_name} (sm {cc}), batch "
                f"{plan.shapes[0][0]}..{plan.shapes[2][0]} (opt {plan.shapes[1][0]}): this takes minutes"
            )
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise BuildError(
                    f"TensorRT {plan.api.label} could not build {onnx_path.name}; its log above says why"
                )
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial")
            with open(partial, "wb") as f:
                f.write(serialized)
            partial.replace(out)
            if cache is not None:
                Path(req.timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    finally:
        if calibrator is not None:
            calibrator.close()
    meta = EngineMeta(
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu_name,
        compute_capability=cc,
        precision=req.precision,
        batch_min=plan.shapes[0][0],
        batch_opt=plan.shapes[1][0],
        batch_max=plan.shapes[2][0],
        input_hw=facts.input_hw,
        names=facts.names,
        source_sha256=sha256_file(onnx_path),
        source_onnx=onnx_path.name,
        int8_source=plan.int8_source,
        dla_core=plan.dla_core,
        input_name=facts.input_name,
        stride=facts.stride,
        edgetile_version=__version__,
        extra=dict(facts.extra),
    )
    sidecar = write_engine_sidecar(out, meta)
    seconds = time.perf_counter() - t0
    size_mb = check_budget(out, req.budget_mb)
    return EngineResult(out, sidecar, meta, plan, seconds, size_mb)


def build_ensemble_engines(
    ensemble: str | Path,
    out: str | Path | None = None,
    req: EngineRequest | None = None,
    *,
    trt=None,
    device=None,
    log=print,
) -> tuple[Path, list[EngineResult]]:
    """Build one engine per member of an ensemble file and write the ensemble file of the engines.

    Every member's request is checked against this TensorRT before the first build starts, so a
    combination that cannot be built is refused without building half an ensemble. The engines are
    written beside ``out`` as ``OUT_{index}_{member}.engine``; the new ensemble file keeps the
    members' weights and fusion settings.

    Args:
        ensemble: An ensemble file (``--model`` accepts it): YAML or JSON, members relative to it.
        out: The ensemble file of engines to write (default: ``ENSEMBLE_{precision}.yaml`` beside it).
        req: As :func:`build_engine`; applied to every member, each with its own calibration cache.
        trt: The tensorrt module (default: imported here).
        device: The GPU (default: GPU 0, opened here once for all members and closed after).
        log: Where progress lines go.

    Returns:
        The ensemble file written and each member's EngineResult.

    Raises:
        ValueError: The ensemble file is unreadable or names a missing member.
        BuildRefused, BuildError, BudgetExceeded: As :func:`build_engine`, for the member named.
    """
    from dataclasses import replace

    from edgetile.runtime.options.detect import ENSEMBLE_SUFFIXES, read_ensemble, write_ensemble

    req = req or EngineRequest()
    ens = read_ensemble(ensemble)
    src = Path(ensemble)
    out = Path(out) if out is not None else src.with_name(f"{src.stem}_{req.precision}{src.suffix}")
    if out.suffix.lower() not in ENSEMBLE_SUFFIXES:
        raise ValueError(f"out: expected an ensemble file ({', '.join(ENSEMBLE_SUFFIXES)}), found {out.name}")
    trt = trt if trt is not None else _import_tensorrt()
    jobs = []
    for i, member in enumerate(ens.models):
        engine = out.with_name(f"{out.stem}_{i}_{Path(member).stem}.engine")
        member_req = req
        if req.calib is not None or req.calib_cache is not None:
            # Each member calibrates on its own activations: one shared cache would mix them.
            member_req = replace(req, calib_cache=engine.with_name(engine.name + ".calib"))
        facts = onnx_facts(Path(member))
        try:
            plan = plan_build(trt.__version__, member_req, facts)
        except BuildRefused as exc:
            raise BuildRefused(f"ensemble member {i} ({member}): {exc}") from exc
        jobs.append((Path(member), engine, member_req, facts, plan))
    own_device = device is None
    device = device if device is not None else open_cuda_device()
    results = []
    try:
        for member, engine, member_req, facts, plan in jobs:
            log(f"ensemble member {len(results) + 1}/{len(jobs)}: {member} -> {engine}")
            results.append(_build(member, engine, member_req, facts, plan, trt, device, log))
    finally:
        if own_device:
            device.close()
    notes = [f"engines built from {src} ({req.precision}, TensorRT {trt.__version__})", *ens.notes]
    write_ensemble(out, [r.path for r in results], ens.weights, ens.fusion_iou, notes)
    return out, results
