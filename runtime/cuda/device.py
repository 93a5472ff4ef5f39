"""The one module that holds CUDA state: context, streams, events, buffers and compiled kernels.

Everything goes through pycuda's driver API on the device's *primary* context, retained here and pushed
only around our own work (:meth:`CudaDevice.active`), so TensorRT, the CUDA runtime and any other
library in the process share it instead of fighting over a context of their own (``pycuda.autoinit``
would create and keep a private one).

Every CUDA call is wrapped by :func:`checked`: a failure raises :class:`CudaError` naming the call
and the driver's error (``cuMemAlloc failed: out of memory``). Every buffer, stream and event is an
object with ``close()``; :meth:`CudaDevice.close` closes whatever is still open, newest first, and
releases the primary context.

pycuda is imported when a device is opened, never when this module is imported.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from . import kernel_source


class CudaUnavailable(RuntimeError):
    """pycuda is not installed, or no CUDA driver or GPU can be reached."""


class CudaError(RuntimeError):
    """A CUDA driver call failed; the message names the call and the driver's error."""


def import_driver():
    """pycuda.driver, or CudaUnavailable saying how to get it."""
    try:
        import pycuda.driver as drv
    except ModuleNotFoundError as exc:
        raise CudaUnavailable(
            f"pycuda is not installed ({exc}); install it where nvcc is on PATH: pip install 'edgetile[jetson]'"
        ) from exc
    except ImportError as exc:  # installed, but its library cannot load (no NVIDIA driver, CUDA mismatch)
        raise CudaUnavailable(
            f"pycuda is installed but cannot be loaded (is the NVIDIA driver present?): {exc}"
        ) from exc
    return drv


@contextlib.contextmanager
def checked(what: str) -> Iterator[None]:
    """Turn a pycuda error inside the block into CudaError('<what> failed: <driver error>')."""
    drv = import_driver()
    try:
        yield
    except drv.CompileError as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise CudaError(f"{what} failed: nvcc could not compile the kernel: {detail}") from exc
    except drv.Error as exc:
        raise CudaError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def cuda_status(index: int = 0) -> tuple[bool, str]:
    """(usable, one line: the GPU, or why not) without creating a context."""
    try:
        drv = import_driver()
    except CudaUnavailable as exc:
        return False, str(exc)
    try:
        drv.init()
        count = drv.Device.count()
        if count <= index:
            return False, f"CUDA device {index} requested, the driver reports {count} device(s)"
        dev = drv.Device(index)
        major, minor = dev.compute_capability()
        return True, f"{dev.name()} (compute capability {major}.{minor})"
    except drv.Error as exc:
        return False, f"the CUDA driver cannot be used: {type(exc).__name__}: {exc}"


