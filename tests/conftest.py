"""Shared fixtures and the needs_cuda / needs_trt markers (skipped with the reason when missing)."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
from scipy import ndimage

from edgetile.runtime import merge
from edgetile.runtime.backends import Backend


def _cuda_reason() -> str | None:
    if importlib.util.find_spec("pycuda") is None and importlib.util.find_spec("cupy") is None:
        return "needs pycuda or cupy and a CUDA GPU; neither library is installed here"
    try:
        import pycuda.driver as drv

        drv.init()
        if drv.Device.count() == 0:
            return "needs a CUDA GPU; the driver reports none"
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - no driver is a reason to skip, reported verbatim
        return f"needs a CUDA GPU; the CUDA driver cannot be used: {exc}"
    return None


def _trt_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "needs TensorRT (from JetPack or NVIDIA's wheels) and a GPU; tensorrt is not installed here"
    return _cuda_reason()


def pytest_report_header(config):
    # `make test` runs the runtime's tests twice; the header tells the two runs apart in a CI log.
    reason = f" ({merge.C_UNAVAILABLE_REASON})" if merge.C_UNAVAILABLE_REASON else ""
    return f"edgetile merge: {merge.BACKEND}{reason}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # pytest-randomly prints its seed in the header, which -q leaves out: say it at the end as well, so
    # that any run's order can be replayed.
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(f"test order: replay it with -p randomly --randomly-seed={seed}")


def pytest_collection_modifyitems(config, items):
    cuda, trt = _cuda_reason(), _trt_reason()
    for item in items:
        if cuda and "needs_cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=cuda))
        if trt and "needs_trt" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=trt))


RED = (0, 0, 255)


class BlobBackend(Backend):
    """A deterministic stand-in detector for geometry tests: every red blob is a 'person'.

    It decodes the real Ultralytics output layout (B, 4 + 1, N) from the real preprocessed batch, so
    tiling, preprocessing, decoding and merging are all exercised; only the network is replaced. A
    blob touching the slot border scores higher than a whole one (edge_score > whole_score), the
    adversarial case for a merge that keeps the best-scoring box.
    """

    name = "blob"

    def __init__(
        self, input_hw=(256, 256), batch=None, edge_score=0.9, whole_score=0.6, slots=64, corner_box=False
    ):
        self.input_name = "images"
        self.input_shape = (batch, 3, input_hw[0], input_hw[1])
        self.input_dtype = np.dtype(np.float32)
        self.output_names = ["output0"]
        self.metadata = {"names": "{0: 'person'}", "imgsz": str(list(input_hw)), "stride": "32"}
        self.edge_score, self.whole_score, self.slots = edge_score, whole_score, slots
        self.corner_box = corner_box
        self.calls: list[int] = []
        self.closed = False

    @classmethod
    def available(cls):
        return True, "test double"

    def infer(self, batch):
        if self.input_shape[0] is not None and batch.shape[0] != self.input_shape[0]:
            raise ValueError(f"fixed batch {self.input_shape[0]}, got {batch.shape[0]}")
        self.calls.append(batch.shape[0])
        B, _, H, W = batch.shape
        out = np.zeros((B, 5, self.slots), np.float32)
        for b in range(B):
            r, g, bl = batch[b, 0], batch[b, 1], batch[b, 2]
            mask = (r > 0.7) & (g < 0.3) & (bl < 0.3)
            lab, n = ndimage.label(mask)
            k = 0
            for sl in ndimage.find_objects(lab):
                if sl is None or k >= self.slots:
                    continue
                y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
                edge = x0 == 0 or y0 == 0 or x1 == W or y1 == H
                out[b, :, k] = (
                    (x0 + x1) / 2,
                    (y0 + y1) / 2,
                    x1 - x0,
                    y1 - y0,
                    self.edge_score if edge else self.whole_score,
                )
                k += 1
            if self.corner_box and k < self.slots:
                out[b, :, k] = (W - 8, H - 8, 12, 12, 0.95)  # a box in the bottom-right corner
        return [out]

    def close(self):
        self.closed = True


def scene_with_people(width, height, boxes, seed=0):
    """A noisy grey-green image with solid red rectangles (the 'people') at the given boxes."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 140, (height, width, 3), dtype=np.uint8)
    img[..., 2] = np.minimum(img[..., 2], 100)  # no accidental red
    for x1, y1, x2, y2 in boxes:
        cv2.rectangle(img, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), RED, -1)
    return img


@pytest.fixture
def blob_backend():
    return BlobBackend
