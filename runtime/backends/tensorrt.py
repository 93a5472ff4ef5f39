"""TensorRT backend: engines run on pycuda's primary context through the name-based tensor API.

One code path covers TensorRT 8.5 (JetPack 5.1) through 11: tensors are found by name
(``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_dtype``, ``get_tensor_shape``,
``get_tensor_profile_shape``), shapes set with ``set_input_shape``, device buffers bound with
``set_tensor_address`` and work queued with ``execute_async_v3`` on the backend's own stream. The binding-
index API (``num_bindings``, ``execute_async_v2``), removed in TensorRT 10, is never used.
:func:`runtime_api` holds the little that differs between versions.

Before TensorRT sees an engine, its JSON sidecar (:mod:`edgetile.runtime.engine_meta`) is checked
against the TensorRT version and GPU here, so a plan built elsewhere is refused with a sentence instead
of a deserialization failure. Ultralytics ``.engine`` files (4 bytes of length and JSON metadata before
the plan) are read too; they carry no build facts, so only TensorRT itself can refuse them.

Two ways to run:

* :meth:`TensorRTBackend.infer` - the Backend contract: a host batch in, host outputs out (pinned
  staging, asynchronous copies, one synchronization).
* :meth:`TensorRTBackend.infer_views` - the GPU path, which the Detector takes while ``has_gpu_path``
  is True: the frame is placed once (zero-copy in mapped memory on Jetson), ``preprocess.cu`` writes
  each batch of views straight into the engine's input, ``filter.cu`` keeps the candidates above the
  confidence threshold, and only those cross to the host. Batches run two deep on two input buffers (preprocessing of batch
  k + 1 overlaps inference of batch k; decoding on the host overlaps the GPU).

Heavy imports (tensorrt, pycuda) happen inside functions; importing this module costs nothing.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine_meta import EngineMeta, check_engine_compatible, read_engine_sidecar, supported_trt_version
from ..preprocess import Views
from . import Backend, BackendUnavailable

if TYPE_CHECKING:
    from ..cuda.device import CudaDevice, HostBuffer
    from ..cuda.filter import CandidateBuffers, GpuFilter
    from ..cuda.preprocess import FrameUpload, GpuPreprocessor

MODULES = ("tensorrt", "tensorrt_lean")  # the full runtime, or the lean runtime wheel
MAX_LOG_LINES = 50


# ---------------------------------------------------------------------------------------------------
# Versions.


@dataclass(frozen=True)
class TrtRuntimeApi:
    """What one TensorRT version's runtime offers this backend.

    Attributes:
        version: (major, minor, patch).
        module: The Python module it came from ("tensorrt" or "tensorrt_lean").
        implicit_batch_engines: 8.x still deserializes plans built with an implicit batch dimension,
            which the name-based API cannot run: they are refused (``has_implicit_batch_dimension``).
            10.x keeps the attribute, deprecated and always False; 11 removed it.
    """

    version: tuple[int, int, int]
    module: str
    implicit_batch_engines: bool

    @property
    def label(self) -> str:
        return ".".join(str(v) for v in self.version)


def runtime_api(version: str, module: str = "tensorrt") -> TrtRuntimeApi:
    """The runtime API generation of a TensorRT version.

    Raises:
        BackendUnavailable: Older than 8.5 (no name-based tensor API; JetPack 4.x is out of scope) or a
            major version newer than 11 (not written against).
    """
    v = supported_trt_version(
        version,
        "this backend uses",
        "run the ONNX model with --backend onnxruntime, or use a supported TensorRT",
        BackendUnavailable,
    )
    return TrtRuntimeApi(
        version=v,
        module=module,
        implicit_batch_engines=v[0] < 10,
    )


def import_tensorrt() -> tuple[Any, TrtRuntimeApi]:
    """The TensorRT module (full, else lean runtime) and its API generation, or BackendUnavailable."""
    import importlib

    errors = []
    for name in MODULES:
        try:
            trt = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        return trt, runtime_api(str(getattr(trt, "__version__", "0.0")), name)
    raise BackendUnavailable(
        "TensorRT is not installed here (" + "; ".join(errors) + "); on Jetson it comes with JetPack "
        "(python3-libnvinfer), elsewhere from NVIDIA's wheels (pip install tensorrt)"
    )


# ---------------------------------------------------------------------------------------------------
# Engine files.


def split_plan(data: bytes) -> tuple[bytes, dict | None]:
    """A plain plan, or an Ultralytics engine: 4-byte little-endian length, that much JSON, then the plan.

    Returns:
        (the plan, the Ultralytics metadata or None).
    """
    if len(data) > 4:
        n = int.from_bytes(data[:4], "little")
        if 2 <= n <= min(len(data) - 4, 1 << 20) and data[4:5] == b"{":
            try:
                meta = json.loads(data[4 : 4 + n].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                meta = None
            if isinstance(meta, dict):
                return data[4 + n :], meta
    return data, None


def metadata_from_sidecar(meta: EngineMeta) -> dict[str, str]:
    """Backend.metadata (the keys model_info reads, as Python literals) from an engine's sidecar."""
    return {
        "names": repr({int(k): str(v) for k, v in meta.names.items()}),
        "imgsz": repr(list(meta.input_hw)),
        "stride": str(int(meta.stride)),
        "precision": meta.precision,
        "tensorrt_version": meta.tensorrt_version,
        "gpu": f"{meta.gpu_name} ({meta.compute_capability})",
        "source_onnx": meta.source_onnx,
        # What the ONNX carried for the runtime beyond these (a crop classifier's threshold and crops).
        **{str(k): str(v) for k, v in meta.extra.items()},
    }


