"""Synthetic aerial scenes: a pure function of the seed, people of the asked sizes, inside the photo, and
the generator's statistics per option (renderers, sizes, distractors, views, terrains) with fixed seeds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgetile.train.synth import (
    DISTRACTORS,
    DIVERSE,
    RENDERERS,
    TERRAINS,
    SceneConfig,
    make_scene,
    write_dataset,
)

DATA = Path(__file__).resolve().parent.parent / "runtime" / "data"

CFG = SceneConfig(
    width=640, height=480, people=(3, 6), person_px=(20, 60), rocks=(5, 10), logs=(2, 4), bushes=(5, 10)
)


def test_a_scene_is_a_pure_function_of_its_seed():
    a, b, c = make_scene(7, CFG), make_scene(7, CFG), make_scene(8, CFG)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes) and a.poses == b.poses
    assert not np.array_equal(a.image, c.image)


def test_people_are_inside_the_photo_and_of_the_asked_size():
    sides = []
    for seed in range(12):
        sc = make_scene(seed, CFG)
        assert sc.image.shape == (480, 640, 3) and sc.image.dtype == np.uint8
        assert len(sc.boxes) == len(sc.class_ids) == len(sc.poses) <= 6
        assert (sc.boxes[:, 0] >= 0).all() and (sc.boxes[:, 2] <= 640).all()
        assert (sc.boxes[:, 1] >= 0).all() and (sc.boxes[:, 3] <= 480).all()
        assert (sc.boxes[:, 2] > sc.boxes[:, 0]).all() and (sc.boxes[:, 3] > sc.boxes[:, 1]).all()
        sides += np.maximum(sc.boxes[:, 2] - sc.boxes[:, 0], sc.boxes[:, 3] - sc.boxes[:, 1]).tolist()
        # The person is drawn where the box says: its pixels differ from the terrain around it.
        for x1, y1, x2, y2 in sc.boxes.astype(int):
            assert sc.image[y1:y2, x1:x2].std() > 3
    # A person's longest side stays within the asked length (rotation, limbs and a little blur aside).
    assert 8 <= min(sides) and max(sides) <= 60 * 1.25
    assert len(sides) >= 12 * 3 * 0.8  # rejection sampling rarely gives up


def test_negatives_and_bad_configs():
    empty = SceneConfig(width=320, height=240, empty_fraction=1.0, rocks=(1, 2), logs=(1, 2), bushes=(1, 2))
    assert len(make_scene(3, empty).boxes) == 0
    for kw, words in [
        ({"width": 10}, "at least 64"),
        ({"people": (3, 1)}, "0 <= lo <= hi"),
        ({"person_px": (4, 10)}, "at least 8 px"),
        ({"seasons": ("monsoon",)}, "expected some of"),
    ]:
        with pytest.raises(ValueError, match=words):
            SceneConfig(**kw)


# The varied scenes, small so that many seeds run quickly; statistics are over fixed seeds.
SMALL_DIVERSE = replace(
    DIVERSE,
    width=640,
    height=480,
    people=(3, 6),
    person_px=(15, 150),
    rocks=(5, 10),
    logs=(2, 4),
    bushes=(5, 10),
)


def test_the_defaults_still_draw_the_bundled_sample():
    truth = json.loads((DATA / "sample.json").read_text())
    sc = make_scene(truth["seed"], SceneConfig(width=4000, height=3000, people=(10, 10), person_px=(30, 120)))
    np.testing.assert_array_equal(sc.boxes, np.array(truth["boxes"], np.float32))
    assert sc.renderers == ["classic"] * 10 and sc.views == ["oblique"] * 10 and not any(sc.occluded)


@pytest.mark.parametrize(
    "renderers",
    [
        ("classic",),  # the first version's people only
        ("limbs",),  # articulated tapered polygons, textured clothes
        ("blobs",),  # soft supersampled ellipses
        RENDERERS,  # a random one per person
    ],
)
def test_every_person_is_drawn_by_one_of_the_asked_renderers(renderers):
    cfg = replace(SMALL_DIVERSE, renderers=renderers)
    scenes = [make_scene(seed, cfg) for seed in range(10)]
    drawn = [r for sc in scenes for r in sc.renderers]
    assert len(drawn) >= 10 * 3 * 0.8 and set(drawn) <= set(renderers)
    for r in renderers:  # each renderer gets a fair share of the people
        assert drawn.count(r) >= len(drawn) / len(renderers) * 0.5, (r, drawn)
    for sc in scenes:
        assert len(sc.boxes) == len(sc.renderers) == len(sc.views) == len(sc.poses) == len(sc.occluded)
        for x1, y1, x2, y2 in sc.boxes.astype(int):
            assert sc.image[y1:y2, x1:x2].std() > 3  # something is drawn inside every box


def test_diverse_sizes_span_15_to_150_px():
    sides = []
    for seed in range(16):
        sc = make_scene(seed, SMALL_DIVERSE)
        assert (
            (sc.boxes[:, :2] >= 0).all() and (sc.boxes[:, 2] <= 640).all() and (sc.boxes[:, 3] <= 480).all()
        )
        sides += np.maximum(sc.boxes[:, 2] - sc.boxes[:, 0], sc.boxes[:, 3] - sc.boxes[:, 1]).tolist()
    assert 6 <= min(sides) <= 25, min(sides)  # a 15 px person seen from above can be shorter still
    assert 100 <= max(sides) <= 150 * 1.3, max(sides)


def test_distractor_counts_follow_the_config():
    cfg = replace(SMALL_DIVERSE, objects=(4, 9))
    kinds: dict[str, int] = {}
    for seed in range(12):
        sc = make_scene(seed, cfg)
        assert 5 <= sc.objects["bush"] <= 10 and 5 <= sc.objects["rock"] <= 10 and 2 <= sc.objects["log"] <= 4
        extra = sum(sc.objects[k] for k in DISTRACTORS)
        assert 4 <= extra <= 9
        for k in DISTRACTORS:
            kinds[k] = kinds.get(k, 0) + sc.objects[k]
    assert all(kinds[k] > 0 for k in DISTRACTORS), kinds
    plain = make_scene(0, CFG)
    assert set(plain.objects) == {"bush", "rock", "log"}  # none of the new kinds unless asked


def test_views_terrains_seasons_and_occlusion_are_drawn_as_asked():
    nadir = [make_scene(seed, replace(SMALL_DIVERSE, views=("nadir",))) for seed in range(8)]
    pairs = [(p, v) for sc in nadir for p, v in zip(sc.poses, sc.views)]
    # From straight above only upright people look different; lying and sitting ones are unchanged.
    assert all(v == ("nadir" if p in ("standing", "walking", "arms_out") else "oblique") for p, v in pairs)
    assert any(v == "nadir" for _, v in pairs)
    tiny = replace(SMALL_DIVERSE, width=256, height=192, people=(1, 1), person_px=(15, 40), objects=(1, 2))
    seen = {(sc.terrain, sc.season) for sc in (make_scene(s, tiny) for s in range(30))}
    assert {t for t, _ in seen} == set(TERRAINS) and "snow" in {s for _, s in seen}
    hidden = [o for s in range(8) for o in make_scene(s, replace(SMALL_DIVERSE, occlusion=1.0)).occluded]
    assert sum(hidden) >= len(hidden) * 0.6
    assert not any(o for s in range(4) for o in make_scene(s, replace(SMALL_DIVERSE, occlusion=0.0)).occluded)


def test_camera_effects_change_pixels_not_boxes():
    sharp = replace(SMALL_DIVERSE, blur=0.0, jpeg_quality=None, noise=(0.0, 0.0))
    rough = replace(SMALL_DIVERSE, blur=1.0, jpeg_quality=(30, 40), noise=(8.0, 9.0))
    for seed in range(3):
        a, b = make_scene(seed, sharp), make_scene(seed, rough)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert np.abs(a.image.astype(int) - b.image).mean() > 2
    again = make_scene(2, rough)
    assert np.array_equal(again.image, make_scene(2, rough).image)  # still a pure function of the seed


def test_write_dataset_is_the_same_with_several_workers(tmp_path):
    one = write_dataset(tmp_path / "one", 3, seed=5, config=CFG)
    two = write_dataset(tmp_path / "two", 3, seed=5, config=CFG, workers=2)
    assert (one / "annotations.json").read_text() == (two / "annotations.json").read_text()
    for f in sorted((one / "JPEGImages").iterdir()):
        assert f.read_bytes() == (two / "JPEGImages" / f.name).read_bytes()


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"renderers": ("cartoon",)}, "renderers: expected some of"),
        ({"renderers": ()}, "renderers: expected some of"),
        ({"terrains": ("desert",)}, "terrains: expected some of"),
        ({"views": ("side",)}, "views: expected some of"),
        ({"distractors": ("car",)}, "distractors: expected some of"),
        ({"occlusion": 1.5}, "occlusion: expected a probability"),
        ({"blur": -0.1}, "blur: expected a probability"),
        ({"noise": (5.0, 1.0)}, "noise: expected a range"),
        ({"jpeg_quality": (0, 90)}, "jpeg_quality: expected None or a range"),
        ({"objects": (5, 2)}, "objects: expected a range"),
    ],
)
def test_bad_variety_options_are_refused(kw, words):
    with pytest.raises(ValueError, match=words):
        SceneConfig(**kw)
