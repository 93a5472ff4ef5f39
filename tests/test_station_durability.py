"""Nothing lost, nothing twice: the station and a drone killed with -9 mid-stream, the broker stopped and restarted.

Three real `edgetile serve` drones publish to a real Mosquitto broker (persistence on, as docs/station.md
tells a search team to run it); a real `edgetile station` records what they publish. Every detection
each drone lists in its own /api/review/detections arrives at the station exactly once, every crop
eventually, the person that two drones photographed is one find, and a decision on it is published
once on PREFIX/reviews, heard by a real subscriber.
"""

from __future__ import annotations

import json
import queue
import time
from collections import Counter

import pytest
from mqtt_broker import Broker, Subscriber, free_port
from serve_process import ServeProcess
from station_process import StationProcess, survey_photo, wait_until

from onnx_models import red_blob_model

pytestmark = pytest.mark.slow

FAST = ["--settle", "0", "--poll", "0.1", "--tile", "256"]
TOKEN = "drone-secret"
DRONES = ("alpha", "bravo", "charlie")
# Each drone flies its own strip (its photos 60 m apart, 38 m long: no overlap within a strip); only
# alpha's first photo and bravo's first photo overlap, 20 m apart, both showing the person P.
STRIP_EAST_M = {"alpha": 0.0, "bravo": 0.0, "charlie": 300.0}
STRIP_NORTH_M = {"alpha": 0.0, "bravo": 2000.0, "charlie": 0.0}
SPOTS = [(64, 64), (400, 96), (128, 296), (448, 320), (200, 200)]  # multiples of 8: one detection each


def photo(drops, name: str, n: int) -> None:
    """Photo n of a drone: one to three people, at places no other photo sees (but for P)."""
    if (name, n) == ("alpha", 0):
        survey_photo(drops[name] / "P_A.JPG", 0.0, [(256, 80), (64, 296)], seed=1)
        return
    if (name, n) == ("bravo", 0):
        survey_photo(drops[name] / "P_B.JPG", 20.0, [(256, 280)], seed=2)
        return
    blobs = [SPOTS[(n + k) % len(SPOTS)] for k in range(1 + n % 3)]
    north = STRIP_NORTH_M[name] + 60.0 * (n + 1) + (200.0 if name == "bravo" else 0.0)
    survey_photo(
        drops[name] / f"{name}_{n:04d}.JPG",
        north,
        blobs,
        seed=100 * DRONES.index(name) + n,
        east_m=STRIP_EAST_M[name],
    )


def drone_detections(d: ServeProcess) -> set[tuple[str, str]]:
    items = d.json("/api/review/detections?order=time&limit=1000", token=TOKEN)["items"]
    return {(d.drone_name, it["id"]) for it in items}


def station_sightings(st: StationProcess) -> list[tuple[str, str]]:
    return [(s["drone_id"], s["detection_id"]) for f in st.finds() for s in f["sightings"]]