def metadata_from_ultralytics(d: dict) -> dict[str, str]:
    """Backend.metadata from the JSON Ultralytics writes before its plans."""
    out: dict[str, str] = {}
    names = d.get("names")
    if isinstance(names, dict):
        out["names"] = repr({int(k): str(v) for k, v in names.items()})
    elif isinstance(names, list):
        out["names"] = repr(dict(enumerate(str(v) for v in names)))
    imgsz = d.get("imgsz")
    if isinstance(imgsz, int):
        out["imgsz"] = repr([imgsz, imgsz])
    elif isinstance(imgsz, list) and len(imgsz) == 2:
        out["imgsz"] = repr([int(v) for v in imgsz])
    if "stride" in d:
        out["stride"] = str(int(d["stride"]))
    for k, v in d.items():
        out.setdefault(str(k), str(v))
    return out


# ---------------------------------------------------------------------------------------------------
# The engine through the name-based tensor API (pure calls on the tensorrt objects: testable with a
# stand-in module where TensorRT cannot be installed).


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor.

    Attributes:
        name: Tensor name.
        dtype: NumPy type of its buffer.
        shape: Engine shape, -1 where dynamic.
        profile: (min, opt, max) shapes of optimization profile 0 for a dynamic input, else None.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None


@dataclass(frozen=True)
class EngineIO:
    """The engine's contract: one image input (B, 3, H, W), float outputs.

    Attributes:
        input: The image input.
        outputs: The outputs, in engine order.
        batch_min: Smallest batch the engine accepts.
        batch_max: Largest batch.
        input_hw: Input height and width.
    """

    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    batch_min: int
    batch_max: int
    input_hw: tuple[int, int]

    @property
    def dynamic_batch(self) -> bool:
        return self.input.shape[0] == -1


def _dtypes(trt: Any) -> dict[Any, np.dtype]:
    return {trt.DataType.FLOAT: np.dtype(np.float32), trt.DataType.HALF: np.dtype(np.float16)}


