"""Synthetic aerial scenes: a pure function of the seed, people of the asked sizes, inside the photo."""

from __future__ import annotations

import numpy as np
import pytest

from edgetile.train.synth import SceneConfig, make_scene

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
