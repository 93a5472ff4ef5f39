"""The station's finds by appearance, with real processes: a Mosquitto broker, `edgetile station`, drones.

Two people P and Q stand 1.5 m apart: within each other's position error (2 m on every fix), so by
position alone the station cannot tell them apart. Drone alpha photographs both in one photo; drone
bravo photographs Q (its fix pulled 0.6 m towards P), then P. The drones' messages are published as
a daemon publishes them (PREFIX/photos, then PREFIX/detections), each detection with the appearance
embedding of its person (P and Q: two orthogonal unit vectors).

- By position alone (what ``FindGrouper`` does without ``appearance_min``): bravo's Q joins P's find
  (the nearest), and so does bravo's P: finds of 3 and 1 sightings.
- With appearance at 0.8: P's two sightings are one find, Q's two another, each seen by both drones.

And a real `edgetile serve --embed` daemon announces its model with its photos, whose threshold the
station then uses.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from mqtt_broker import Broker, Subscriber
from review_browser import LAT0, LON0
from serve_process import ServeProcess, person_photo, write_jpeg
from station_process import M_PER_DEG_LAT, StationProcess, wait_until

from edgetile.runtime.embedding import DIM, encode_embedding
from onnx_models import red_blob_model

ERROR_M = 2.0  # every fix's one-sigma error: P and Q, 1.5 m apart, are within it
MODEL = {"sha256": "0123456789abcdef", "threshold": 0.8}  # the drones' embedding model, as they announce it


def unit(i: int) -> str:
    v = np.zeros(DIM, np.float32)
    v[i] = 1.0
    return encode_embedding(v)


LOOKS = {"P": unit(0), "Q": unit(1)}  # cosine 0: two different people


class Drone:
    """Publishes as `edgetile serve --drone-id NAME --mqtt-topic search` does (its outbox's messages)."""

    def __init__(self, client, name: str, embedder: dict | None = None) -> None:
        self.client, self.name, self.embedder = client, name, embedder
        self.outcome_id = 0

    def photo(self, taken_at: float, north_m: float, people: list[tuple[str, float]]) -> None:
        """One photo with the given people (name, metres east of P's spot at ``north_m`` north of LAT0)."""
        self.outcome_id += 1
        image = f"/sd/{self.name}_{self.outcome_id:04d}.JPG"
        sha = hashlib.sha256(image.encode()).hexdigest()
        common = {"outcome_id": self.outcome_id, "image": image, "sha256": sha}
        times = {"committed_at": taken_at + 1.0, "taken_at": taken_at}
        stamp = {"drone_id": self.name, "api": None}
        self.send(
            "photos",
            {
                **common,
                "width": 4000,
                "height": 3000,
                **times,
                "detections": len(people),
                "footprint": None,
                "gsd_cm": 1.5,
                "position": None,
                "error_m": ERROR_M,
                **stamp,
                "embedder": self.embedder,
            },
        )
        lat = LAT0 + north_m / M_PER_DEG_LAT
        for k, (who, east_m) in enumerate(people):
            record = {
                "bbox": [100.0 + 50 * k, 200.0, 120.0 + 50 * k, 240.0],
                "score": 0.9,
                "class_id": 0,
                "class_name": "person",
                "lat": round(lat, 8),
                "lon": round(LON0 + east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat))), 8),
                "error_m": ERROR_M,
                "embedding": LOOKS[who],
            }
            message = {"image": image, "sha256": sha, **record, "id": f"{self.outcome_id}-{k}"}
            self.send("detections", {**message, "outcome_id": self.outcome_id, "index": k, **times, **stamp})

    def send(self, topic: str, message: dict) -> None:
        self.client.publish(f"search/{topic}", json.dumps(message), qos=1).wait_for_publish(10)


def two_people(alpha: Drone, bravo: Drone, north_m: float, t: float) -> None:
    """P at 0 and Q 1.5 m east of it: alpha sees both, bravo sees Q (fixed 0.6 m east), then P."""
    alpha.photo(t, north_m, [("P", 0.0), ("Q", 1.5)])
    bravo.photo(t + 60, north_m, [("Q", 0.6)])
    bravo.photo(t + 70, north_m, [("P", 0.1)])


def groups(station: StationProcess, near_north_m: float) -> list[list[tuple[str, str]]]:
    """The finds within 100 m of P's spot: each its sightings as (drone, the drone's detection id)."""
    lat = LAT0 + near_north_m / M_PER_DEG_LAT
    out = [
        sorted((s["drone_id"], s["detection_id"]) for s in f["sightings"])
        for f in station.finds()
        if abs(f["lat"] - lat) * M_PER_DEG_LAT < 100
    ]
    return sorted(out, key=lambda g: (-len(g), g))


