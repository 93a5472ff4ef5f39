"""`edgetile serve --geo --mqtt`: a real daemon process, a real Mosquitto broker, real HTTP."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
from pathlib import Path

import cv2
import geojson
import numpy as np
import pytest
from fastkml import kml
from geo_photos import dji_values, write_photo
from mqtt_broker import Broker, Subscriber, retained
from serve_process import ServeProcess

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

from edgetile.runtime.geo import locate_boxes, pose_from_photo
from onnx_models import red_blob_model

LAT0, LON0 = 55.75, 37.62


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PW, PH, PF, PAGL = 512, 384, 500.0, 50.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


def blob_photo(path, cell_xy, **kw):
    img = np.full((PH, PW, 3), (60, 110, 70), np.uint8)
    x, y = cell_xy
    img[y : y + 8, x : x + 8] = (0, 0, 255)
    return write_photo(path, img, **kw)


@pytest.mark.slow
def test_daemon_serves_coordinates_geo_files_thumbnails_and_publishes_to_mqtt(tmp_path, model):
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "drone1/#")
    drop = tmp_path / "drop"
    drop.mkdir()
    # geo and MQTT from the YAML config file, as a field deployment keeps them
    gcs_port = free_udp_port()
    gcs = mavutil.mavlink_connection(
        f"udpin:127.0.0.1:{gcs_port}", dialect="ardupilotmega", source_system=255
    )
    (tmp_path / "serve.yaml").write_text(
        f"geo: true\nmqtt: 127.0.0.1:{broker.port}\nmqtt-topic: drone1\ndrone-id: uav1\n"
        f"ground_above_takeoff: 0\nmavlink-out: udpout:127.0.0.1:{gcs_port}\n"
    )
    d = ServeProcess(
        tmp_path,
        "--model",
        model,
        "--tile",
        "256",
        "--watch",
        drop,
        "--state",
        tmp_path / "state",
        "--settle",
        "0",
        "--poll",
        "0.1",
        "--config",
        tmp_path / "serve.yaml",
    )
    try:
        d.start()
        online = retained(broker.port, "drone1/status/uav1", "online")
        assert online["drone_id"] == "uav1" and online["api"] == d.url
        xmp = dji_values(rel_alt=PAGL, abs_alt=180.0, pitch=-90.0, focal_px=PF)
        blob_photo(drop / "DJI_0001.JPG", (280, 136), lat=LAT0, lon=LON0, xmp=xmp)
        blob_photo(drop / "DJI_0002.JPG", (80, 80), lat=None, lon=None, xmp=xmp)  # no GPS fix
        items = d.wait_for(
            lambda: (lambda it: it if len(it) == 2 else None)(d.all_pages("/detections")), what="2 results"
        )
        by_name = {Path(it["image"]).name: it for it in items}  # watched files are named by their path
        located, unlocated = by_name["DJI_0001.JPG"]["detections"], by_name["DJI_0002.JPG"]["detections"]
        assert len(located) == 1 and len(unlocated) == 1
        expect = locate_boxes(pose_from_photo(drop / "DJI_0001.JPG"), np.array([located[0]["bbox"]]))[0]
        assert (located[0]["lat"], located[0]["lon"]) == (round(expect.lat, 8), round(expect.lon, 8))
        assert located[0]["error_m"] > 0 and "thumbnail" in located[0]
        assert (
            "lat" not in unlocated[0] and "thumbnail" in unlocated[0]
        )  # pixels and thumbnail, no coordinates
        assert d.log().count("no ground coordinates: no GPS position") == 1

        # MQTT: each photo, then one message per detection, after its commit
        heard_mqtt: list[tuple[str, dict]] = []
        while len(heard_mqtt) < 4:
            m = sub.get(30)
            if m.topic in ("drone1/photos", "drone1/detections"):
                heard_mqtt.append((m.topic, json.loads(m.payload)))
        for name in ("DJI_0001.JPG", "DJI_0002.JPG"):  # a photo's message comes before its detections'
            topics = [t for t, p in heard_mqtt if Path(p["image"]).name == name]
            assert topics == ["drone1/photos", "drone1/detections"], heard_mqtt
        msgs = {Path(p["image"]).name: p for t, p in heard_mqtt if t == "drone1/detections"}
        assert msgs["DJI_0001.JPG"]["lat"] == located[0]["lat"]
        assert msgs["DJI_0001.JPG"]["sha256"] == by_name["DJI_0001.JPG"]["sha256"]
        assert "lat" not in msgs["DJI_0002.JPG"] and msgs["DJI_0002.JPG"]["bbox"] == unlocated[0]["bbox"]
        assert {(m["drone_id"], m["api"]) for m in msgs.values()} == {("uav1", d.url)}
        # and before them, each photo: its place for a ground station's map
        photos = {Path(p["image"]).name: p for t, p in heard_mqtt if t == "drone1/photos"}
        placed, unplaced = photos["DJI_0001.JPG"], photos["DJI_0002.JPG"]
        assert placed["detections"] == 1 and len(placed["footprint"]) == 4 and placed["error_m"] > 0
        assert placed["position"]["lat"] == pytest.approx(LAT0) and placed["width"] == PW
        assert unplaced["footprint"] is None and unplaced["position"] is None
        assert placed["embedder"] is None  # no --embed: no embedding model to announce
        assert msgs["DJI_0001.JPG"]["id"] == f"{placed['outcome_id']}-0"

        # MAVLink: the ground station hears an alert per detection and the person's position
        heard: dict[str, list] = {"STATUSTEXT": [], "CAMERA_TRACKING_GEO_STATUS": []}
        while len(heard["STATUSTEXT"]) < 2 or not heard["CAMERA_TRACKING_GEO_STATUS"]:
            m = gcs.recv_match(type=list(heard), blocking=True, timeout=20)
            assert m is not None, f"the ground station heard only {heard}"
            heard[m.get_type()].append(m)
        texts, geo = heard["STATUSTEXT"], heard["CAMERA_TRACKING_GEO_STATUS"][0]
        assert sorted(t.text for t in texts) == sorted(
            [
                f"person {located[0]['score']:.0%} {located[0]['lat']:.6f},{located[0]['lon']:.6f} "
                f"+-{located[0]['error_m']:.0f}m",
                f"person {unlocated[0]['score']:.0%} (no position)",
            ]
        )
        assert (geo.lat, geo.lon) == (round(located[0]["lat"] * 1e7), round(located[0]["lon"] * 1e7))
        assert geo.dist == pytest.approx((located[0]["distance_m"] ** 2 + PAGL**2) ** 0.5, rel=1e-5)

        # the geographic views of everything committed
        status, headers, body = d.request("/detections.geojson")
        assert status == 200 and headers["content-type"] == "application/geo+json"
        assert geojson.loads(body).is_valid
        feats = json.loads(body)["features"]
        assert [f["geometry"]["coordinates"] for f in feats] == [[located[0]["lon"], located[0]["lat"]]]
        assert Path(feats[0]["properties"]["image"]).name == "DJI_0001.JPG"
        assert len(d.json("/tracks.geojson")["features"]) == 1
        status, _, body = d.request("/detections.kml")
        placemarks = kml.KML.from_string(body).features[0].features[0].features
        assert status == 200 and [(p.geometry.x, p.geometry.y) for p in placemarks] == [
            pytest.approx((located[0]["lon"], located[0]["lat"]))
        ]
        status, _, body = d.request("/detections_geo.csv")
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert status == 200 and [(float(r["latitude"]), float(r["longitude"])) for r in rows] == [
            (located[0]["lat"], located[0]["lon"])
        ]
        status, headers, body = d.request("/" + located[0]["thumbnail"])
        assert status == 200 and headers["content-type"] == "image/jpeg"
        thumb = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert thumb.shape[0] >= 40 and (thumb[..., 2] > 200).any()
        assert d.request("/thumbs/../../queue.sqlite3")[0] == 404  # never outside the thumbnails
        assert d.request("/thumbs/passwd")[0] == 422
        assert d.request("/thumbs/0123456789abcdef_999.jpg")[0] == 404

        assert d.terminate() == 0, d.log()
        assert retained(broker.port, "drone1/status/uav1", "offline")["reason"] == "closed"
    finally:
        d.kill()
        sub.close()
        gcs.close()
        broker.stop()


@pytest.mark.slow
def test_daemon_without_geo_serves_pixels_only_and_bad_mqtt_is_a_usage_error(tmp_path, model):
    d = ServeProcess(tmp_path, "--model", model, "--state", tmp_path / "s").start()
    try:
        assert d.request("/detections.geojson")[0] == 404
    finally:
        assert d.terminate() == 0
    bad = ServeProcess(tmp_path, "--model", model, "--state", tmp_path / "s2", "--mqtt", "broker:notaport")
    assert bad.run_to_exit() == 2
    assert "--mqtt: expected HOST:PORT with a numeric port, found 'broker:notaport'" in bad.log()
    bad = ServeProcess(tmp_path, "--model", model, "--state", tmp_path / "s3", "--mavlink-lacmus")
    assert bad.run_to_exit() == 2
    assert "--mavlink-lacmus: expected --mavlink-out URL as well" in bad.log()