def engine_io(trt: Any, engine: Any, api: TrtRuntimeApi, where: str = "engine") -> EngineIO:
    """Read the engine's tensors by name and check they fit an image detector.

    Raises:
        ValueError: Not one 4-D, 3-channel float input; non-float outputs; an implicit-batch plan (8.x).
    """
    if api.implicit_batch_engines and bool(getattr(engine, "has_implicit_batch_dimension", False)):
        raise ValueError(
            f"{where}: expected an explicit-batch engine, found one built with an implicit batch "
            "dimension (TensorRT 7 style); rebuild it with 'edgetile export engine'"
        )
    types = _dtypes(trt)
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    for i in range(int(engine.num_io_tensors)):
        name = engine.get_tensor_name(i)
        dt = engine.get_tensor_dtype(name)
        if dt not in types:
            raise ValueError(f"{where}: tensor {name!r}: expected float32 or float16, found {dt}")
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            profile = None
            if -1 in shape:
                lo, opt, hi = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0))
                profile = (lo, opt, hi)
            inputs.append(TensorSpec(name, types[dt], shape, profile))
        else:
            outputs.append(TensorSpec(name, types[dt], shape))
    if len(inputs) != 1:
        raise ValueError(
            f"{where}: expected one image input, found {len(inputs)}: {[t.name for t in inputs]}"
        )
    if not outputs:
        raise ValueError(f"{where}: expected at least one output, found none")
    inp = inputs[0]
    if len(inp.shape) != 4 or inp.shape[1] != 3:
        raise ValueError(f"{where}: input {inp.name!r}: expected shape (B, 3, H, W), found {inp.shape}")
    if inp.profile is None:
        bmin = bmax = inp.shape[0]
        hw = (inp.shape[2], inp.shape[3])
    else:
        lo, opt, hi = inp.profile
        bmin, bmax = (lo[0], hi[0]) if inp.shape[0] == -1 else (inp.shape[0], inp.shape[0])
        hw = (inp.shape[2] if inp.shape[2] > 0 else opt[2], inp.shape[3] if inp.shape[3] > 0 else opt[3])
    if bmin < 1 or bmax < bmin or min(hw) < 1:
        raise ValueError(
            f"{where}: input {inp.name!r}: expected a batch range and size, found shape {inp.shape} "
            f"with profile {inp.profile}"
        )
    return EngineIO(inp, tuple(outputs), int(bmin), int(bmax), (int(hw[0]), int(hw[1])))


