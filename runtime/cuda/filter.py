"""Host side of filter.cu: candidate buffers, the launch, and reading back only what passed."""

from __future__ import annotations

import numpy as np

from .device import CudaDevice, DeviceBuffer, HostBuffer, Kernel, Stream
from .reference import OUTPUT_DTYPES, dense_candidates

BLOCK = 256


class CandidateBuffers:
    """Room for every anchor of a full batch to pass (so the counter can never overflow), on both sides.

    Args:
        device: The GPU.
        capacity: Most candidates: batch * anchors.
        rows: 4 + number of classes.
        dtype: The model output's type (float32 or float16); candidates keep it.
    """

    def __init__(self, device: CudaDevice, capacity: int, rows: int, dtype: np.dtype) -> None:
        self.device = device
        self.capacity, self.rows, self.dtype = int(capacity), int(rows), np.dtype(dtype)
        self._bufs: list[DeviceBuffer | HostBuffer] = []
        try:
            self.count = self._keep(device.alloc(4))
            self.index = self._keep(device.alloc(self.capacity * 4))
            self.values = self._keep(device.alloc(self.capacity * self.rows * self.dtype.itemsize))
            self.host_count = self._keep(device.pinned((1,), np.int32))
            self.host_index = self._keep(device.pinned((self.capacity,), np.int32))
            self.host_values = self._keep(device.pinned((self.capacity, self.rows), self.dtype))
        except BaseException:
            self.close()
            raise

    def _keep(self, buf):
        self._bufs.append(buf)
        return buf

    def download_count(self, stream: Stream) -> None:
        """Queue the copy of the counter to host_count on stream."""
        self.count.download(self.host_count.array, stream)

    def download(self, k: int, stream: Stream) -> None:
        """Queue the copy of the first k candidates (indices and columns) to the host buffers."""
        if not 0 <= k <= self.capacity:
            raise ValueError(f"k: expected 0..{self.capacity} candidates, found {k}")
        if k:
            self.index.download(self.host_index.array[:k], stream)
            self.values.download(self.host_values.array[:k], stream)

    def take(self, k: int, count: int, anchors: int) -> np.ndarray:
        """The first k downloaded candidates as a (count, rows, M) output of only candidates (a copy)."""
        return dense_candidates(
            self.host_index.array[:k].astype(np.int64), self.host_values.array[:k].copy(), count, anchors
        )

    def close(self) -> None:
        for buf in reversed(self._bufs):
            buf.close()
        self._bufs.clear()


class GpuFilter:
    """Launches filter.cu on a model output in device memory.

    Args:
        device: The GPU.
        dtype: The model output's type.
    """

    def __init__(self, device: CudaDevice, dtype: np.dtype) -> None:
        self.device = device
        self.dtype = np.dtype(dtype)
        if self.dtype not in OUTPUT_DTYPES:
            raise ValueError(f"dtype: expected a float32 or float16 model output, found {self.dtype}")
        name = "filter_candidates_f16" if self.dtype == np.float16 else "filter_candidates_f32"
        self._kernel: Kernel | None = device.kernel("filter.cu", name, "PiiifPPP")

    def close(self) -> None:
        """Drop the kernel (its module unloads with the device)."""
        self._kernel = None

    def launch(
        self,
        out_ptr: int,
        count: int,
        rows: int,
        anchors: int,
        threshold: float,
        cands: CandidateBuffers,
        stream: Stream,
    ) -> None:
        """Queue: zero the counter, keep the candidates of the first count views above threshold.

        Args:
            out_ptr: Device address of the (>= count, rows, anchors) output.
            count: Views to scan.
            rows: 4 + number of classes.
            anchors: N of the output.
            threshold: From reference.score_threshold (exactly what the CPU decoder keeps).
            cands: Where the candidates go.
            stream: Stream of the inference that wrote the output.
        """
        if count * anchors > cands.capacity or rows != cands.rows:
            raise ValueError(
                f"count, rows: expected at most {cands.capacity} anchors of {cands.rows} rows, "
                f"found {count} x {anchors} of {rows}"
            )
        if self._kernel is None:
            raise RuntimeError("GpuFilter is closed")
        total = int(count) * int(anchors)
        with self.device.active():
            cands.count.zero_int32(1, stream)
            self._kernel.launch(
                ((total + BLOCK - 1) // BLOCK, 1, 1),
                (BLOCK, 1, 1),
                stream,
                int(out_ptr),
                int(count),
                int(rows),
                int(anchors),
                float(threshold),
                cands.count.ptr,
                cands.index.ptr,
                cands.values.ptr,
            )