class _Resource:
    """Something that holds device state and must be released through its device."""

    def __init__(self, device: CudaDevice) -> None:
        self.device = device
        self.closed = False
        device._track(self)

    def _release(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Release it now (safe to call twice)."""
        if self.closed:
            return
        self.closed = True
        with self.device.active():
            self._release()
        self.device._untrack(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stream(_Resource):
    """A CUDA stream; ``handle`` is what TensorRT's execute_async_v3 takes."""

    def __init__(self, device: CudaDevice) -> None:
        with checked("cuStreamCreate"):
            self._stream = device.driver.Stream()
        super().__init__(device)

    @property
    def handle(self) -> int:
        return int(self._stream.handle)

    @property
    def pycuda(self):
        return self._stream

    def wait(self, event: Event) -> None:
        """Make later work on this stream wait for the event (no host wait)."""
        with self.device.active(), checked("cuStreamWaitEvent"):
            self._stream.wait_for_event(event.pycuda)

    def synchronize(self) -> None:
        with self.device.active(), checked("cuStreamSynchronize"):
            self._stream.synchronize()

    def _release(self) -> None:
        with checked("cuStreamSynchronize"):
            self._stream.synchronize()
        self._stream = None


class Event(_Resource):
    """A CUDA event (timing enabled, so two events give the GPU time between them)."""

    def __init__(self, device: CudaDevice) -> None:
        with checked("cuEventCreate"):
            self._event = device.driver.Event()
        self.recorded = False
        super().__init__(device)

    @property
    def pycuda(self):
        return self._event

    def record(self, stream: Stream) -> None:
        with self.device.active(), checked("cuEventRecord"):
            self._event.record(stream.pycuda)
        self.recorded = True

    def synchronize(self) -> None:
        """Wait on the host until the work before the record is done (no-op if never recorded)."""
        if self.recorded:
            with self.device.active(), checked("cuEventSynchronize"):
                self._event.synchronize()

    def elapsed_ms(self, start: Event) -> float:
        """GPU milliseconds from start's record to this one's (both must have completed)."""
        with self.device.active(), checked("cuEventElapsedTime"):
            return float(self._event.time_since(start.pycuda))

    def _release(self) -> None:
        self._event = None


class DeviceBuffer(_Resource):
    """nbytes of device memory; ``ptr`` is its device address."""

    def __init__(self, device: CudaDevice, nbytes: int) -> None:
        if int(nbytes) < 1:
            raise ValueError(f"nbytes: expected a positive size, found {nbytes}")
        self.nbytes = int(nbytes)
        with checked(f"cuMemAlloc({self.nbytes} bytes)"):
            self._alloc = device.driver.mem_alloc(self.nbytes)
        super().__init__(device)

    @property
    def ptr(self) -> int:
        return int(self._alloc)

    def upload(self, host: np.ndarray, stream: Stream, offset: int = 0) -> None:
        """Copy a contiguous host array to this buffer at a byte offset (asynchronous if host is pinned)."""
        _check_fits(host, self.nbytes - offset, "host")
        with self.device.active(), checked("cuMemcpyHtoDAsync"):
            self.device.driver.memcpy_htod_async(self.ptr + offset, host, stream.pycuda)

    def download(self, host: np.ndarray, stream: Stream, offset: int = 0) -> None:
        """Copy from this buffer at a byte offset into a contiguous host array (asynchronous if pinned)."""
        _check_fits(host, self.nbytes - offset, "host")
        with self.device.active(), checked("cuMemcpyDtoHAsync"):
            self.device.driver.memcpy_dtoh_async(host, self.ptr + offset, stream.pycuda)

    def zero_int32(self, count: int, stream: Stream) -> None:
        """Set the first count int32 words to 0 on the stream."""
        if count * 4 > self.nbytes:
            raise ValueError(f"count: expected at most {self.nbytes // 4} words, found {count}")
        with self.device.active(), checked("cuMemsetD32Async"):
            self.device.driver.memset_d32_async(self.ptr, 0, int(count), stream.pycuda)

    def zero(self, stream: Stream) -> None:
        """Set every byte to 0 on the stream."""
        with self.device.active(), checked("cuMemsetD8Async"):
            self.device.driver.memset_d8_async(self.ptr, 0, self.nbytes, stream.pycuda)

    def _release(self) -> None:
        with checked("cuMemFree"):
            self._alloc.free()
        self._alloc = None


class HostBuffer(_Resource):
    """A page-locked host array; when ``mapped``, also visible to kernels at ``device_ptr`` (zero-copy).

    On Jetson the GPU and the CPU share DRAM: a mapped buffer is read by kernels where it lies, with no
    copy. On a discrete GPU the same kernels would read it across PCIe, so it is used there only as a
    staging area for asynchronous copies.
    """

    def __init__(
        self, device: CudaDevice, shape: tuple[int, ...], dtype: npt.DTypeLike, mapped: bool = False
    ) -> None:
        drv = device.driver
        flags = drv.host_alloc_flags.DEVICEMAP if mapped else 0
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        with checked(f"cuMemHostAlloc({nbytes} bytes{', mapped' if mapped else ''})"):
            self.array = drv.pagelocked_empty(tuple(int(s) for s in shape), np.dtype(dtype), mem_flags=flags)
        self.mapped = bool(mapped)
        self.device_ptr: int | None = None
        if mapped:
            with checked("cuMemHostGetDevicePointer"):
                self.device_ptr = int(self.array.base.get_device_pointer())
        super().__init__(device)

    def _release(self) -> None:
        with checked("cuMemFreeHost"):
            self.array.base.free()
        self.array = None


def _check_fits(host: np.ndarray, room: int, name: str) -> None:
    if not isinstance(host, np.ndarray) or not host.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous NumPy array, found {type(host).__name__}")
    if host.nbytes > room:
        raise ValueError(f"{name}: expected at most {room} bytes for this buffer, found {host.nbytes}")


@dataclass(frozen=True)
class Kernel:
    """A compiled kernel prepared for launches with a fixed argument signature."""

    name: str
    function: Any  # pycuda's Function (pycuda ships no types)
    device: CudaDevice

    def launch(
        self, grid: tuple[int, int, int], block: tuple[int, int, int], stream: Stream, *args: object
    ) -> None:
        if min(grid) < 1:
            return  # nothing to do; a zero-sized grid is a launch error in CUDA
        with self.device.active(), checked(f"launch of {self.name} (grid {grid}, block {block})"):
            self.function.prepared_async_call(grid, block, stream.pycuda, *args)


class CudaDevice:
    """One GPU through its primary context; the owner of every CUDA object made through it.

    Args:
        index: CUDA device ordinal.

    Attributes:
        name: GPU name as the driver reports it (e.g. "Orin").
        compute_capability: "major.minor" (e.g. "8.7").
        integrated: The GPU shares memory with the CPU (Jetson): frames are read zero-copy.
    """

    def __init__(self, index: int = 0) -> None:
        drv = import_driver()
        self.driver = drv
        with checked("cuInit"):
            drv.init()
            count = drv.Device.count()
        if not 0 <= int(index) < count:
            raise CudaUnavailable(f"device: expected a CUDA device index in [0, {count}), found {index}")
        with checked("cuDeviceGet"):
            self._dev = drv.Device(int(index))
            self.name = str(self._dev.name())
            major, minor = self._dev.compute_capability()
            self.integrated = bool(self._dev.get_attribute(drv.device_attribute.INTEGRATED))
            self.can_map_host_memory = bool(self._dev.get_attribute(drv.device_attribute.CAN_MAP_HOST_MEMORY))
        self.compute_capability = f"{major}.{minor}"
        self.arch = f"sm_{major}{minor}"
        with checked("cuDevicePrimaryCtxRetain"):
            self._ctx = self._dev.retain_primary_context()
        self._resources: list[_Resource] = []
        self._kernels: dict[tuple[str, str], Kernel] = {}
        self._modules: dict[str, Any] = {}  # pycuda SourceModules by source
        self._lock = threading.RLock()
        self._closed = False

    # -- context -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def active(self) -> Iterator[CudaDevice]:
        """Make the primary context current on this thread for the block, and restore what was before."""
        if self._closed:
            raise RuntimeError("CUDA device is closed")
        with checked("cuCtxPushCurrent"):
            self._ctx.push()
        try:
            yield self
        finally:
            with checked("cuCtxPopCurrent"):
                self.driver.Context.pop()

    def synchronize(self) -> None:
        with self.active(), checked("cuCtxSynchronize"):
            self.driver.Context.synchronize()

    def peak_bandwidth_gbs(self) -> float | None:
        """Theoretical DRAM bandwidth from the driver (2 x memory clock x bus width), or None if unreported."""
        attr = self.driver.device_attribute
        with checked("cuDeviceGetAttribute"):
            khz = int(self._dev.get_attribute(attr.MEMORY_CLOCK_RATE))
            bits = int(self._dev.get_attribute(attr.GLOBAL_MEMORY_BUS_WIDTH))
        return 2 * khz * 1e3 * bits / 8 / 1e9 if khz > 0 and bits > 0 else None

    # -- objects -----------------------------------------------------------------------------------
    def _track(self, res: _Resource) -> None:
        with self._lock:
            self._resources.append(res)

    def _untrack(self, res: _Resource) -> None:
        with self._lock:
            if res in self._resources:
                self._resources.remove(res)

    def stream(self) -> Stream:
        with self.active():
            return Stream(self)

    def event(self) -> Event:
        with self.active():
            return Event(self)

    def alloc(self, nbytes: int) -> DeviceBuffer:
        with self.active():
            return DeviceBuffer(self, nbytes)

    def pinned(self, shape: tuple[int, ...], dtype: npt.DTypeLike, mapped: bool = False) -> HostBuffer:
        if mapped and not self.can_map_host_memory:
            raise CudaUnavailable(f"GPU {self.name} cannot map host memory; use mapped=False")
        with self.active():
            return HostBuffer(self, shape, dtype, mapped)

    def to_device(self, host: np.ndarray) -> DeviceBuffer:
        """A new device buffer holding a copy of host (synchronous; for small constant tables)."""
        host = np.ascontiguousarray(host)
        with self.active():
            buf = DeviceBuffer(self, max(host.nbytes, 1))
            with checked("cuMemcpyHtoD"):
                self.driver.memcpy_htod(buf.ptr, host)
        return buf

    def kernel(self, source: str, name: str, signature: str) -> Kernel:
        """A kernel of one of the package's .cu files, compiled by nvcc for this GPU at first use.

        pycuda caches the compiled module on disk (keyed by source, options and nvcc version), and this
        device caches it in memory, so nvcc runs once per GPU type and edgetile version.

        Args:
            source: "preprocess.cu" or "filter.cu".
            name: The extern "C" kernel in it.
            signature: pycuda argument types, e.g. "PiPPPPPiii" (P pointer, i int32, f float32).
        """
        key = (source, name)
        with self._lock:
            if key in self._kernels:
                return self._kernels[key]
            with self.active():
                if source not in self._modules:
                    with checked(f"compiling {source} for {self.arch}"):
                        self._modules[source] = self._compile(source)
                with checked(f"loading kernel {name} from {source}"):
                    fn = self._modules[source].get_function(name)
                    fn.prepare(signature)
            k = Kernel(name, fn, self)
            self._kernels[key] = k
            return k

    def _compile(self, source: str) -> Any:
        """pycuda's SourceModule for this GPU (nvcc, cached on disk by pycuda).

        no_extern_c: the sources declare their own extern "C" entry points and include C++ headers
        (cuda_fp16.h) that pycuda's extern "C" wrapper would break. pycuda releases up to 2025 find their
        own headers through pkg_resources and their cache through appdirs; where either is missing (new
        setuptools has no pkg_resources), the same nvcc call is made through pycuda's compile_plain, cached
        under ~/.cache/edgetile/cuda-kernels (or $XDG_CACHE_HOME), and loaded with module_from_buffer.
        """
        from pycuda import compiler

        text = kernel_source(source)
        try:
            return compiler.SourceModule(text, no_extern_c=True, options=["-O3"], arch=self.arch)
        except ModuleNotFoundError as exc:
            if exc.name not in ("pkg_resources", "appdirs"):
                raise
        import os
        from pathlib import Path

        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgetile" / "cuda-kernels"
        cache.mkdir(parents=True, exist_ok=True)
        cubin = compiler.compile_plain(text, ["-O3", "-arch", self.arch], False, "nvcc", str(cache))
        return self.driver.module_from_buffer(cubin)

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Finish pending work, close every object still open (newest first), release the context."""
        if self._closed:
            return
        errors: list[str] = []
        try:
            self.synchronize()
        except CudaError as exc:  # a failed kernel surfaces here; still free what can be freed
            errors.append(str(exc))
        with self._lock:
            resources = list(reversed(self._resources))
        for res in resources:
            try:
                res.close()
            except CudaError as exc:
                errors.append(str(exc))
        with self.active():  # modules unload while their context is current
            self._kernels.clear()
            self._modules.clear()
        self._closed = True
        with checked("cuDevicePrimaryCtxRelease"):
            self._ctx.detach()
        if errors:
            raise CudaError("closing the CUDA device: " + "; ".join(errors))

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> CudaDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
