"""One person, one find: the grouping of several drones' sightings by place, time, photo and appearance."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from edgetile.runtime.embedding import DIM, encode_embedding, similarity
from edgetile.runtime.geo.finds import GATE_SIGMAS, MIN_SIGHTING_ERROR_M, FindGrouper, Sighting
from edgetile.runtime.geo.tracks import WGS84_A, WGS84_E2, ground_distance_m

LAT0, LON0 = 55.75, 37.61
T0 = 1_780_000_000.0


def at(north_m: float, east_m: float, lat0: float = LAT0, lon0: float = LON0) -> tuple[float, float]:
    """The point north_m/east_m metres from (lat0, lon0) (local radii of curvature)."""
    s2 = math.sin(math.radians(lat0)) ** 2
    m = WGS84_A * (1 - WGS84_E2) / (1 - WGS84_E2 * s2) ** 1.5
    n = WGS84_A / math.sqrt(1 - WGS84_E2 * s2)
    lon = lon0 + math.degrees(east_m / (n * math.cos(math.radians(lat0))))
    return lat0 + math.degrees(north_m / m), (lon + 180.0) % 360.0 - 180.0


def sighting(
    key: int,
    north_m: float | None = 0.0,
    east_m: float = 0.0,
    *,
    photo: int | None = None,
    drone: str = "a",
    t: float = 0.0,
    error_m: float | None = 4.0,
    class_name: str = "person",
    embedding: str | None = None,
) -> Sighting:
    lat, lon = (None, None) if north_m is None else at(north_m, east_m)
    return Sighting(
        key=key,
        photo=key if photo is None else photo,
        drone_id=drone,
        time=T0 + t,
        lat=lat,
        lon=lon,
        error_m=error_m,
        class_name=class_name,
        embedding=embedding,
    )


def test_two_drones_five_minutes_apart_are_one_find():
    g = FindGrouper()
    a = sighting(1, 0.0, 0.0, drone="a", t=0.0, error_m=4.0)  # drone A at 10:02
    b = sighting(2, 2.0, 2.0, drone="b", t=300.0, error_m=6.0)  # drone B at 10:07, 2.8 m away
    fa, fb = g.add(a), g.add(b)
    assert fa == fb == 1
    assert [m.key for m in g.members(fa)] == [1, 2]
    lat, lon, err = g.position(fa)
    assert err == 4.0  # correlated errors: never better than the best member
    # inverse-variance mean: 1/6^2 / (1/4^2 + 1/6^2) = 16/52 of the way from a to b
    assert ground_distance_m(lat, lon, a.lat, a.lon) == pytest.approx(2.83 * 16 / 52, abs=0.02)


def test_two_people_side_by_side_in_one_photo_stay_two():
    g = FindGrouper()
    ids = [
        g.add(sighting(1, 0.0, 0.0, photo=7, error_m=10.0)),
        g.add(sighting(2, 0.0, 3.0, photo=7, error_m=10.0)),
    ]
    assert ids == [1, 2]
    # the next photo of them: each joins the nearer of the two
    assert g.add(sighting(3, 0.2, 3.1, photo=8, t=2.0, error_m=10.0)) == 2
    assert g.add(sighting(4, 0.1, -0.1, photo=8, t=2.0, error_m=10.0)) == 1


@pytest.mark.parametrize(
    "distance_m, e1, e2, joined",
    [
        (5.0, 3.0, 3.0, True),  # 5 m < 2 * sqrt(3^2 + 3^2) = 8.5 m
        (5.0, 1.0, 1.0, False),  # 5 m > 2 * sqrt(2) = 2.8 m: errors too small to overlap
        (9.0, 3.0, 3.0, False),  # just outside 8.5 m
        (8.0, 3.0, 3.0, True),  # just inside
        (2.5, 0.01, 0.01, True),  # centimetre fixes are floored at 1 m each: 2.8 m
        (3.0, 0.01, 0.01, False),  # two people 3 m apart with centimetre fixes stay two
        (20.0, 2.0, 10.0, True),  # a poor fix reaches further: 2 * sqrt(104) = 20.4 m
        (21.0, 2.0, 10.0, False),
    ],
)
def test_positions_agree_within_twice_the_combined_error(distance_m, e1, e2, joined):
    g = FindGrouper()
    first = g.add(sighting(1, 0.0, 0.0, error_m=e1))
    second = g.add(sighting(2, distance_m * 0.6, distance_m * 0.8, t=60.0, error_m=e2))
    assert (first == second) is joined
    gate = GATE_SIGMAS * math.hypot(max(e1, MIN_SIGHTING_ERROR_M), max(e2, MIN_SIGHTING_ERROR_M))
    assert (distance_m <= gate) is joined


@pytest.mark.parametrize(
    "times, expected",
    [
        ([0, 1799], [1, 1]),  # within the window
        ([0, 1801], [1, 2]),  # outside it
        ([0, 1500, 3200], [1, 1, 1]),  # chains: 3200 is within the window of 1500
        ([0, 3200, 1500], [1, 2, 2]),  # out of order: 1500 could join either, joins the nearer in place
    ],
)
def test_time_window(times, expected):
    g = FindGrouper(window_s=1800.0)
    got = [g.add(sighting(k, 0.0, 0.1 * k, t=t)) for k, t in enumerate(times, 1)]
    assert got == expected


def test_no_coordinates_or_unbounded_error_is_a_find_of_its_own():
    g = FindGrouper()
    assert g.add(sighting(1, 0.0, 0.0)) == 1
    assert g.add(sighting(2, None)) == 2  # not georeferenced
    assert g.position(2) == (None, None, None)
    assert g.add(sighting(3, 0.0, 0.0, error_m=None)) == 3  # ray near the horizon: place unbounded
    assert g.position(3)[2] is None
    assert g.add(sighting(4, 0.0, 0.0)) == 1  # nothing joins the unbounded one, the bounded one is there


def test_classes_never_mix_and_the_closest_find_wins():
    g = FindGrouper()
    assert g.add(sighting(1, 0.0, 0.0, class_name="person")) == 1
    assert g.add(sighting(2, 0.0, 0.0, class_name="dog")) == 2
    assert g.add(sighting(3, 0.0, 6.0, photo=1, error_m=4.0)) == 3  # photo 1 already in find 1
    # within reach of finds 1 and 3; nearer to 3 in normalised distance
    assert g.add(sighting(4, 0.0, 4.0, t=10.0, error_m=4.0)) == 3
    assert g.add(sighting(5, 0.0, 0.5, t=10.0, class_name="dog")) == 2


def test_split_gives_a_new_find_and_it_never_rejoins():
    g = FindGrouper()
    assert [g.add(sighting(k, 0.0, 0.5 * k, t=30.0 * k)) for k in (1, 2, 3)] == [1, 1, 1]
    before = g.position(1)
    new, left = g.split(2)
    assert (new, left) == (2, 1)
    assert [m.key for m in g.members(1)] == [1, 3]
    assert [m.key for m in g.members(2)] == [2]
    assert g.position(1) != before
    assert g.position(2)[:2] == pytest.approx(at(0.0, 1.0), abs=1e-12)
    with pytest.raises(ValueError, match="alone in find 2"):
        g.split(2)
    with pytest.raises(KeyError, match="sighting 99"):
        g.split(99)
    with pytest.raises(KeyError, match="find 42"):
        g.members(42)
    # restoring it into the find it was split from is a contradiction in the store
    g2 = FindGrouper()
    g2.restore(sighting(1, 0.0, 0.5, t=30.0), 1, set())
    with pytest.raises(ValueError, match="split from"):
        g2.restore(sighting(2, 0.0, 1.0, t=60.0), 1, {1})
    # a later sighting still joins one of them (the nearer), and the split one stays apart
    assert g.add(sighting(4, 0.0, 0.9, t=120.0)) in (1, 2)
    assert len(g.members(1)) + len(g.members(2)) == 4


def test_appearance_gate_parts_two_close_people_and_joins_one():
    rng = np.random.default_rng(3)
    person, other = rng.normal(size=DIM), rng.normal(size=DIM)
    same = encode_embedding(person + 0.15 * rng.normal(size=DIM))
    assert similarity(encode_embedding(person), same) > 0.9
    assert similarity(encode_embedding(person), encode_embedding(other)) < 0.5
    first = sighting(1, 0.0, 0.0, drone="a", error_m=3.0, embedding=encode_embedding(person))
    stranger = sighting(2, 1.0, 0.0, drone="b", t=60.0, error_m=3.0, embedding=encode_embedding(other))
    again = sighting(3, 0.5, 0.5, drone="b", t=120.0, error_m=3.0, embedding=same)
    unknown = sighting(4, 0.2, 0.2, drone="c", t=180.0, error_m=3.0)  # a daemon without a model

    g = FindGrouper(appearance_min=0.8)
    assert [g.add(s) for s in (first, stranger, again, unknown)] == [1, 2, 1, 1]

    blind = FindGrouper()  # without appearance_min, place and time decide alone
    assert [blind.add(s) for s in (first, stranger, again, unknown)] == [1, 1, 1, 1]

    with pytest.raises(ValueError, match="sighting 5: embedding: expected base64"):
        g.add(sighting(5, embedding="not an embedding!"))


def test_across_the_antimeridian_and_with_wide_errors():
    g = FindGrouper()
    east = Sighting(1, 1, "a", T0, -16.5, 179.999995, 2.0, "person")
    west = Sighting(2, 2, "b", T0 + 60, -16.5, -179.999995, 2.0, "person")  # about 1 m away
    assert g.add(east) == g.add(west) == 1
    assert abs(g.position(1)[1]) > 179.99999
    # a fix of 200 m reaches further than the grid: found all the same, both ways
    assert g.add(sighting(3, 0.0, 0.0, error_m=200.0)) == 2
    assert g.add(sighting(4, 300.0, 0.0, t=5.0, error_m=5.0)) == 2


def test_refusals():
    with pytest.raises(ValueError, match="both lat and lon"):
        Sighting(1, 1, "a", T0, 55.0, None, 3.0, "person")
    with pytest.raises(ValueError, match="lat: expected degrees"):
        Sighting(1, 1, "a", T0, 95.0, 37.0, 3.0, "person")
    with pytest.raises(ValueError, match="error_m: expected metres"):
        Sighting(1, 1, "a", T0, 55.0, 37.0, -1.0, "person")
    with pytest.raises(ValueError, match="window_s"):
        FindGrouper(window_s=-1.0)
    with pytest.raises(ValueError, match="appearance_min"):
        FindGrouper(appearance_min=2.0)
    g = FindGrouper()
    g.add(sighting(1))
    with pytest.raises(ValueError, match="sighting 1: already in find 1"):
        g.add(sighting(1))
    with pytest.raises(ValueError, match="class 'dog' stored in find 1"):
        g.restore(sighting(2, class_name="dog"), 1, set())
    with pytest.raises(ValueError, match="already has a sighting of photo 1"):
        g.restore(sighting(3, photo=1), 1, set())


def _search(n: int, seed: int, area_m: float = 600.0) -> list[Sighting]:
    """A search: people standing about, three drones seeing them (and noise) in time order."""
    rng = random.Random(seed)
    people = [
        (rng.uniform(0, area_m), rng.uniform(0, area_m), rng.choice(["person", "dog"])) for _ in range(n // 8)
    ]
    out = []
    t = 0.0
    for key in range(1, n + 1):
        t += rng.uniform(0.0, 2.0)
        north, east, cls = rng.choice(people)
        error = rng.choice([0.3, 2.0, 4.0, 8.0, 15.0, 40.0, 150.0])
        located = rng.random() > 0.05
        out.append(
            sighting(
                key,
                north + rng.gauss(0, error / 1.41) if located else None,
                east + rng.gauss(0, error / 1.41),
                photo=key // 3,  # three sightings a photo
                drone="abc"[key % 3],
                t=t,
                error_m=None if rng.random() < 0.02 else error,
                class_name=cls,
            )
        )
    return out


def _reference(sightings: list[Sighting], window_s: float) -> list[int]:
    """The rules by brute force: every find compared with every sighting (no grid, no NumPy)."""
    finds: list[list[Sighting]] = []
    ids = []
    for s in sightings:
        best = None
        if s.lat is not None and s.lon is not None and s.error_m is not None:
            for i, members in enumerate(finds):
                bounded = [m for m in members if m.error_m is not None and m.lat is not None]
                if members[0].class_name != s.class_name or not bounded:
                    continue
                if any(m.photo == s.photo for m in members):
                    continue
                if not any(abs(m.time - s.time) <= window_s for m in members):
                    continue
                w = [1 / max(m.error_m, MIN_SIGHTING_ERROR_M) ** 2 for m in bounded]
                lat = sum(wi * m.lat for wi, m in zip(w, bounded)) / sum(w)
                lon = sum(wi * m.lon for wi, m in zip(w, bounded)) / sum(w)
                err = max(min(m.error_m for m in bounded), MIN_SIGHTING_ERROR_M)
                score = ground_distance_m(s.lat, s.lon, lat, lon) / math.hypot(
                    max(s.error_m, MIN_SIGHTING_ERROR_M), err
                )
                if score <= GATE_SIGMAS and (best is None or score < best[0]):
                    best = (score, i)
        if best is None:
            finds.append([s])
            ids.append(len(finds))
        else:
            finds[best[1]].append(s)
            ids.append(best[1] + 1)
    return ids


def test_grid_finds_what_brute_force_finds():
    stream = _search(1500, seed=11)
    g = FindGrouper(window_s=600.0)
    assert [g.add(s) for s in stream] == _reference(stream, 600.0)


def test_restore_reproduces_the_state():
    stream = _search(1200, seed=5)
    g = FindGrouper(window_s=600.0)
    for s in stream[:1000]:
        g.add(s)
    split_from: dict[int, set[int]] = {}
    for key in (10, 200, 400, 10):
        try:
            new, left = g.split(key)
        except ValueError:  # alone in its find
            continue
        split_from.setdefault(key, set()).add(left)
        assert new > left
    stored = []
    for find_id in range(1, 2000):
        try:
            stored += [(m, find_id) for m in g.members(find_id)]
        except KeyError:
            break
    assert len(stored) == 1000
    random.Random(0).shuffle(stored)
    r = FindGrouper(window_s=600.0)
    for s, find_id in stored:
        r.restore(s, find_id, split_from.get(s.key, set()))
    for _, find_id in stored:
        assert r.members(find_id) == g.members(find_id)
        for got, want in zip(r.position(find_id), g.position(find_id)):
            assert got == want or abs(got - want) < 1e-9  # summed in another order
    # what comes next is grouped the same: the same ids, new finds numbered on from the same point
    assert [r.add(s) for s in stream[1000:]] == [g.add(s) for s in stream[1000:]]


def test_tens_of_thousands_of_sightings():
    # sanity only: the throughput is measured by benchmarks/bench_station.py --grouping-only
    stream = _search(20000, seed=2, area_m=3000.0)
    g = FindGrouper()
    ids = [g.add(s) for s in stream]
    assert max(ids) < len(stream) / 2  # most sightings joined a find
    assert sorted({k for f in set(ids) for k in (m.key for m in g.members(f))}) == list(range(1, 20001))
