"""Synthetic flight lines: the same people in consecutive overlapping photos, with identities, groups of
alike-dressed people, walkers and the photos' poses, checked by their statistics with fixed seeds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest

pytest.importorskip("pymap3d", reason="synthetic flights need the geo extra (pymap3d)")

from edgetile.runtime.geo import ErrorModel, ground_distance_m, locate_boxes, pose_from_photo  # noqa: E402
from edgetile.train.synth import (  # noqa: E402
    FLIGHT_SCENE,
    FlightConfig,
    render_flight,
    write_flights,
)

SMALL = FlightConfig(
    photos=5, altitude_m=30.0, focal_px=480.0, scene=replace(FLIGHT_SCENE, width=640, height=480)
)


@pytest.fixture(scope="module")
def flights():
    return [render_flight(seed, SMALL) for seed in range(4)]


def test_a_flight_is_a_pure_function_of_its_seed():
    a, b, c = render_flight(1, SMALL), render_flight(1, SMALL), render_flight(2, SMALL)
    assert all(np.array_equal(p.image, q.image) for p, q in zip(a.photos, b.photos))
    assert all(np.array_equal(p.identities, q.identities) for p, q in zip(a.photos, b.photos))
    assert not np.array_equal(a.photos[0].image, c.photos[0].image)


def test_identities_recur_in_consecutive_photos(flights):
    kept, seen = 0, 0
    for f in flights:
        for p, q in zip(f.photos, f.photos[1:]):
            kept += len(set(p.identities.tolist()) & set(q.identities.tolist()))
            seen += len(set(p.identities.tolist()))
        for ph in f.photos:
            assert len(set(ph.identities.tolist())) == len(ph.identities)  # one box per person per photo
            assert ((ph.boxes[:, 2] > ph.boxes[:, 0]) & (ph.boxes[:, 3] > ph.boxes[:, 1])).all()
            assert (
                (ph.boxes[:, :2] >= 0).all()
                and (ph.boxes[:, 2] <= 640).all()
                and (ph.boxes[:, 3] <= 480).all()
            )
    # at 60% overlap a person in one photo is in the next one more often than not
    assert seen > 30 and kept / seen > 0.5
    # every person seen at all is seen in at least two photos on most flights (2.5 photos each on average)
    multi = [
        sum(1 for ph in f.photos if i in ph.identities)
        for f in flights
        for i in {int(x) for ph in f.photos for x in ph.identities}
    ]
    assert np.mean(np.array(multi) >= 2) > 0.6


@pytest.mark.parametrize("overlap", [0.3, 0.6, 0.8])
def test_consecutive_photos_overlap_as_asked(overlap):
    f = render_flight(0, replace(SMALL, overlap=overlap, photos=4, people=(0, 0), groups=(0, 0)))
    length_m = 480 * SMALL.gsd_m
    shared = [
        1 - ground_distance_m(p.pose.lat, p.pose.lon, q.pose.lat, q.pose.lon) / length_m
        for p, q in zip(f.photos, f.photos[1:])
    ]
    # the true camera strays about a metre from the line (jitter_m): 0.03 of a 30 m long photo
    assert abs(np.mean(shared) - overlap) < 0.04


def test_groups_of_alike_dressed_people_stand_close_together(flights):
    groups = 0
    for f in flights:
        by_group: dict[int, list] = {}
        for p in f.people:
            if p.group is not None:
                by_group.setdefault(p.group, []).append(p)
        for members in by_group.values():
            assert len(members) >= 2
            groups += 1
            assert len({m.renderer for m in members}) == 1
            tops = np.array([m.outfit[0] for m in members])
            # the same garments in slightly different shades: within 30 grey levels of the group's mean
            assert np.abs(tops - tops.mean(axis=0)).max() < 30
            # each stands next to another within group_spacing_m
            for m in members:
                near = min(
                    ground_distance_m(m.lat[0], m.lon[0], o.lat[0], o.lon[0]) for o in members if o is not m
                )
                assert near <= SMALL.group_spacing_m[1] + 1e-6
        # and they are photographed together: a photo with two members of one group in it
        assert (
            any(
                len({int(i) for i in ph.identities if f.people[int(i)].group == g}) >= 2
                for ph in f.photos
                for g in by_group
            )
            or not by_group
        )
    assert groups >= 4  # groups=(1, 3) per flight


def test_walkers_move_and_distractors_lie_on_the_ground(flights):
    walkers = [p for f in flights for p in f.people if p.walking]
    assert walkers and all(p.pose == "walking" for p in walkers)
    for p in walkers:
        steps = [ground_distance_m(a, b, c, d) for a, b, c, d in zip(p.lat, p.lon, p.lat[1:], p.lon[1:])]
        assert SMALL.speed_m[0] - 0.01 <= min(steps) and max(steps) <= SMALL.speed_m[1] + 0.01
    assert all(sum(f.objects.get(k, 0) for k in ("bag", "tent", "animal", "tarp")) > 0 for f in flights)


def test_a_box_georeferenced_with_the_true_pose_lands_on_the_person(flights):
    for f in flights[:2]:
        for ph in f.photos:
            cut = (
                (ph.boxes[:, 0] > 0) & (ph.boxes[:, 1] > 0) & (ph.boxes[:, 2] < 640) & (ph.boxes[:, 3] < 480)
            )
            for fix, ident in zip(locate_boxes(ph.pose, ph.boxes[cut], ErrorModel()), ph.identities[cut]):
                p = f.people[int(ident)]
                assert ground_distance_m(fix.lat, fix.lon, p.lat[ph.index], p.lon[ph.index]) < 0.15


def test_written_photos_carry_the_recorded_pose_and_identities(tmp_path):
    out = write_flights(tmp_path / "fl", 2, seed=3, config=SMALL, crops=tmp_path / "crops")
    truth = json.loads((out / "flights.json").read_text())["flights"]
    coco = json.loads((out / "annotations.json").read_text())
    assert len(truth) == 2 and len(coco["images"]) == 10
    assert {a["identity"] for a in coco["annotations"]} == {
        i for f in truth for ph in f["photos"] for i in ph["identities"]
    }
    f = render_flight(3, SMALL)
    errors = []
    for ph, rec in zip(f.photos, truth[0]["photos"]):
        pose = pose_from_photo(out / rec["file"])  # what detect --format geojson reads
        assert abs(pose.lat - ph.recorded.lat) < 1e-8 and abs(pose.agl_m - ph.recorded.agl_m) < 1e-6
        assert np.allclose(pose.rotation, ph.recorded.rotation, atol=1e-9) and pose.focal_px == 480.0
        for fix, ident in zip(locate_boxes(pose, ph.boxes), ph.identities):
            p = f.people[int(ident)]
            errors.append(ground_distance_m(fix.lat, fix.lon, p.lat[ph.index], p.lon[ph.index]))
    # the recorded pose is off as a drone's is: metres, not centimetres, and not tens of metres
    assert 0.3 < np.median(errors) < 5.0 and max(errors) < 12.0
    # identity crops: one PNG per annotated box, in one folder per person
    crops = sorted((tmp_path / "crops").glob("*/*.png"))
    assert len(crops) == len(coco["annotations"])
    assert {c.parent.name for c in crops} == {a["identity"] for a in coco["annotations"]}
    # square windows of 1.25 times the box's longer side (at least 16 px), as the embedder cuts them
    sides = [cv2.imread(str(c)).shape[:2] for c in crops]
    assert all(h == w >= 16 for h, w in sides)
    longest = [max(a["bbox"][2], a["bbox"][3]) for a in coco["annotations"]]
    assert sorted(h for h, _ in sides) == sorted(max(16, math.ceil(1.25 * v)) for v in longest)


def test_the_command_writes_flights(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "edgetile.runtime.cli",
        "synth",
        "flight",
        str(tmp_path / "out"),
        "--photos",
        "2",
    ]
    cmd += ["--size", "320x240", "--altitude", "20", "--crops", str(tmp_path / "crops"), "-q"]
    subprocess.run(cmd, check=True)
    assert len(list((tmp_path / "out" / "JPEGImages").glob("*.jpg"))) == 2
    bad = subprocess.run(cmd[:6] + ["--overlap", "1.0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--overlap" in bad.stderr


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"photos": 0}, "photos: expected at least 1"),
        ({"overlap": 1.0}, "overlap: expected a fraction"),
        ({"group_size": (1, 3)}, "groups of at least 2"),
        ({"walkers": 1.5}, "walkers: expected a probability"),
        ({"alt_sigma_m": 20.0}, "well under the altitude"),
    ],
)
def test_bad_flight_configs_are_refused(kw, words):
    with pytest.raises(ValueError, match=words):
        FlightConfig(**kw)
