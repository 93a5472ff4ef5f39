"""The tiled pipeline with a deterministic blob-finding backend: geometry, batching and merging."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import BlobBackend, scene_with_people
from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.tiling import plan_tiles


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# Tiles of 512 with overlap 0.25 step by 384: windows start at x = 0, 384, 768, 988 on a 1500 px image
# and y = 0, 488 on a 1000 px image. Each person below crosses at least one tile side.
PEOPLE = [
    (490, 100, 530, 180),  # across x = 512 (right side of the first column)
    (370, 300, 400, 360),  # across x = 384 (left side of the second column)
    (600, 470, 640, 530),  # across y = 488 and y = 512
    (1270, 480, 1300, 560),  # across x = 1280 and y = 488/512: near a corner of four tiles
    (100, 700, 160, 730),  # lying person, wholly inside one tile
]


@pytest.mark.parametrize("method", ["ios", "nms", "nmm", "wbf"])
def test_person_across_tile_edges_is_one_box_around_the_whole_person(method):
    image = scene_with_people(1500, 1000, PEOPLE)
    # Cut parts score higher than whole people: the adversarial case for keeping the best box.
    backend = BlobBackend(input_hw=(256, 256), edge_score=0.9, whole_score=0.6)
    cfg = DetectConfig(tile=512, overlap=0.25, merge=method, merge_thr=0.5)
    with Detector(backend, config=cfg) as det:
        found = det.detect(image)
    assert len(found) == len(PEOPLE), found.xyxy
    for truth in PEOPLE:
        best = max(iou(truth, b) for b in found.xyxy)
        assert best > 0.85, (method, truth, found.xyxy)


def test_padding_of_a_small_image_never_yields_boxes():
    image = scene_with_people(300, 200, [(100, 50, 130, 110)])
    backend = BlobBackend(input_hw=(256, 256), corner_box=True)  # also 'sees' a box in the slot's corner
    with Detector(backend, config=DetectConfig(tile=512)) as det:
        found = det.detect(image)
    assert len(found) == 1
    assert iou(found.xyxy[0], (100, 50, 130, 110)) > 0.85


def test_small_image_corner_box_is_kept_when_it_is_inside_the_image():
    # The same corner box lies on real pixels of an image that fills the tile: it must survive,
    # proving the previous test's drop is due to padding and not to the box itself.
    image = scene_with_people(512, 512, [])
    with Detector(BlobBackend(input_hw=(256, 256), corner_box=True), config=DetectConfig(tile=512)) as det:
        assert len(det.detect(image)) == 1


def test_fixed_batch_model_pads_the_last_partial_batch():
    image = scene_with_people(1500, 1000, PEOPLE)
    n_tiles = len(plan_tiles(1500, 1000, 512, 0.25))  # 12 tiles
    assert n_tiles % 5 != 0  # so the dynamic model really gets a short last batch
    fixed = BlobBackend(input_hw=(256, 256), batch=5)
    dynamic = BlobBackend(input_hw=(256, 256))
    with Detector(fixed, config=DetectConfig(tile=512, overlap=0.25)) as a, Detector(
        dynamic, config=DetectConfig(tile=512, overlap=0.25, batch=5)
    ) as b:
        ra, rb = a.detect(image), b.detect(image)
    assert fixed.calls == [5] * -(-n_tiles // 5)  # every call is a full batch, the last one padded
    assert dynamic.calls == [5] * (n_tiles // 5) + [n_tiles % 5]  # a short last batch, unpadded
    np.testing.assert_allclose(ra.xyxy, rb.xyxy)
    np.testing.assert_allclose(ra.scores, rb.scores)


def test_batch_option_conflicting_with_a_fixed_batch_model_is_refused():
    with pytest.raises(ValueError, match="fixed batch of 4"):
        Detector(BlobBackend(batch=4), config=DetectConfig(batch=8))


class WrongShape(BlobBackend):
    def infer(self, batch):
        return [np.zeros((batch.shape[0], 7, 100), np.float32)]


def test_model_output_that_does_not_fit_names_expected_and_actual_shapes():
    with Detector(WrongShape(), config=DetectConfig(tile=512)) as det:
        with pytest.raises(ValueError, match=r"expected shape \(1, 4\+1, N\).*found \(1, 7, 100\)"):
            det.detect(scene_with_people(400, 400, []))


def test_flip_pass_finds_the_same_people():
    image = scene_with_people(1500, 1000, PEOPLE)
    cfg = DetectConfig(tile=512, overlap=0.25, tta=("flip",))
    with Detector(BlobBackend(input_hw=(256, 256)), config=cfg) as det:
        found = det.detect(image)
    assert len(found) == len(PEOPLE)
    for truth in PEOPLE:
        assert max(iou(truth, b) for b in found.xyxy) > 0.85


def test_ensemble_fuses_models_by_weight():
    image = scene_with_people(1500, 1000, PEOPLE[:2])
    strong = BlobBackend(input_hw=(256, 256), edge_score=0.9, whole_score=0.9)
    weak = BlobBackend(input_hw=(256, 256), edge_score=0.3, whole_score=0.3)
    with Detector([weak, strong], weights=[1, 2], config=DetectConfig(tile=512, overlap=0.25)) as det:
        found = det.detect(image)
    assert len(found) == 2
    # WBF 'avg': (1 * 0.3 + 2 * 0.9) / 3 = 0.7 for a box both models found.
    np.testing.assert_allclose(found.scores, 0.7, atol=1e-5)


def test_full_frame_pass_finds_an_object_larger_than_a_tile():
    big = (300, 150, 1000, 850)  # 700 px: no 512 tile holds it
    image = scene_with_people(1500, 1000, [big])
    with Detector(
        BlobBackend(input_hw=(256, 256)), config=DetectConfig(tile=512, overlap=0.25, full_frame=True)
    ) as det:
        found = det.detect(image)
    assert len(found) == 1
    assert iou(found.xyxy[0], big) > 0.95


@pytest.mark.parametrize(
    "bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), "photo.jpg"]
)
def test_detect_refuses_what_is_not_an_8bit_bgr_image(bad):
    with Detector(BlobBackend()) as det:
        with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 BGR array"):
            det.detect(bad)


def test_timings_cover_every_stage_and_close_releases_backends():
    backend = BlobBackend(input_hw=(256, 256))
    det = Detector(backend, config=DetectConfig(tile=512))
    t: dict[str, float] = {}
    det.detect(scene_with_people(800, 600, PEOPLE[:1]), t)
    assert set(t) >= {"slice", "preprocess", "infer", "decode", "merge"} and t["infer"] > 0
    det.close()
    assert backend.closed


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"merge": "soft"}, "merge"),
        ({"conf": 1.5}, "conf"),
        ({"tta": ("rot90",)}, "tta"),
        ({"batch": 0}, "batch"),
        ({"overlap": 0.95}, "overlap"),
        ({"tile": 8}, "tile"),
    ],
)
def test_config_refuses_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DetectConfig(**kwargs)


# --- detect in two steps: candidates, then merge ---------------------------------------------------

TWO_STEP_CASES = [
    # (models, weights, config the candidates are found with, comment)
    (1, None, DetectConfig(tile=512, overlap=0.25), "one model, one pass"),
    (1, None, DetectConfig(tile=512, overlap=0.25, tta=("flip",), full_frame=True), "flip TTA + full frame"),
    (2, [1, 2], DetectConfig(tile=400, overlap=0.2, batch=3), "ensemble of two, fused by weight"),
]


@pytest.mark.parametrize("n_models,weights,cfg,comment", TWO_STEP_CASES, ids=[c[3] for c in TWO_STEP_CASES])
def test_candidates_then_merge_equals_detect_for_every_merge_setting(n_models, weights, cfg, comment):
    from dataclasses import replace

    image = scene_with_people(1500, 1000, PEOPLE)
    scores = [(0.9, 0.6), (0.5, 0.8)][:n_models]
    backends = [BlobBackend(input_hw=(256, 256), edge_score=e, whole_score=w) for e, w in scores]
    with Detector(backends, weights=weights, config=cfg) as det:
        candidates = det.candidates(image)
        calls = sum(len(b.calls) for b in backends)
        assert candidates.batches == calls > 0
        assert len(candidates.passes) == n_models * (2 if cfg.tta else 1)
        for method in ("ios", "nms", "nmm", "wbf"):
            for thr in (0.3, 0.6):
                setting = replace(cfg, merge=method, merge_thr=thr, fusion_iou=0.5)
                got = det.merge(candidates, setting)
                with Detector(
                    [BlobBackend(input_hw=(256, 256), edge_score=e, whole_score=w) for e, w in scores],
                    weights=weights,
                    config=setting,
                ) as one_step:
                    want = one_step.detect(image)
                np.testing.assert_array_equal(got.xyxy, want.xyxy, err_msg=f"{method} {thr}")
                np.testing.assert_array_equal(got.scores, want.scores)
                np.testing.assert_array_equal(got.class_ids, want.class_ids)
        assert sum(len(b.calls) for b in backends) == calls  # merging ran no model


@pytest.mark.parametrize(
    "change",
    [
        {"tile": 640},
        {"overlap": 0.3},
        {"full_frame": True},
        {"conf": 0.5},
        {"iou": 0.5},
        {"max_det": 10},
        {"tta": ("flip",)},
    ],
)
def test_merge_refuses_a_config_the_candidates_were_not_found_with(change):
    from dataclasses import replace

    cfg = DetectConfig(tile=512, overlap=0.25)
    with Detector(BlobBackend(input_hw=(256, 256)), config=cfg) as det:
        candidates = det.candidates(scene_with_people(800, 600, PEOPLE[:1]))
        (name,) = change
        with pytest.raises(ValueError, match=rf"config\.{name}: expected .* found"):
            det.merge(candidates, replace(cfg, **change))
        det.merge(candidates, replace(cfg, batch=2, merge="wbf"))  # batch and merge fields may differ


def test_backend_without_a_gpu_path_says_so_and_the_detector_feeds_it_host_batches():
    backend = BlobBackend(input_hw=(256, 256))
    assert backend.has_gpu_path is False
    with pytest.raises(NotImplementedError, match="BlobBackend has no GPU path"):
        next(backend.infer_views(np.zeros((8, 8, 3), np.uint8), None, 1, 0.25))
    with Detector(backend, config=DetectConfig(tile=512)) as det:
        det.detect(scene_with_people(800, 600, PEOPLE[:1]))
    assert backend.calls  # infer ran


def test_a_backend_that_implements_infer_views_has_a_gpu_path():
    class WithViews(BlobBackend):
        def infer_views(self, image, views, batch, conf):
            yield from ()

    assert WithViews().has_gpu_path is True