class EngineExecution:
    """One execution context, its input shape, and its tensors bound by name for each enqueue.

    Args:
        engine: The deserialized ICudaEngine.
        io: Its contract (engine_io).
        where: Engine path, for messages.
        log: The lines of the TensorRT logger (make_logger), quoted when an enqueue fails.
    """

    def __init__(
        self, engine: Any, io: EngineIO, where: str = "engine", log: list[str] | None = None
    ) -> None:
        self.io = io
        self.where = where
        self._log = log if log is not None else []  # the TensorRT logger's lines, quoted in errors
        self.context = engine.create_execution_context()
        if self.context is None:
            raise MemoryError(f"{where}: TensorRT could not create an execution context (out of GPU memory?)")
        self.batch: int | None = None
        self.output_shapes: dict[str, tuple[int, ...]] = {}

    def set_batch(self, batch: int) -> bool:
        """Set the input shape for a batch size; returns whether it changed (the caller must then have no
        work of this context in flight)."""
        io = self.io
        if isinstance(batch, bool) or not io.batch_min <= int(batch) <= io.batch_max:
            raise ValueError(
                f"batch: engine {self.where} accepts {io.batch_min}..{io.batch_max} views per call "
                f"(its optimization profile), found {batch}; pass --batch {io.batch_max} or fewer"
            )
        batch = int(batch)
        if batch == self.batch:
            return False
        shape = (batch, 3, io.input_hw[0], io.input_hw[1])
        if -1 in io.input.shape and not self.context.set_input_shape(io.input.name, shape):
            raise ValueError(f"{self.where}: TensorRT refused input shape {shape} for {io.input.name!r}")
        shapes = {}
        for o in io.outputs:
            s = tuple(int(d) for d in self.context.get_tensor_shape(o.name))
            if any(d < 0 for d in s):
                raise ValueError(
                    f"{self.where}: output {o.name!r} has no static shape for input {shape}: {s}; "
                    "data-dependent outputs are not supported"
                )
            shapes[o.name] = s
        self.output_shapes = shapes
        self.batch = batch
        return True

    def enqueue(self, input_ptr: int, output_ptrs: dict[str, int], stream_handle: int) -> None:
        """Bind every tensor to its buffer by name and queue one inference on the stream."""
        from ..cuda.device import CudaError

        if self.batch is None:
            raise RuntimeError("set_batch must be called before enqueue")
        bindings = [(self.io.input.name, int(input_ptr))] + [
            (o.name, int(output_ptrs[o.name])) for o in self.io.outputs
        ]
        for name, ptr in bindings:
            if not self.context.set_tensor_address(name, ptr):
                raise CudaError(f"{self.where}: TensorRT set_tensor_address({name!r}) failed")
        if not self.context.execute_async_v3(int(stream_handle)):
            said = " | ".join(self._log[-3:]) or "TensorRT logged nothing"
            raise CudaError(f"{self.where}: TensorRT execute_async_v3 failed: {said}")

    def nbytes(self, name: str, batch: int | None = None) -> int:
        """Bytes of a tensor at the current batch (or at batch for the input)."""
        if name == self.io.input.name:
            b = self.batch if batch is None else batch
            if b is None:
                raise RuntimeError("set_batch must be called before nbytes, or a batch given")
            return int(b) * 3 * self.io.input_hw[0] * self.io.input_hw[1] * self.io.input.dtype.itemsize
        spec = next(o for o in self.io.outputs if o.name == name)
        return int(np.prod(self.output_shapes[name])) * spec.dtype.itemsize

    def close(self) -> None:
        self.context = None


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps the last warnings and errors, for the messages of our exceptions."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.lines.append(f"{getattr(severity, 'name', severity)}: {msg}")
                del self.lines[:-MAX_LOG_LINES]

    return CollectingLogger()


def deserialize(trt: Any, plan: bytes, logger: Any, dla_core: int | None, where: str) -> tuple[Any, Any]:
    """(runtime, engine) from a plan; DLA engines get their core before deserializing."""
    runtime = trt.Runtime(logger)
    if runtime is None:
        raise BackendUnavailable(f"TensorRT could not create a runtime: {' | '.join(logger.lines[-3:])}")
    if dla_core is not None:
        runtime.DLA_core = int(dla_core)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        log = " | ".join(logger.lines[-3:]) or "no message"
        raise ValueError(f"{where}: TensorRT {trt.__version__} could not deserialize this engine: {log}")
    return runtime, engine


# ---------------------------------------------------------------------------------------------------
# The backend.


class _Slot:
    """One input buffer of the two-deep pipeline, with its outputs, candidates and events."""

    def __init__(
        self, device: CudaDevice, io: EngineIO, out_nbytes: dict[str, int], candidates: tuple | None
    ) -> None:
        from ..cuda.filter import CandidateBuffers

        inp = io.input
        self.input = device.alloc(io.batch_max * 3 * io.input_hw[0] * io.input_hw[1] * inp.dtype.itemsize)
        self.outputs = {name: device.alloc(n) for name, n in out_nbytes.items()}
        self.cands = CandidateBuffers(device, *candidates) if candidates is not None else None
        self.ready, self.input_free, self.counted, self.fetched = (device.event() for _ in range(4))

    def candidates(self) -> CandidateBuffers:
        if self.cands is None:
            raise RuntimeError("this slot has no candidate buffers (gpu_preprocess=False)")
        return self.cands

    @property
    def output_ptrs(self) -> dict[str, int]:
        return {k: v.ptr for k, v in self.outputs.items()}