def test_every_detection_arrives_once_through_kills_and_a_broker_restart(tmp_path):
    model = red_blob_model(tmp_path / "red.onnx")
    broker = Broker(tmp_path / "broker").start()
    (tmp_path / "drone.token").write_text(TOKEN + "\n")
    station_args = [
        "--mqtt",
        f"127.0.0.1:{broker.port}",
        "--mqtt-prefix",
        "search",
        "--state",
        tmp_path / "station",
        "--daemon-token-file",
        tmp_path / "drone.token",
        "--port",
        str(free_port()),
    ]
    drops = {}
    daemons: dict[str, ServeProcess] = {}
    for name in DRONES:
        drops[name] = tmp_path / f"drop-{name}"
        drops[name].mkdir()
        d = ServeProcess(
            tmp_path,
            "--model",
            model,
            "--watch",
            drops[name],
            "--state",
            tmp_path / f"state-{name}",
            *FAST,
            "--token-file",
            tmp_path / "drone.token",
            "--geo",
            "--mqtt",
            f"127.0.0.1:{broker.port}",
            "--mqtt-topic",
            "search",
            "--drone-id",
            name,
            "--port",
            str(free_port()),  # a restarted drone is where it was
        )
        d.drone_name = name
        daemons[name] = d
    station = StationProcess(tmp_path, *station_args)
    team = Subscriber(broker.port, "search/reviews", client_id="team-map")
    try:
        station.start()
        station.wait_subscribed()  # from here the broker keeps the station's messages
        for d in daemons.values():
            d.start()
        for n in range(2):
            for name in DRONES:
                photo(drops, name, n)
        # kill -9 the station as the first detections come in
        wait_until(lambda: len(station_sightings(station)) >= 1, 60, "a first sighting")
        station.kill()
        for n in range(2, 4):  # the drones go on meanwhile
            for name in DRONES:
                photo(drops, name, n)
        # and kill -9 a drone in the middle of its photos
        charlie = daemons["charlie"]
        for n in range(4, 8):
            photo(drops, "charlie", n)
        wait_until(lambda: len(drone_detections(charlie)) > 0, 60, "charlie's first results")
        charlie.kill()
        station = StationProcess(tmp_path, *station_args)
        station.start()
        daemons["charlie"] = charlie = ServeProcess(tmp_path, *charlie.args)
        charlie.drone_name = "charlie"
        charlie.start()
        # the broker goes away while the drones keep photographing, and comes back
        broker.stop()
        for name in DRONES:
            photo(drops, name, 8)
        time.sleep(2.0)
        broker.start()
        expected_photos = {"alpha": 5, "bravo": 5, "charlie": 9}

        def all_in():
            per_drone = {
                n: d.json("/detections?limit=1000", token=TOKEN)["items"] for n, d in daemons.items()
            }
            if any(len(per_drone[n]) != expected_photos[n] for n in DRONES):
                return None
            expected = set().union(*(drone_detections(d) for d in daemons.values()))
            got = station_sightings(station)
            return (expected, got) if set(got) == expected else None

        expected, got = wait_until(all_in, 180, "every drone's detections at the station", interval=0.5)
        counts = Counter(got)
        assert all(v == 1 for v in counts.values()), [k for k, v in counts.items() if v > 1]  # exactly once
        assert len(got) == len(expected) > 20

        # every crop, eventually
        def crops_done():
            s = station.status()["crops"]
            return s["pending"] == 0 and s

        crops = wait_until(crops_done, 180, "every crop fetched", interval=0.5)
        assert crops == {"pending": 0, "ready": len(expected), "given_up": 0, "refused": 0}
        assert all(f["crop_ready"] for f in station.finds())

        # the person photographed by alpha and bravo is one find, with a sighting of each
        finds = station.finds()
        (p,) = [f for f in finds if len(f["sightings"]) > 1]
        assert sorted(p["drones"]) == ["alpha", "bravo"] and len(p["sightings"]) == 2
        assert len(finds) == len(expected) - 1

        # a decision on it goes out once, also across a kill -9 of the station and a repeated decision
        status, _ = station.post(
            "/api/review/decisions", {"id": p["id"], "status": "flagged", "operator": "ann"}
        )
        assert status == 200
        heard = [json.loads(team.get(30).payload)]
        station.kill()
        station = StationProcess(tmp_path, *station_args)
        station.start()
        status, again = station.post(
            "/api/review/decisions", {"id": p["sightings"][0]["id"], "status": "flagged", "operator": "bob"}
        )
        assert status == 200 and again["operator"] == "bob"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                heard.append(json.loads(team.get(0.5).payload))
            except queue.Empty:
                pass
        # QoS 1 may repeat a message whose acknowledgement a kill cut off: the decision id says it is one
        assert {(m["id"], m["decision_id"], m["operator"]) for m in heard} == {
            (p["id"], heard[0]["decision_id"], "ann")
        }
        assert sorted(heard[0]["drones"]) == ["alpha", "bravo"]
        assert station.status()["mqtt"]["bad_messages"] == 0
    finally:
        station.kill()
        for d in daemons.values():
            d.kill()
        team.close()
        broker.stop()