def settle(station: StationProcess, sightings: int) -> None:
    wait_until(
        lambda: station.status()["sightings"] == sightings, 60, f"{sightings} sightings at the station"
    )


def by_position_alone(alpha_id: str = "alpha", bravo_id: str = "bravo"):
    """What FindGrouper makes of the same sightings without appearance (the oracle for position only)."""
    from edgetile.runtime.geo.finds import FindGrouper, Sighting

    lat = LAT0
    lon = lambda east: LON0 + east / (M_PER_DEG_LAT * math.cos(math.radians(lat)))  # noqa: E731
    sightings = [  # (drone, detection id, photo, time, east, look)
        (alpha_id, "1-0", 1, 0.0, 0.0, "P"),
        (alpha_id, "1-1", 1, 0.0, 1.5, "Q"),
        (bravo_id, "1-0", 2, 60.0, 0.6, "Q"),
        (bravo_id, "2-0", 3, 70.0, 0.1, "P"),
    ]
    grouper = FindGrouper()
    finds: dict[int, list] = {}
    for key, (drone, det, photo, t, east, look) in enumerate(sightings, 1):
        s = Sighting(key, photo, drone, t, lat, lon(east), ERROR_M, "person", LOOKS[look])
        finds.setdefault(grouper.add(s), []).append((drone, det))
    return sorted((sorted(g) for g in finds.values()), key=lambda g: (-len(g), g))


P_AND_Q = [  # by appearance: P's two sightings, Q's two, each seen by both drones
    [("alpha", "1-0"), ("bravo", "2-0")],
    [("alpha", "1-1"), ("bravo", "1-0")],
]
POSITION_ONLY = [  # bravo's Q joins P's find (nearest to its fix), and bravo's P follows
    [("alpha", "1-0"), ("bravo", "1-0"), ("bravo", "2-0")],
    [("alpha", "1-1")],
]


def station_args(tmp_path, broker: Broker, *extra) -> list:
    return [
        "--mqtt",
        f"127.0.0.1:{broker.port}",
        "--mqtt-prefix",
        "search",
        "--state",
        tmp_path / "station",
    ] + [*extra]


def test_position_alone_is_what_the_grouper_does():
    assert by_position_alone() == POSITION_ONLY


