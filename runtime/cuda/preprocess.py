"""Host side of preprocess.cu: the frame's place on the device, the per-frame tables, the launch.

Per frame: the frame is put where the kernel can read it (:class:`FrameUpload`), and the views' tables
(:func:`edgetile.runtime.cuda.reference.build_view_tables`) are uploaded once. Per batch: one launch of
:class:`GpuPreprocessor` writes every view of the batch into the engine's input buffer.
"""

from __future__ import annotations

import numpy as np

from ..preprocess import Views
from .device import CudaDevice, DeviceBuffer, HostBuffer, Kernel, Stream
from .reference import VIEW_PARAMS, build_view_tables, output_lut

BLOCK = (32, 8, 1)  # 32 consecutive columns per warp: coalesced writes into each plane


class FrameUpload:
    """Where the kernels read the frame from.

    On an integrated GPU (Jetson) the frame is copied once by the CPU into mapped page-locked memory and
    the kernel reads it there (zero-copy: no DMA, no second buffer). On a discrete GPU it is copied into
    page-locked staging and from there to device memory asynchronously. Buffers grow to the largest
    frame seen and are reused.
    """

    def __init__(self, device: CudaDevice) -> None:
        self.device = device
        self._host: HostBuffer | None = None
        self._dev: DeviceBuffer | None = None
        self._done = device.event()  # recorded after the last kernel that reads the current frame

    def put(self, image: np.ndarray, stream: Stream) -> tuple[int, int]:
        """Place an (H, W, 3) uint8 frame; returns (device address, bytes per row) for the kernels."""
        if (
            not isinstance(image, np.ndarray)
            or image.ndim != 3
            or image.shape[2] != 3
            or image.dtype != np.uint8
        ):
            raise ValueError(
                f"image: expected an (H, W, 3) uint8 BGR array, found shape "
                f"{getattr(image, 'shape', None)} of {getattr(image, 'dtype', type(image).__name__)}"
            )
        h, w = image.shape[:2]
        nbytes = h * w * 3
        with self.device.active():
            self._done.synchronize()  # the previous frame's kernels have finished reading the buffer
            host_buf, dev = self._host, self._dev
            if host_buf is None or host_buf.array.nbytes < nbytes:
                host_buf, dev = self._grow(nbytes, stream)
            host = host_buf.array[:nbytes]
            np.copyto(host.reshape(h, w, 3), image)
            if dev is not None:
                dev.upload(host, stream)
                return dev.ptr, w * 3
            # no device copy: the buffer is mapped, and the kernel reads the frame where the CPU wrote it
            assert host_buf.device_ptr is not None
            return host_buf.device_ptr, w * 3

    def release(self, stream: Stream) -> None:
        """Mark the frame free once the work queued on stream so far has run."""
        with self.device.active():
            self._done.record(stream)

    def _grow(self, nbytes: int, stream: Stream) -> tuple[HostBuffer, DeviceBuffer | None]:
        stream.synchronize()
        for buf in (self._host, self._dev):
            if buf is not None:
                buf.close()
        integrated = self.device.integrated and self.device.can_map_host_memory
        self._host = self.device.pinned((nbytes,), np.uint8, mapped=integrated)
        self._dev = None if integrated else self.device.alloc(nbytes)
        return self._host, self._dev

    def close(self) -> None:
        for buf in (self._host, self._dev, self._done):
            if buf is not None:
                buf.close()
        self._host = self._dev = None


class GpuPreprocessor:
    """Launches preprocess.cu for the views of one frame, a batch at a time.

    Args:
        device: The GPU.
        input_hw: Model input height and width.
        dtype: float32 or float16, the engine input's type.
    """

    def __init__(self, device: CudaDevice, input_hw: tuple[int, int], dtype: np.dtype) -> None:
        self.device = device
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.dtype = np.dtype(dtype)
        lut = output_lut(self.dtype)
        half = self.dtype == np.float16
        self._kernel: Kernel | None = device.kernel(
            "preprocess.cu", "preprocess_views_f16" if half else "preprocess_views_f32", "PiPPPPPiii"
        )
        self._lut = device.to_device(lut.view(np.uint16) if half else lut)
        self._staging: HostBuffer | None = None
        self._tables: DeviceBuffer | None = None
        self._uploaded = device.event()
        self._layout: tuple[int, int, int, int] | None = None  # views, params, xtab, ytab byte offsets

    def set_views(self, views: Views, image_wh: tuple[int, int], stream: Stream) -> None:
        """Upload the tables of a frame's views (checked: every window inside the frame)."""
        t = build_view_tables(views, image_wh, self.input_hw)
        words = t.params.size + t.xtab.size + t.ytab.size
        with self.device.active():
            self._uploaded.synchronize()  # the previous upload has left the staging buffer
            staging, tables = self._staging, self._tables  # made and closed together
            if staging is None or tables is None or staging.array.size < words:
                stream.synchronize()  # no kernel still reads the old tables
                for buf in (staging, tables):
                    if buf is not None:
                        buf.close()
                staging = self._staging = self.device.pinned((words,), np.int32)
                tables = self._tables = self.device.alloc(words * 4)
            host = staging.array
            a, b = t.params.size, t.params.size + t.xtab.size
            host[:a] = t.params.reshape(-1)
            host[a:b] = t.xtab.reshape(-1)
            host[b:words] = t.ytab.reshape(-1)
            tables.upload(host[:words], stream)
            self._uploaded.record(stream)
        base = tables.ptr
        self._layout = (len(views), base, base + a * 4, base + b * 4)  # int4 tables: 16-byte aligned

    def launch(
        self, frame_ptr: int, row_bytes: int, start: int, count: int, out_ptr: int, stream: Stream
    ) -> None:
        """Write views start .. start + count of the current frame into out_ptr, (count, 3, H, W)."""
        if self._kernel is None:
            raise RuntimeError("GpuPreprocessor is closed")
        if self._layout is None:
            raise RuntimeError("set_views must be called before launch")
        n, params, xtab, ytab = self._layout
        if start < 0 or count < 1 or start + count > n:
            raise ValueError(
                f"start, count: expected a range inside the frame's {n} views, found {start}, {count}"
            )
        ih, iw = self.input_hw
        grid = ((iw + BLOCK[0] - 1) // BLOCK[0], (ih + BLOCK[1] - 1) // BLOCK[1], int(count))
        with self.device.active():
            self._kernel.launch(
                grid,
                BLOCK,
                stream,
                int(frame_ptr),
                int(row_bytes),
                params + start * VIEW_PARAMS * 4,
                xtab,
                ytab,
                self._lut.ptr,
                int(out_ptr),
                ih,
                iw,
                int(count),
            )

    def close(self) -> None:
        for buf in (self._staging, self._tables, self._lut, self._uploaded):
            if buf is not None:
                buf.close()
        self._staging = self._tables = None
        self._kernel = None  # its module unloads with the device
        self._layout = None
