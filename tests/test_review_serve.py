"""The review API on a real `edgetile serve` process: decisions through restarts and kill -9, live events
between two clients, an operator's box on the ground, finds on MQTT, exports and refusals over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import queue
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import gpxpy
import numpy as np
import pytest
from geo_photos import dji_values, write_photo
from mqtt_broker import Broker, Subscriber
from serve_process import ServeProcess, person_photo, write_jpeg

from edgetile.runtime.geo import locate_boxes, pose_from_photo
from onnx_models import red_blob_model

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

pytestmark = pytest.mark.slow
TOKEN = "field-token"
FAST = ["--settle", "0", "--poll", "0.1", "--tile", "256"]
LAT0, LON0 = 55.75, 37.62


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


class Events:
    """A client of /api/review/events reading in a thread (the token in the header, as the page sends it)."""

    def __init__(self, url: str, token: str | None) -> None:
        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.conn.request(
            "GET", "/api/review/events", headers={"Authorization": f"Bearer {token}"} if token else {}
        )
        self.response = self.conn.getresponse()
        self.events: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        kind, data = None, []
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif not line and kind is not None:
                    self.events.put((kind, json.loads("".join(data)), time.time()))
                    kind, data = None, []
        except (
            OSError,
            ValueError,
            AttributeError,
            http.client.HTTPException,
        ):  # AttributeError: closed meanwhile
            return  # closed by the test or the daemon

    def wait(self, kind: str, match, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} event matching within {timeout} s")
            try:
                k, data, at = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if k == kind and match(data):
                return data, at

    def close(self) -> None:
        self.conn.close()


def post(d: ServeProcess, path: str, body: dict, token: str | None = TOKEN, headers: dict | None = None):
    status, _, raw = d.request(
        path,
        "POST",
        json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        token=token,
    )
    return status, json.loads(raw) if raw else None


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_decisions_survive_restart_and_kill_9_and_two_clients_see_each_other_live(tmp_path, model):
    drop, state = tmp_path / "drop", tmp_path / "state"
    drop.mkdir()
    for i in range(3):
        write_jpeg(drop / f"p{i}.jpg", person_photo(i))
    args = ["--model", model, "--watch", drop, "--state", state, "--token", TOKEN, *FAST]
    d = ServeProcess(tmp_path, *args).start()
    a = b = None
    try:
        d.wait_for(lambda: len(d.all_pages("/detections", token=TOKEN)) == 3, what="3 photos")
        items = d.json("/api/review/detections?order=time", token=TOKEN)["items"]
        assert len(items) >= 3 and all(it["origin"] == "model" for it in items)
        ids = sorted(it["id"] for it in items)
        a, b = Events(d.url, TOKEN), Events(d.url, TOKEN)
        time.sleep(0.5)  # both streams have taken their starting marks

        # the refusals, over real HTTP
        assert d.request("/api/review/detections")[0] == 401
        assert d.request("/api/review/crops/" + ids[0])[0] == 401
        assert (
            post(d, "/api/review/decisions", {"id": ids[0], "status": "confirmed", "operator": "x"}, None)[0]
            == 401
        )
        status, _ = post(
            d,
            "/api/review/decisions",
            {"id": ids[0], "status": "confirmed", "operator": "x"},
            headers={"Origin": "http://attacker.example"},
        )
        assert status == 403
        assert d.request("/openapi.json")[0] == 401 and d.request("/openapi.json", token=TOKEN)[0] == 200

        # client A decides; client B hears it
        status, body = post(
            d, "/api/review/decisions", {"id": ids[0], "status": "flagged", "operator": "ann"}
        )
        assert status == 200 and body["status"] == "flagged"
        heard, _ = b.wait("decision", lambda x: x["id"] == ids[0])
        assert (heard["status"], heard["operator"]) == ("flagged", "ann")
        post(
            d,
            "/api/review/decisions",
            {"id": ids[1], "status": "rejected", "operator": "bob", "note": "rock"},
        )
        assert a.wait("decision", lambda x: x["id"] == ids[1])[0]["note"] == "rock"

        # a new photo's detection reaches both within 2 s of its commit
        write_jpeg(drop / "p3.jpg", person_photo(3))
        for client in (a, b):
            new, at = client.wait("detection", lambda x: x["image"].endswith("p3.jpg"))
            assert new["status"] == "unreviewed"
            assert at - epoch(new["time"]) < 2.0, f"heard {at - epoch(new['time']):.2f} s after the commit"
        post(d, "/api/review/decisions", {"id": ids[2], "status": "confirmed", "operator": "ann"})
        post(d, "/api/review/decisions", {"id": ids[0], "status": "confirmed", "operator": "bob"})
        a.close()
        a = None

        assert (
            d.terminate(timeout=20) == 0
        )  # a clean stop, B still listening: its stream ends with the daemon
        b.close()
        b = None
        d = ServeProcess(tmp_path, *args).start()
        by_id = {it["id"]: it for it in d.json("/api/review/detections?limit=1000", token=TOKEN)["items"]}
        assert [by_id[i]["status"] for i in ids[:3]] == ["confirmed", "rejected", "confirmed"]
        hist = d.json(f"/api/review/detections/{ids[0]}/history", token=TOKEN)["history"]
        assert [(h["status"], h["operator"]) for h in hist] == [("flagged", "ann"), ("confirmed", "bob")]

        # kill -9 right after an answered decision: it was committed before the answer
        status, _ = post(
            d, "/api/review/decisions", {"id": ids[1], "status": "unreviewed", "operator": "ann"}
        )
        assert status == 200
        d.kill()
        d = ServeProcess(tmp_path, *args).start()
        by_id = {it["id"]: it for it in d.json("/api/review/detections?limit=1000", token=TOKEN)["items"]}
        assert [by_id[i]["status"] for i in ids[:3]] == ["confirmed", "unreviewed", "confirmed"]
        assert len(d.json(f"/api/review/detections/{ids[1]}/history", token=TOKEN)["history"]) == 2
        counts = d.json("/api/review/counts", token=TOKEN)
        assert (counts["confirmed"], counts["rejected"], counts["flagged"]) == (2, 0, 0)
        assert counts["unreviewed"] == counts["total"] - 2 == len(by_id) - 2
        assert d.terminate() == 0
    finally:
        for client in (a, b):
            if client is not None:
                client.close()
        d.kill()


PW, PH, PF, PAGL = 512, 384, 500.0, 50.0


def blob_photo(path, cell_xy, **kw):
    img = np.full((PH, PW, 3), (60, 110, 70), np.uint8)
    x, y = cell_xy
    img[y : y + 8, x : x + 8] = (0, 0, 255)
    return write_photo(path, img, **kw)


def test_finds_go_to_mqtt_and_mavlink_operator_boxes_are_georeferenced_and_the_map_and_exports_hold(
    tmp_path, model
):
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "drone1/#")
    drop = tmp_path / "drop"
    drop.mkdir()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        gcs_port = s.getsockname()[1]
    gcs = mavutil.mavlink_connection(
        f"udpin:127.0.0.1:{gcs_port}", dialect="ardupilotmega", source_system=255
    )
    d = ServeProcess(
        tmp_path,
        "--model",
        model,
        "--watch",
        drop,
        "--state",
        tmp_path / "state",
        *FAST,
        "--geo",
        "--ground-above-takeoff",
        "0",
        "--mqtt",
        f"127.0.0.1:{broker.port}",
        "--mqtt-topic",
        "drone1",
        "--mavlink-out",
        f"udpout:127.0.0.1:{gcs_port}",
    )
    try:
        d.start()
        xmp = dji_values(rel_alt=PAGL, abs_alt=180.0, pitch=-90.0, focal_px=PF)
        path = blob_photo(drop / "DJI_0001.JPG", (280, 136), lat=LAT0, lon=LON0, xmp=xmp)
        items = d.wait_for(
            lambda: (lambda r: r["items"] if r["counts"]["total"] == 1 else None)(
                d.json("/api/review/detections")
            ),
            what="1 detection",
        )
        det = items[0]
        assert det["lat"] is not None
        sub.collect(1, "drone1/detections", timeout=30)  # the detection itself, as before

        status, body = post(
            d, "/api/review/decisions", {"id": det["id"], "status": "rejected", "operator": "ann"}
        )
        assert status == 200
        status, body = post(
            d, "/api/review/decisions", {"id": det["id"], "status": "flagged", "operator": "ann"}
        )
        assert status == 200
        ((msg, m),) = sub.collect(1, "drone1/reviews", timeout=30)  # the rejection sent nothing
        assert (msg["id"], msg["status"], msg["operator"]) == (det["id"], "flagged", "ann")
        assert msg["lat"] == det["lat"] and msg["decision_id"] >= 2
        while True:  # the ground station hears the find (after the detection's own alert)
            text = gcs.recv_match(type="STATUSTEXT", blocking=True, timeout=20)
            assert text is not None, "the ground station heard no STATUSTEXT of the find"
            if text.text.startswith("FLAGGED"):
                break
        assert text.text == f"FLAGGED person {det['lat']:.5f},{det['lon']:.5f} DJI_0001.JPG"

        # the operator draws the person the model missed: placed with the photo's own pose
        box = [100.0, 60.0, 116.0, 92.0]
        status, op = post(
            d, "/api/review/operator-boxes", {"outcome_id": det["outcome_id"], "bbox": box, "operator": "bob"}
        )
        assert status == 201, op
        fix = locate_boxes(pose_from_photo(path), np.array([box]))[0]
        assert (op["lat"], op["lon"]) == pytest.approx((fix.lat, fix.lon), abs=1e-7)
        ((msg, _),) = sub.collect(1, "drone1/reviews", timeout=30)
        assert (msg["id"], msg["origin"], msg["status"]) == (op["id"], "operator", "confirmed")

        m = d.json("/api/review/map")
        (p,) = m["photos"]
        assert len(p["footprint"]) == 4 and p["gsd_cm"] == pytest.approx(PAGL / PF * 100, rel=1e-3)
        lats = [c[0] for c in p["footprint"]]
        lons = [c[1] for c in p["footprint"]]
        assert min(lats) < det["lat"] < max(lats) and min(lons) < det["lon"] < max(lons)

        gpx = gpxpy.parse(d.request("/api/review/finds.gpx")[2].decode())
        assert [w.name for w in gpx.waypoints] == ["Find 1 (flagged)", "Find 2 (confirmed)"]
        assert gpx.waypoints[1].latitude == pytest.approx(op["lat"])
        assert d.request("/api/review/crops/" + op["id"])[1]["content-type"] == "image/jpeg"
        assert d.terminate() == 0, d.log()
    finally:
        d.kill()
        sub.close()
        gcs.close()
        broker.stop()


def test_tiles_option_serves_its_folder_and_refuses_a_missing_one(tmp_path, model):
    tiles = tmp_path / "tiles"
    (tiles / "1" / "0").mkdir(parents=True)
    (tiles / "1" / "0" / "1.jpg").write_bytes(b"\xff\xd8tile")
    d = ServeProcess(tmp_path, "--model", model, "--state", tmp_path / "s", "--tiles", tiles).start()
    try:
        assert d.json("/api/review/map")["tiles"] == "/tiles/{z}/{x}/{y}.png"
        status, headers, body = d.request("/tiles/1/0/1.jpg")
        assert status == 200 and body == b"\xff\xd8tile" and headers["content-type"] == "image/jpeg"
        assert d.request("/tiles/1/0/1.png")[0] == 404
        assert d.terminate() == 0
    finally:
        d.kill()
    bad = ServeProcess(tmp_path, "--model", model, "--state", tmp_path / "s2", "--tiles", tmp_path / "none")
    assert bad.run_to_exit() == 2
    assert "--tiles: expected a folder of map tiles" in bad.log()
    assert Path(tmp_path / "none").exists() is False