@pytest.mark.slow
def test_with_appearance_min_two_people_close_together_are_two_finds_seen_by_both_drones(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    station = StationProcess(tmp_path, *station_args(tmp_path, broker, "--appearance-min", "0.8"))
    sim = Subscriber(broker.port, "search/none", client_id="drones")
    try:
        station.start()
        station.wait_subscribed()
        status = station.status()
        assert status["grouping"] == {
            "by": "position and appearance",
            "appearance_min": 0.8,
            "source": "--appearance-min",
        }
        assert (
            "finds: sightings join by position and appearance, cosine >= 0.8 (--appearance-min)"
            in station.log()
        )
        # the drones run no embedding model they announce (as a daemon without --embed), yet their
        # detections carry embeddings: the option compares them
        two_people(Drone(sim.client, "alpha"), Drone(sim.client, "bravo"), 0.0, 1_714_566_000.0)
        settle(station, 4)
        assert groups(station, 0.0) == P_AND_Q
        assert all(sorted(f["drones"]) == ["alpha", "bravo"] for f in station.finds())
    finally:
        station.kill()
        sim.close()
        broker.stop()


@pytest.mark.slow
def test_the_drones_announced_model_sets_the_rule_for_what_comes_after_it(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    args = station_args(tmp_path, broker)
    station = StationProcess(tmp_path, *args)
    sim = Subscriber(broker.port, "search/none", client_id="drones")
    t = 1_714_566_000.0
    try:
        station.start()
        station.wait_subscribed()
        # no model announced, no option: position alone, whatever the detections carry
        alpha, bravo = Drone(sim.client, "alpha"), Drone(sim.client, "bravo")
        two_people(alpha, bravo, 0.0, t)
        settle(station, 4)
        assert groups(station, 0.0) == POSITION_ONLY == by_position_alone()
        assert station.status()["grouping"] == {
            "by": "position",
            "appearance_min": None,
            "source": "no drone announced an embedding model",
        }

        # the drones (restarted with --embed) announce one model: its threshold from then on
        alpha.embedder = bravo.embedder = MODEL
        two_people(alpha, bravo, 1000.0, t + 600)
        settle(station, 8)
        assert groups(station, 1000.0) == [  # as P_AND_Q: alpha's photo 2, bravo's 3 (Q) and 4 (P)
            [("alpha", "2-0"), ("bravo", "4-0")],
            [("alpha", "2-1"), ("bravo", "3-0")],
        ]
        assert groups(station, 0.0) == POSITION_ONLY  # grouped before: never regrouped
        source = "the threshold of embedding model 0123456789abcdef, announced by alpha, bravo"
        rule = {"by": "position and appearance", "appearance_min": 0.8, "source": source}
        assert station.status()["grouping"] == rule
        assert f"finds: sightings join by position and appearance, cosine >= 0.8 ({source})" in station.log()

        # a restart keeps the announced rule (from the store) and the finds
        before = station.finds()
        station.terminate()
        station = StationProcess(tmp_path, *args)
        station.start()
        assert station.status()["grouping"] == rule
        assert station.finds() == before

        # a third drone announces another model: embeddings of two models are not comparable
        Drone(sim.client, "charlie", {"sha256": "fedcba9876543210", "threshold": 0.7}).photo(
            t + 1200, 5000.0, []
        )
        wait_until(lambda: station.status()["grouping"]["by"] == "position", 30, "position alone")
        assert station.status()["grouping"]["source"] == (
            "the drones announce different embedding models, whose embeddings are not comparable: "
            "0123456789abcdef by alpha, bravo; fedcba9876543210 by charlie"
        )
        two_people(alpha, bravo, 2000.0, t + 1300)
        settle(station, 12)
        assert groups(station, 2000.0) == [
            [("alpha", "3-0"), ("bravo", "5-0"), ("bravo", "6-0")],
            [("alpha", "3-1")],
        ]
        assert station.log().count("different embedding models") == 1  # said once, though alpha repeats
        assert (
            "WARNING: finds: sightings join by position only (the drones announce different" in station.log()
        )
    finally:
        station.kill()
        sim.close()
        broker.stop()


@pytest.mark.slow
def test_a_daemon_with_embed_announces_its_model_and_the_station_takes_its_threshold(tmp_path):
    pytest.importorskip("onnxruntime")
    from test_embedder import colour_embedder

    from edgetile.runtime.files import sha256_file

    broker = Broker(tmp_path / "broker").start()
    embedder = colour_embedder(tmp_path / "embed.onnx")  # stores the threshold 0.9
    station = StationProcess(tmp_path, *station_args(tmp_path, broker))
    heard = Subscriber(broker.port, "search/photos", client_id="listener")
    drop = tmp_path / "drop"
    drop.mkdir()
    drone = ServeProcess(
        tmp_path,
        "--model",
        red_blob_model(tmp_path / "red.onnx"),
        "--embed",
        embedder,
        "--watch",
        drop,
        "--state",
        tmp_path / "state",
        "--settle",
        "0",
        "--poll",
        "0.1",
        "--tile",
        "256",
        "--mqtt",
        f"127.0.0.1:{broker.port}",
        "--mqtt-topic",
        "search",
        "--drone-id",
        "uav-1",
    )
    try:
        station.start()
        station.wait_subscribed()
        drone.start()
        write_jpeg(drop / "a.jpg", person_photo(7))
        ((photo, _),) = heard.collect(1, "search/photos", timeout=60)
        name = sha256_file(embedder)[:16]
        assert photo["embedder"] == {"sha256": name, "threshold": 0.9}
        wait_until(
            lambda: station.status()["grouping"]["appearance_min"] == 0.9, 30, "the announced threshold"
        )
        assert (
            station.status()["grouping"]["source"]
            == f"the threshold of embedding model {name}, announced by uav-1"
        )
    finally:
        drone.kill()
        station.kill()
        heard.close()
        broker.stop()


@pytest.mark.parametrize(
    "embedder,expected",
    [
        (None, None),  # a daemon without --embed
        ({"sha256": "0123456789abcdef", "threshold": 0.8}, {"sha256": "0123456789abcdef", "threshold": 0.8}),
        ({"sha256": "<OnnxBackend>", "threshold": None}, {"sha256": "<OnnxBackend>", "threshold": None}),
        ({"sha256": "ab", "threshold": 1}, {"sha256": "ab", "threshold": 1.0}),
        ("abc", "embedder: expected {sha256, threshold} or null"),
        ({"threshold": 0.8}, "embedder.sha256: expected the model's name"),
        (
            {"sha256": "ab", "threshold": 1.5},
            r"embedder.threshold: expected a cosine similarity in \[-1, 1\]",
        ),
        ({"sha256": "ab", "threshold": True}, "embedder.threshold: expected"),
    ],
)
def test_a_photo_messages_embedder_is_checked(embedder, expected):
    from edgetile.runtime.station.ingest import BadMessage, parse_embedder

    if isinstance(expected, str):
        with pytest.raises(BadMessage, match=expected):
            parse_embedder(embedder)
    else:
        assert parse_embedder(embedder) == expected