class TensorRTBackend(Backend):
    """Runs a TensorRT engine on the GPU.

    Args:
        model_path: A plan (.engine, .plan, .trt) with its edgetile sidecar, or an Ultralytics .engine.
        gpu_preprocess: Offer the GPU path (infer_views) to the Detector: preprocessing and confidence
            filtering on the device. False leaves only infer (host batches), for comparison.
        device: CUDA device ordinal.

    Attributes:
        has_gpu_path: True while :meth:`infer_views` can run: gpu_preprocess was True and the backend
            is open. The Detector uses the GPU path when it is True.
        device: The CUDA device (edgetile.runtime.cuda.device.CudaDevice).
        warnings: Compatibility warnings from the sidecar check (also issued as RuntimeWarning).
        tensorrt_log: The last TensorRT warnings and errors.

    Not thread-safe: one thread drives one backend (a daemon gives each worker its own Detector).
    """

    name = "tensorrt"
    infers_on_cpu = False

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            trt, api = import_tensorrt()
        except BackendUnavailable as exc:
            return False, str(exc)
        from ..cuda.device import cuda_status

        ok, gpu = cuda_status()
        if not ok:
            return False, f"TensorRT {api.label} is installed, but {gpu}"
        return True, f"TensorRT {api.label} ({api.module}) on {gpu}"

    def __init__(self, model_path: str | Path, gpu_preprocess: bool = True, device: int = 0) -> None:
        self.device: CudaDevice | None = None
        self._exec: EngineExecution | None = None
        self._engine = self._runtime = None
        self._slots: list[_Slot] = []
        self._parts: list[Any] = []
        self._host_in: HostBuffer | None = None
        self._host_out: dict[str, Any] = {}
        self._pre: GpuPreprocessor | None = None
        self._frame: FrameUpload | None = None
        self._filter: GpuFilter | None = None
        self.warnings: list[str] = []
        trt, api = import_tensorrt()
        self.api = api
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"model: file not found: {model_path}")
        plan, ultralytics = split_plan(path.read_bytes())
        try:
            meta: EngineMeta | None = read_engine_sidecar(path)
        except FileNotFoundError:
            if ultralytics is None:
                raise
            meta = None
        from ..cuda.device import CudaDevice, CudaUnavailable

        try:
            self.device = dev = CudaDevice(device)
        except CudaUnavailable as exc:
            raise BackendUnavailable(str(exc)) from exc
        try:
            self._load(dev, trt, api, path, plan, meta, ultralytics, gpu_preprocess)
        except BaseException:
            self.close()
            raise

    def _load(
        self,
        dev: CudaDevice,
        trt: Any,
        api: TrtRuntimeApi,
        path: Path,
        plan: bytes,
        meta: EngineMeta | None,
        ultralytics: dict | None,
        gpu_preprocess: bool,
    ) -> None:
        if meta is not None:
            # EngineIncompatible (a ValueError) when TensorRT version or compute capability differ.
            self.warnings = check_engine_compatible(
                meta, str(trt.__version__), dev.name, dev.compute_capability
            )
            for w in self.warnings:
                warnings.warn(f"{path}: {w}", RuntimeWarning, stacklevel=3)
            self.metadata = metadata_from_sidecar(meta)
        else:
            self.metadata = metadata_from_ultralytics(ultralytics or {})
        with dev.active():
            self._logger = make_logger(trt)
            self._runtime, self._engine = deserialize(
                trt, plan, self._logger, meta.dla_core if meta else None, str(path)
            )
            io = engine_io(trt, self._engine, api, str(path))
            if meta is not None and tuple(meta.input_hw) != io.input_hw:
                raise ValueError(
                    f"engine {path}: its sidecar says input {meta.input_hw}, the engine has {io.input_hw}; "
                    "the sidecar belongs to another engine"
                )
            self._exec = EngineExecution(self._engine, io, str(path), self._logger.lines)
            self._exec.set_batch(io.batch_max)
            out_nbytes = {o.name: self._exec.nbytes(o.name) for o in io.outputs}
            self._pre_stream, self._inf_stream, self._copy_stream = (
                self._part(dev.stream()) for _ in range(3)
            )
            self.input_name = io.input.name
            self.input_dtype = io.input.dtype
            self.input_shape = (io.batch_min if io.batch_min == io.batch_max else None, 3, *io.input_hw)
            self.max_batch = int(io.batch_max)
            self.output_names = [o.name for o in io.outputs]
            self.io = io
            candidates = None
            if gpu_preprocess:
                det = self._exec.output_shapes[io.outputs[0].name]
                if len(det) != 3 or det[1] < 5:
                    raise ValueError(
                        f"engine {path}: output {io.outputs[0].name!r}: expected a detection output "
                        f"(B, 4 + nc, N) for the GPU path, found {det}; use gpu_preprocess=False"
                    )
                self._rows, self._anchors = int(det[1]), int(det[2])
                candidates = (io.batch_max * self._anchors, self._rows, io.outputs[0].dtype)
            for _ in range(2 if gpu_preprocess else 1):
                slot = _Slot(dev, io, out_nbytes, candidates)
                slot.input.zero(self._inf_stream)  # padding slots of a fixed batch never hold garbage
                self._slots.append(slot)
            if gpu_preprocess:
                from ..cuda.filter import GpuFilter
                from ..cuda.preprocess import FrameUpload, GpuPreprocessor

                self._frame = self._part(FrameUpload(dev))
                self._pre = self._part(GpuPreprocessor(dev, io.input_hw, io.input.dtype))
                self._filter = self._part(GpuFilter(dev, io.outputs[0].dtype))
            self._inf_stream.synchronize()

    def _part(self, obj: Any) -> Any:
        self._parts.append(obj)
        return obj

    @property
    def tensorrt_log(self) -> list[str]:
        return list(self._logger.lines) if getattr(self, "_logger", None) is not None else []

    @property
    def has_gpu_path(self) -> bool:
        return self._exec is not None and self._pre is not None

    def _open(self) -> tuple[CudaDevice, EngineExecution]:
        """The device and the execution context; RuntimeError once the backend is closed."""
        if self._exec is None or self.device is None:
            raise RuntimeError("backend is closed")
        return self.device, self._exec

    def _gpu_path(self) -> tuple[FrameUpload, GpuPreprocessor, GpuFilter]:
        """The GPU path's parts; RuntimeError when the backend is closed or was made without them."""
        self._open()
        if self._frame is None or self._pre is None or self._filter is None:
            raise RuntimeError("the GPU path is off for this backend (gpu_preprocess=False)")
        return self._frame, self._pre, self._filter

    def _drain(self) -> None:
        for s in (self._pre_stream, self._inf_stream, self._copy_stream):
            s.synchronize()

    def _set_batch(self, b: int) -> None:
        _, execution = self._open()
        if execution.batch != b:
            self._inf_stream.synchronize()  # no inference of the old shape may still be running
            execution.set_batch(b)

    # -- host batches ------------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one host batch (B, 3, H, W) of the input's dtype; return host outputs (copies)."""
        dev, execution = self._open()
        io = self.io
        expect = (3, *io.input_hw)
        if not isinstance(batch, np.ndarray) or batch.ndim != 4 or tuple(batch.shape[1:]) != expect:
            raise ValueError(
                f"batch: expected an array of shape (B, {expect[0]}, {expect[1]}, {expect[2]}), found "
                f"{getattr(batch, 'shape', type(batch).__name__)}"
            )
        if batch.dtype != io.input.dtype:
            raise TypeError(
                f"batch: expected {io.input.dtype} (the engine's input type), found {batch.dtype}"
            )
        b = int(batch.shape[0])
        with dev.active():
            self._drain()
            self._set_batch(b)
            host_in = self._host_in
            if host_in is None:
                host_in = self._host_in = self._part(dev.pinned((io.batch_max, *expect), io.input.dtype))
                for o in io.outputs:
                    self._host_out[o.name] = self._part(
                        dev.pinned((execution.nbytes(o.name, io.batch_max),), np.uint8)
                    )
            staging = host_in.array[:b]
            np.copyto(staging, batch)
            slot = self._slots[0]
            slot.input.upload(staging, self._inf_stream)
            execution.enqueue(slot.input.ptr, slot.output_ptrs, self._inf_stream.handle)
            views = []
            for o in io.outputs:
                n = execution.nbytes(o.name)
                host = self._host_out[o.name].array[:n]
                slot.outputs[o.name].download(host, self._inf_stream)
                views.append((host, o.dtype, execution.output_shapes[o.name]))
            self._inf_stream.synchronize()
        return [h.view(dt).reshape(shape).copy() for h, dt, shape in views]

    # -- the GPU path ------------------------------------------------------------------------------
    def infer_views(
        self, image: np.ndarray, views: Views, batch: int, conf: float
    ) -> Generator[np.ndarray, None, None]:
        """Preprocess, infer and filter every view of an image on the GPU, a batch at a time.

        Args:
            image: (H, W, 3) uint8 BGR image.
            views: Its views (tiles, full frame; flipped or not), checked to lie inside the image.
            batch: Views per inference (within the engine's batch range; a fixed-batch engine's batch).
            conf: Confidence threshold; only candidates above it cross to the host.

        Yields:
            Per batch of n views, (n, 4 + nc, M) in the output's dtype: each view's candidates in anchor
            order, zero-padded to the most any view has. decode_yolo gives on it exactly what it gives
            on the full output.
        """
        frame, pre, gpu_filter = self._gpu_path()
        dev, execution = self._open()
        io = self.io
        if isinstance(batch, bool) or not 1 <= int(batch) <= io.batch_max:
            raise ValueError(
                f"batch: expected 1..{io.batch_max} views per call for this engine, found {batch}"
            )
        if not io.dynamic_batch and int(batch) != io.batch_max:
            raise ValueError(f"batch: this engine has a fixed batch of {io.batch_max}, found {batch}")
        from ..cuda.reference import score_threshold

        threshold = score_threshold(conf, io.outputs[0].dtype)
        total, batch = len(views), int(batch)
        out_name = io.outputs[0].name
        with dev.active():
            self._drain()
            frame_ptr, row_bytes = frame.put(image, self._pre_stream)
            pre.set_views(views, (image.shape[1], image.shape[0]), self._pre_stream)

        def enqueue(k: int) -> None:
            start = k * batch
            n = min(batch, total - start)
            slot = self._slots[k % 2]
            cands = slot.candidates()
            with dev.active():
                self._pre_stream.wait(slot.input_free)  # inference k - 2 has read this input
                pre.launch(frame_ptr, row_bytes, start, n, slot.input.ptr, self._pre_stream)
                slot.ready.record(self._pre_stream)
                self._inf_stream.wait(slot.ready)
                self._set_batch(n if io.dynamic_batch else io.batch_max)
                execution.enqueue(slot.input.ptr, slot.output_ptrs, self._inf_stream.handle)
                slot.input_free.record(self._inf_stream)
                gpu_filter.launch(
                    slot.outputs[out_name].ptr,
                    n,
                    self._rows,
                    self._anchors,
                    threshold,
                    cands,
                    self._inf_stream,
                )
                cands.download_count(self._inf_stream)
                slot.counted.record(self._inf_stream)

        def collect(k: int) -> np.ndarray:
            n = min(batch, total - k * batch)
            slot = self._slots[k % 2]
            cands = slot.candidates()
            with dev.active():
                slot.counted.synchronize()
                found = int(cands.host_count.array[0])
                # A side stream, so the copy does not queue behind inference k + 1.
                self._copy_stream.wait(slot.counted)
                cands.download(found, self._copy_stream)
                slot.fetched.record(self._copy_stream)
                slot.fetched.synchronize()
                return cands.take(found, n, self._anchors)

        from ..cuda.pipeline import pipelined

        try:
            yield from pipelined((total + batch - 1) // batch, enqueue, collect)
        finally:
            if self._exec is not None:  # a generator left open may be finalized after close()
                with dev.active():
                    frame.release(self._pre_stream)
                    self._drain()

    def profile_stages(self, image: np.ndarray, views: Views, batch: int, conf: float) -> dict[str, float]:
        """Milliseconds of each GPU-path stage for one image, run one after another (not pipelined).

        upload is host time (the copy into mapped or pinned memory, plus the DMA on a discrete GPU);
        the others are GPU time between CUDA events, summed over the batches: preprocess, infer, filter,
        download (counter and candidates to the host).
        """
        frame, pre, gpu_filter = self._gpu_path()
        dev, execution = self._open()
        from ..cuda.reference import score_threshold

        io = self.io
        out_name = io.outputs[0].name
        threshold = score_threshold(conf, io.outputs[0].dtype)
        times = dict.fromkeys(("upload", "preprocess", "infer", "filter", "download"), 0.0)
        s = self._inf_stream
        with dev.active():
            self._drain()
            ev = [dev.event() for _ in range(5)]
            try:
                t0 = time.perf_counter()
                frame_ptr, row_bytes = frame.put(image, s)
                s.synchronize()
                times["upload"] = (time.perf_counter() - t0) * 1000
                pre.set_views(views, (image.shape[1], image.shape[0]), s)
                slot = self._slots[0]
                cands = slot.candidates()
                for start in range(0, len(views), batch):
                    n = min(batch, len(views) - start)
                    self._set_batch(n if io.dynamic_batch else io.batch_max)
                    ev[0].record(s)
                    pre.launch(frame_ptr, row_bytes, start, n, slot.input.ptr, s)
                    ev[1].record(s)
                    execution.enqueue(slot.input.ptr, slot.output_ptrs, s.handle)
                    ev[2].record(s)
                    gpu_filter.launch(
                        slot.outputs[out_name].ptr, n, self._rows, self._anchors, threshold, cands, s
                    )
                    ev[3].record(s)
                    cands.download_count(s)
                    s.synchronize()
                    cands.download(int(cands.host_count.array[0]), s)
                    ev[4].record(s)
                    ev[4].synchronize()
                    for name, a, b in (
                        ("preprocess", 0, 1),
                        ("infer", 1, 2),
                        ("filter", 2, 3),
                        ("download", 3, 4),
                    ):
                        times[name] += ev[b].elapsed_ms(ev[a])
                frame.release(s)
            finally:
                for e in ev:
                    e.close()
        return times

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the engine, the buffers and the context (safe to call twice).

        A CUDA error that surfaces while finishing pending work is raised after everything is freed.
        """
        from ..cuda.device import CudaError

        dev = self.device
        if dev is None or dev.closed:
            return
        pending: CudaError | None = None
        try:
            with dev.active():
                for s in (getattr(self, n, None) for n in ("_pre_stream", "_inf_stream", "_copy_stream")):
                    if s is not None and not s.closed:
                        try:
                            s.synchronize()
                        except CudaError as exc:  # re-raised below, once everything is freed
                            pending = pending or exc
                if self._exec is not None:
                    self._exec.close()  # context before engine before runtime, as TensorRT requires
                self._exec = None
                self._engine = None
                self._runtime = None
                for slot in self._slots:
                    if slot.cands is not None:
                        slot.cands.close()
                self._slots.clear()
                parts, self._parts = list(reversed(self._parts)), []
                for part in parts:
                    try:
                        part.close()
                    except CudaError as exc:
                        pending = pending or exc
        finally:
            dev.close()  # frees what is left (slot buffers, events) and releases the primary context
        if pending is not None:
            raise pending
