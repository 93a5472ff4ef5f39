"""The pipelined batch loop and the Detector's GPU-path hook, on the CPU.

The hook is exercised with a backend that computes the GPU path's contract without a GPU: views
preprocessed by the kernel's exact arithmetic (runtime/cuda/reference.py), the real ONNX model, and the
filter kernel's reference compaction. Its detections must be the CPU path's.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import scene_with_people
from edgetile.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgetile.runtime.cuda.pipeline import pipelined
from edgetile.runtime.cuda.reference import dense_candidates, filter_reference, preprocess_reference
from edgetile.runtime.detector import DetectConfig, Detector
from onnx_models import red_blob_model

# --- pipelined -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "count,expected",
    [
        (0, []),
        (1, ["e0", "c0"]),
        (2, ["e0", "e1", "c0", "c1"]),
        (4, ["e0", "e1", "c0", "e2", "c1", "e3", "c2", "c3"]),  # k + 2 reuses k's buffer only after c(k)
    ],
)
def test_pipelined_runs_two_deep(count, expected):
    trace: list[str] = []
    out = list(pipelined(count, lambda k: trace.append(f"e{k}"), lambda k: trace.append(f"c{k}") or k * 10))
    assert trace == expected
    assert out == [k * 10 for k in range(count)]


def test_pipelined_stops_enqueueing_when_the_consumer_stops():
    trace: list[str] = []
    gen = pipelined(5, lambda k: trace.append(f"e{k}"), lambda k: trace.append(f"c{k}"))
    next(gen)
    gen.close()
    assert trace == ["e0", "e1", "c0"]


# --- the Detector's hook ---------------------------------------------------------------------------


class ReferenceViewsBackend(OnnxRuntimeBackend):
    """ONNX Runtime behind the GPU path's interface, computed on the CPU with the kernels' references."""

    def __init__(self, path, break_output=False):
        super().__init__(path)
        self.break_output = break_output
        self.generators_closed = 0
        self.batches: list[int] = []

    def infer_views(self, image, views, batch, conf):
        try:
            for start in range(0, len(views), batch):
                v = views.subset(slice(start, start + batch))
                n = len(v)
                arr = preprocess_reference(image, v, self.input_shape[2:], self.input_dtype)
                if self.input_shape[0] is not None and n < self.input_shape[0]:  # fixed batch: pad
                    arr = np.concatenate(
                        [arr, np.zeros((self.input_shape[0] - n, *arr.shape[1:]), arr.dtype)]
                    )
                out = self.infer(arr)[0]
                idx, vals = filter_reference(out, n, conf)
                self.batches.append(n)
                dense = dense_candidates(idx, vals, n, out.shape[2])
                yield dense[:, :4] if self.break_output else dense
        finally:
            self.generators_closed += 1


PEOPLE = [
    (490, 100, 530, 180),
    (370, 300, 400, 360),
    (600, 470, 640, 530),
    (1270, 480, 1300, 560),
    (100, 700, 160, 730),
    (1440, 940, 1500, 1000),
]

HOOK_CASES = [
    # (config, model batch, comment)
    (DetectConfig(tile=512, overlap=0.25, batch=5), None, "dynamic batch, short last batch"),
    (DetectConfig(tile=512, overlap=0.25), 4, "fixed batch of 4: the last batch is padded"),
    (
        DetectConfig(tile=400, overlap=0.2, batch=3, tta=("flip",), full_frame=True),
        None,
        "flip TTA + full frame",
    ),
    (DetectConfig(tile=1600, batch=2, conf=0.05), None, "image smaller than a tile, low threshold"),
]


@pytest.mark.parametrize("cfg,model_batch,comment", HOOK_CASES, ids=[c[2] for c in HOOK_CASES])
def test_gpu_path_hook_finds_what_the_cpu_path_finds(tmp_path, cfg, model_batch, comment):
    model = red_blob_model(tmp_path / "blob.onnx", input_hw=(256, 256), batch=model_batch)
    image = scene_with_people(1500, 1000, PEOPLE, seed=3)
    backend = ReferenceViewsBackend(model)
    with Detector(model, config=cfg) as cpu, Detector(backend, config=cfg) as gpu:
        t: dict[str, float] = {}
        want, got = cpu.detect(image), gpu.detect(image, timings=t)
    assert len(want) > 0  # something to compare (a tile larger than the image shrinks people to a few cells)
    np.testing.assert_array_equal(got.xyxy, want.xyxy)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    np.testing.assert_array_equal(got.class_ids, want.class_ids)
    passes = 2 if cfg.tta else 1
    assert backend.generators_closed == passes  # every pass finished its device work
    assert t["preprocess"] == 0.0 and t["infer"] > 0  # on the GPU path preprocessing is part of infer


def test_gpu_path_generator_is_closed_when_decoding_fails(tmp_path):
    model = red_blob_model(tmp_path / "blob.onnx", input_hw=(256, 256))
    backend = ReferenceViewsBackend(model, break_output=True)  # 4 rows: no class scores
    image = scene_with_people(1500, 1000, PEOPLE)
    with Detector(backend, config=DetectConfig(tile=512, batch=4)) as det:
        with pytest.raises(ValueError, match="model output: expected"):
            det.detect(image)
    assert backend.generators_closed == 1
    assert backend.batches == [4]  # it stopped at the first batch


def test_candidates_on_the_gpu_path_serve_every_merge_setting(tmp_path):
    from dataclasses import replace

    model = red_blob_model(tmp_path / "blob.onnx", input_hw=(256, 256))
    image = scene_with_people(1500, 1000, PEOPLE, seed=3)
    cfg = DetectConfig(tile=512, overlap=0.25, batch=5)
    backend = ReferenceViewsBackend(model)
    assert backend.has_gpu_path
    with Detector(backend, config=cfg) as gpu, Detector(model, config=cfg) as cpu:
        candidates = gpu.candidates(image)
        assert backend.generators_closed == 1
        for method in ("ios", "nmm", "wbf"):
            setting = replace(cfg, merge=method)
            want = cpu.merge(cpu.candidates(image), setting)
            got = gpu.merge(candidates, setting)
            np.testing.assert_array_equal(got.xyxy, want.xyxy)
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    assert backend.generators_closed == 1  # the models ran once for all three settings
