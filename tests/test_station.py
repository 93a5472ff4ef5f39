"""`edgetile station` with real processes: a Mosquitto broker, two `edgetile serve` drones, the station.

Two drones photograph overlapping ground: the same person seen by both is one find with two
sightings; crops and photos come from the drones' APIs with their token; a decision goes out once
on PREFIX/reviews; a split is kept; bad and repeated messages are counted and recorded once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import geojson
import pytest
from mqtt_broker import Broker, Subscriber
from serve_process import ServeProcess
from station_process import StationProcess, hold_record, survey_photo, wait_until
from test_review_serve import Events

from onnx_models import red_blob_model

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

FAST = ["--settle", "0", "--poll", "0.1", "--tile", "256"]
DRONE_TOKEN, STATION_TOKEN = "drone-secret", "station-secret"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


def test_help_teaches_and_bad_options_are_usage_errors(tmp_path, model):
    cli = [sys.executable, "-m", "edgetile.runtime.cli"]
    out = subprocess.run([*cli, "station", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for words in (
        "--mqtt HOST[:PORT]",
        "--daemon-token-file",
        "persistence true",
        "--find-window-s",
        "--appearance-min COS",
        "announce",
        "docs/station.md",
    ):
        assert words in " ".join(out.stdout.split()) or words in out.stdout, words
    out = subprocess.run(
        [*cli, "station", "--state", str(tmp_path / "s")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "--mqtt" in out.stderr
    out = subprocess.run(
        [*cli, "station", "--mqtt", "127.0.0.1:1", "--host", "0.0.0.0", "--state", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "needs --token-file" in out.stderr
    out = subprocess.run(
        [*cli, "serve", "--model", str(model), "--state", str(tmp_path / "d"), "--drone-id", "a b"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "--drone-id: expected a name" in out.stderr, out.stderr


def drone(tmp_path, model, name: str, broker: Broker, token_file) -> tuple[ServeProcess, object]:
    drop = tmp_path / f"drop-{name}"
    drop.mkdir()
    d = ServeProcess(
        tmp_path,
        "--model",
        model,
        "--watch",
        drop,
        "--state",
        tmp_path / f"state-{name}",
        *FAST,
        "--token-file",
        token_file,
        "--geo",
        "--mqtt",
        f"127.0.0.1:{broker.port}",
        "--mqtt-topic",
        "search",
        "--drone-id",
        name,
    )
    return d, drop


def daemon_detections(d: ServeProcess) -> list[dict]:
    return d.json("/api/review/detections?order=time&limit=1000", token=DRONE_TOKEN)["items"]


@pytest.mark.slow
def test_two_drones_one_person_one_find_with_crops_photos_decisions_splits_and_exports(tmp_path, model):
    broker = Broker(tmp_path / "broker").start()
    (tmp_path / "drone.token").write_text(DRONE_TOKEN + "\n")
    (tmp_path / "station.token").write_text(STATION_TOKEN + "\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        gcs_port = s.getsockname()[1]
    gcs = mavutil.mavlink_connection(
        f"udpin:127.0.0.1:{gcs_port}", dialect="ardupilotmega", source_system=255
    )
    station = StationProcess(
        tmp_path,
        "--mqtt",
        f"127.0.0.1:{broker.port}",
        "--mqtt-prefix",
        "search",
        "--state",
        tmp_path / "station",
        "--token-file",
        tmp_path / "station.token",
        "--daemon-token-file",
        tmp_path / "drone.token",
        "--mavlink-out",
        f"udpout:127.0.0.1:{gcs_port}",
    )
    sub = Subscriber(broker.port, "search/reviews", client_id="team-map")
    a, drop_a = drone(tmp_path, model, "alpha", broker, tmp_path / "drone.token")
    b, drop_b = drone(tmp_path, model, "bravo", broker, tmp_path / "drone.token")
    try:
        station.start()
        station.wait_subscribed()
        live = Events(station.url, STATION_TOKEN)  # what the page hears
        a.start()
        b.start()
        # the person P at 10.4 m north of alpha's photo centre (feet at row 88) is at row 288 in bravo's
        # photo taken 20 m further north; alpha also sees Q, far from P
        survey_photo(drop_a / "A_0001.JPG", 0.0, [(256, 80), (64, 296)], seed=1)
        survey_photo(drop_b / "B_0001.JPG", 20.0, [(256, 280)], seed=2)
        wait_until(
            lambda: len(daemon_detections(a)) == 2 and len(daemon_detections(b)) == 1, what="3 detections"
        )

        def settled():
            finds = station.finds(STATION_TOKEN)
            n = sum(len(f["sightings"]) for f in finds)
            return n == 3 and all(f["crop_ready"] for f in finds) and finds

        finds = wait_until(settled, 90, "3 sightings with their crops at the station")
        (p,) = [f for f in finds if len(f["sightings"]) == 2]
        (q,) = [f for f in finds if len(f["sightings"]) == 1]
        assert sorted(p["drones"]) == ["alpha", "bravo"] and q["drones"] == ["alpha"]
        assert p["id"].startswith("f-") and all(s["id"].startswith("s-") for s in p["sightings"])
        assert p["source"] == "station" and p["status"] == "unreviewed" and p["lat"] is not None
        # each sighting carries its own photo's size, as its drone has it (the page places its box with it)
        on_drone = {
            (name, it["id"]): (it["photo_width"], it["photo_height"])
            for name, d in (("alpha", a), ("bravo", b))
            for it in daemon_detections(d)
        }
        assert len(on_drone) == 3 and all(None not in size for size in on_drone.values())
        for f in finds:
            for s in f["sightings"]:
                assert (s["photo_width"], s["photo_height"]) == on_drone[s["drone_id"], s["detection_id"]], s
        # the find's place lies between its sightings' places
        lats = sorted(s["lat"] for s in p["sightings"])
        assert lats[0] - 1e-6 <= p["lat"] <= lats[1] + 1e-6
        heard: list[tuple[str, dict]] = []

        def live_has(kind, match):
            while not live.events.empty():
                heard.append(live.events.get()[:2])
            return any(k == kind and match(data) for k, data in heard)

        wait_until(lambda: live_has("detection", lambda f: f["id"] == p["id"] and len(f["sightings"]) == 2))
        wait_until(lambda: live_has("crop", lambda f: f["id"] == p["id"] and f["crop_ready"]))
        wait_until(lambda: live_has("drone", lambda d: d["id"] == "bravo" and d["last"] is not None))

        # crops and photos come from the drones, with their token
        status, headers, crop = station.request(f"/api/review/crops/{p['id']}", token=STATION_TOKEN)
        assert status == 200 and headers["content-type"] == "image/jpeg" and crop[:2] == b"\xff\xd8"
        assert station.request(f"/api/review/crops/{p['id']}")[0] == 401  # the station's own token
        photo_of_a = next(s for s in p["sightings"] if s["drone_id"] == "alpha")["outcome_id"]
        status, _, body = station.request(f"/images/{photo_of_a}", token=STATION_TOKEN)
        a_item = next(it for it in daemon_detections(a) if it["image"].endswith("A_0001.JPG"))
        assert status == 200 and body == a.request(f"/images/{a_item['outcome_id']}", token=DRONE_TOKEN)[2]
        assert station.request(f"/api/review/overlays/{photo_of_a}", token=STATION_TOKEN)[0] == 200

        # the map: both drones in their colours with their last position, every footprint
        m = station.json("/api/review/map", token=STATION_TOKEN)
        drones = {d["id"]: d for d in m["drones"]}
        assert set(drones) == {"alpha", "bravo"} and drones["alpha"]["color"] != drones["bravo"]["color"]
        assert all(d["online"] and d["last"]["lat"] is not None for d in drones.values())
        assert drones["alpha"]["api"] == a.url and m["tracks"] == []
        assert sorted(ph["drone_id"] for ph in m["photos"]) == ["alpha", "bravo"]
        assert all(len(ph["footprint"]) == 4 for ph in m["photos"])
        assert station.json("/api/review/mode", token=STATION_TOKEN) == {"mode": "station"}
        assert a.json("/api/review/mode", token=DRONE_TOKEN) == {"mode": "daemon"}

        # a decision applies to the find (here named by one of its sightings), and goes out once
        sighting = p["sightings"][1]["id"]
        status, got = station.post(
            "/api/review/decisions", {"id": sighting, "status": "confirmed", "operator": "ann"}, STATION_TOKEN
        )
        assert status == 200 and got["id"] == p["id"] and got["status"] == "confirmed", got
        status, _ = station.post(
            "/api/review/decisions", {"id": p["id"], "status": "confirmed", "operator": "bob"}, STATION_TOKEN
        )
        assert status == 200
        ((msg, _),) = sub.collect(1, "search/reviews", timeout=30)
        assert (msg["id"], msg["status"], msg["operator"]) == (p["id"], "confirmed", "ann")
        assert sorted(msg["drones"]) == ["alpha", "bravo"] and len(msg["sightings"]) == 2
        with pytest.raises(Exception):  # noqa: B017 - queue.Empty: bob's second confirmation is not news
            sub.collect(1, "search/reviews", timeout=3)
        wait_until(lambda: live_has("decision", lambda f: f["id"] == p["id"] and f["status"] == "confirmed"))
        live.close()
        texts = []  # the ground control station hears the find once too
        while (m := gcs.recv_match(type="STATUSTEXT", blocking=True, timeout=3)) is not None:
            texts.append(m.text)
        where, name = f"{got['lat']:.5f},{got['lon']:.5f}", got["image"].rsplit("/", 1)[-1]
        long = f"edgetile: CONFIRMED person at {where} ({name})"
        assert texts == [long if len(long) <= 50 else f"CONFIRMED person {where} {name}"[:50]]
        history = station.json(f"/api/review/detections/{sighting}/history", token=STATION_TOKEN)
        assert [h["operator"] for h in history["history"]] == ["ann", "bob"]

        # exports: one row per find, with its sightings and drones
        doc = geojson.loads(station.request("/api/review/finds.geojson", token=STATION_TOKEN)[2].decode())
        assert doc.is_valid and len(doc["features"]) == 1
        props = doc["features"][0]["properties"]
        assert props["sightings"] == 2 and sorted(props["drones"]) == ["alpha", "bravo"]
        assert f"2 sighting(s) by {', '.join(props['drones'])}" in props["description"]  # in time order
        for ext in ("kml", "gpx", "csv", "png"):
            assert station.request(f"/api/review/finds.{ext}", token=STATION_TOKEN)[0] == 200

        # a split: bravo's sighting was someone else after all
        b_sighting = next(s["id"] for s in p["sightings"] if s["drone_id"] == "bravo")
        status, split = station.post(
            "/api/review/finds/split", {"sighting": b_sighting, "operator": "ann"}, STATION_TOKEN
        )
        assert status == 200, split
        assert [s["id"] for s in split["find"]["sightings"]] == [b_sighting]
        assert split["from"]["id"] == p["id"] and len(split["from"]["sightings"]) == 1
        status, body = station.post(
            "/api/review/finds/split", {"sighting": b_sighting, "operator": "ann"}, STATION_TOKEN
        )
        assert status == 409, body
        assert (
            station.post("/api/review/finds/split", {"sighting": "s-999", "operator": "ann"}, STATION_TOKEN)[
                0
            ]
            == 404
        )
        status, body = station.post(
            "/api/review/operator-boxes",
            {"outcome_id": 1, "bbox": [0, 0, 4, 4], "operator": "ann"},
            STATION_TOKEN,
        )
        assert status == 405 and "draws no boxes" in body["detail"]

        # a bad message is counted and skipped; a repeated one is recorded once
        sub.client.publish("search/detections", b"not json", qos=1).wait_for_publish(10)
        sub.client.publish("search/detections", json.dumps({"drone_id": "alpha"}), qos=1).wait_for_publish(10)
        wait_until(lambda: station.status(STATION_TOKEN)["mqtt"]["bad_messages"] == 2, 30, "2 bad messages")
        assert "message ignored: expected a JSON object" in station.log()
        station.terminate()
        station = StationProcess(tmp_path, *station.args)  # the same finds after a restart, split included
        station.start()
        after = station.finds(STATION_TOKEN)
        assert sorted(len(f["sightings"]) for f in after) == [1, 1, 1]
        assert next(f for f in after if f["id"] == p["id"])["status"] == "confirmed"
        assert station.status(STATION_TOKEN)["sightings"] == 3
    finally:
        for proc in (station, a, b):
            proc.kill()
        sub.close()
        gcs.close()
        broker.stop()


@pytest.mark.slow
def test_a_message_received_but_not_yet_recorded_comes_again_after_a_kill_9(tmp_path, model):
    broker = Broker(tmp_path / "broker").start()
    (tmp_path / "drone.token").write_text(DRONE_TOKEN + "\n")
    args = ["--mqtt", f"127.0.0.1:{broker.port}", "--mqtt-prefix", "search", "--state", tmp_path / "station"]
    args += ["--daemon-token-file", tmp_path / "drone.token"]
    held = tmp_path / "held"
    station = StationProcess(tmp_path, *args, prelude=hold_record(2, held))
    a, drop = drone(tmp_path, model, "alpha", broker, tmp_path / "drone.token")
    try:
        station.start()
        station.wait_subscribed()
        a.start()
        for n in range(3):
            survey_photo(drop / f"A_{n}.JPG", 100.0 * n, [(256, 80)], seed=n)
        wait_until(held.exists, 60, "the second detection in the station's hands")
        station.kill()  # received, not recorded, not acknowledged
        station = StationProcess(tmp_path, *args)
        station.start()
        wait_until(lambda: len(daemon_detections(a)) == 3, 60, "the drone's 3 detections")
        expected = {("alpha", it["id"]) for it in daemon_detections(a)}

        def arrived():
            got = [(s["drone_id"], s["detection_id"]) for f in station.finds() for s in f["sightings"]]
            return got if set(got) == expected else None

        got = wait_until(arrived, 60, "every detection, the held one again from the broker")
        assert sorted(got) == sorted(expected)  # once each
    finally:
        station.kill()
        a.kill()
        broker.stop()


def _exif_photo(path, gps_time=None, original=None, offset=None):
    from PIL import Image, TiffImagePlugin

    exif = Image.Exif()
    if gps_time is not None:
        date, (h, m, s) = gps_time
        gps = exif.get_ifd(0x8825)
        gps[29] = date
        gps[7] = tuple(TiffImagePlugin.IFDRational(v) for v in (h, m, s))
    if original is not None:
        sub = exif.get_ifd(0x8769)
        sub[0x9003] = original
        if offset is not None:
            sub[0x9011] = offset
    Image.new("RGB", (8, 8)).save(path, exif=exif)
    return path


NOON_30 = 1714566615.0  # 2024-05-01T12:30:15Z


@pytest.mark.parametrize(
    "kw,name,expected",
    [
        ({"gps_time": ("2024:05:01", (12, 30, 15))}, "", NOON_30),  # GPS time is UTC
        ({"original": "2024:05:01 15:30:15", "offset": "+03:00"}, "", NOON_30),  # local time with its offset
        (
            {"original": "2024:05:01 15:30:15"},
            "",
            None,
        ),  # a local time without offset could be any of 26 hours
        ({}, "rtsp://cam#t=2024-05-01T12:30:15.500Z", NOON_30 + 0.5),  # a live frame: its grab time
        ({}, "", None),
    ],
)
def test_a_photos_time_is_read_only_where_it_is_placed_in_utc(tmp_path, kw, name, expected):
    from edgetile.runtime.geo.pose import photo_time

    assert photo_time(_exif_photo(tmp_path / "p.jpg", **kw), name) == expected
