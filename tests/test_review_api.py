"""The review API in-process (FastAPI's TestClient over a Daemon that is not running): store, routes, exports, security."""

from __future__ import annotations

import base64
import csv
import io
import json
import sqlite3

import cv2
import geojson
import gpxpy
import numpy as np
import pytest
from fastkml import kml

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from edgetile.runtime.geo import CameraPose, GeoConfig, ground_to_pixel, locate_boxes, photo_footprint  # noqa: E402
from edgetile.runtime.serve.app import create_app  # noqa: E402
from edgetile.runtime.serve.config import ServeConfig  # noqa: E402
from edgetile.runtime.serve.daemon import Daemon  # noqa: E402
from edgetile.runtime.serve.geo_hooks import GeoHooks, review_text  # noqa: E402
from edgetile.runtime.serve.review import legend, tracks_of  # noqa: E402
from edgetile.runtime.serve.review_export import csv_cell  # noqa: E402
from edgetile.runtime.serve.review_store import ReviewQueue, parse_detection_id  # noqa: E402
from edgetile.runtime.serve.store import SCHEMA_VERSION, Outcome, PhotoQueue  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POST = {**AUTH, "Content-Type": "application/json"}
W, H = 640, 480


class FakeDetector:
    """What the review's legend reads of a Detector: its tile and the model's input size."""

    class config:  # noqa: N801 - stands for DetectConfig
        tile = 512

    input_hw = (256, 256)
    names = {0: "person"}


def nadir_pose(lat=55.75, lon=37.62) -> CameraPose:
    return CameraPose.from_angles(lat, lon, 50.0, 0.0, -90.0, 0.0, 500.0, W, H)


def photo(path, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (H, W, 3), np.uint8)
    cv2.imwrite(str(path), img)
    return img


def det(bbox, score, pose=None):
    d = {"bbox": bbox, "score": score, "class_id": 0, "class_name": "person"}
    if pose is not None:
        fix = locate_boxes(pose, np.array([bbox], np.float64))[0]
        d.update(fix.to_dict())
    return d


@pytest.fixture
def state(tmp_path):
    """Three committed photos (two georeferenced, overlapping), five detections, no decisions."""
    s = tmp_path / "state"
    (s / "uploads").mkdir(parents=True)
    pose1, pose2 = nadir_pose(), nadir_pose(55.75001, 37.62)
    photos = [
        ("a.jpg", [det([100, 100, 120, 140], 0.9, pose1), det([300, 200, 310, 220], 0.3, pose1)], pose1),
        ("b.jpg", [det([100, 120, 120, 160], 0.8, pose2)], pose2),
        ("c.jpg", [det([10, 10, 30, 50], 0.5), det([600, 400, 640, 480], 0.95)], None),
    ]
    with PhotoQueue(s / "queue.sqlite3") as q:
        for i, (name, dets, pose) in enumerate(photos):
            path = s / "uploads" / name
            photo(path, i)
            q.add(f"{i:064x}", "upload", name, path, size=path.stat().st_size)
            (item,) = q.claim(1)
            geo = None
            if pose is not None:
                geo = {"pose": pose.to_dict(), "footprint": photo_footprint(pose), "gsd_cm": 10.0}
            q.finish([Outcome(item, W, H, dets, {}, photo_geo=geo)])
    return s


def client(state, hooks=None, token=TOKEN, tiles=None):
    cfg = ServeConfig(state=state, token=token, tiles=tiles)
    daemon = Daemon(cfg, FakeDetector(), hooks)
    return TestClient(create_app(daemon), base_url="http://127.0.0.1:8765"), daemon


def test_detection_ids_round_trip_and_refuse_anything_else():
    cases = [
        ("12-0", ("model", 12, 0)),  # a model's detection
        ("op-7", ("operator", 7, 0)),  # an operator's box
    ]
    for text, expected in cases:
        assert parse_detection_id(text) == expected
    for bad in ("12", "op-", "-1-2", "12-0/../x", "op-1;drop", ""):
        with pytest.raises(ValueError, match="expected a detection id"):
            parse_detection_id(bad)


V3_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (item_id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
  name TEXT NOT NULL, path TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
  suspect INTEGER NOT NULL DEFAULT 0, last_error TEXT, not_before REAL NOT NULL DEFAULT 0, created_at REAL NOT NULL,
  bytes INTEGER, removed_at REAL);
CREATE TABLE outcomes (id INTEGER PRIMARY KEY AUTOINCREMENT, item_id INTEGER NOT NULL UNIQUE, ok INTEGER NOT NULL,
  width INTEGER, height INTEGER, detections TEXT, timings TEXT, error TEXT, processed_at REAL NOT NULL);
CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, item_id INTEGER NOT NULL);
CREATE TABLE video_progress (source TEXT PRIMARY KEY, frames INTEGER NOT NULL);
CREATE TABLE frame_telemetry (item_id INTEGER PRIMARY KEY, telemetry TEXT NOT NULL);
CREATE TABLE mqtt_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, outcome_id INTEGER NOT NULL, detection INTEGER NOT NULL);
INSERT INTO meta VALUES ('schema', '3');
INSERT INTO items (sha256, source, name, path, state, created_at) VALUES ('aa', 'watch', 'old.jpg', '/x/old.jpg', 'done', 1);
INSERT INTO outcomes (item_id, ok, width, height, detections, timings, processed_at)
  VALUES (1, 1, 10, 10, '[{"bbox":[1,1,3,3],"score":0.5,"class_id":0,"class_name":"person"}]', '{}', 2);
INSERT INTO mqtt_outbox (outcome_id, detection) VALUES (1, 0);
"""


def test_a_schema_3_state_folder_is_migrated_keeping_its_outbox_and_results(tmp_path):
    db = tmp_path / "queue.sqlite3"
    with sqlite3.connect(db) as c:
        c.executescript(V3_SCHEMA)
    with ReviewQueue(db) as q, ReviewQueue(db) as q2:  # a second opener finds it migrated
        assert SCHEMA_VERSION == 4
        assert q.outbox_messages_after(0, 10) == [
            (1, "detections", {"image": "old.jpg", "sha256": "aa", "bbox": [1, 1, 3, 3], "score": 0.5,
                               "class_id": 0, "class_name": "person", "id": "1-0", "outcome_id": 1, "index": 0,
                               "committed_at": 2.0, "taken_at": None})
        ]  # fmt: skip
        (item,) = q.review_items()
        assert (item["id"], item["status"]) == ("1-0", "unreviewed")
        q2.decide("1-0", "flagged", "ann", outbox_limit=100)
        assert [t for _, t, _ in q.outbox_messages_after(0, 10)] == ["detections", "reviews"]
        assert q.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == "4"


def test_decisions_keep_their_history_the_last_counts_and_finds_go_to_the_outbox(state):
    with ReviewQueue(state / "queue.sqlite3") as q:
        q.decide("1-0", "confirmed", "ann", "red jacket", outbox_limit=100)
        q.decide("1-0", "rejected", "bob", outbox_limit=100)  # not a find: no message
        item, decision_id = q.decide("1-0", "flagged", "ann", outbox_limit=100)
        assert (item["status"], item["operator"], item["note"]) == ("flagged", "ann", None)
        assert [h["status"] for h in q.history("1-0")] == ["confirmed", "rejected", "flagged"]
        messages = q.outbox_messages_after(0, 10)
        assert [(t, m["status"]) for _, t, m in messages] == [
            ("reviews", "confirmed"),
            ("reviews", "flagged"),
        ]
        assert messages[-1][2]["decision_id"] == decision_id and messages[-1][2]["id"] == "1-0"
        q.decide("1-0", "unreviewed", "ann")  # undo
        assert q.review_item("1-0")["status"] == "unreviewed"
        with pytest.raises(KeyError):
            q.decide("9-0", "confirmed", "ann")
        with pytest.raises(ValueError, match="status: expected one of"):
            q.decide("1-0", "maybe", "ann")


def test_the_queue_pages_by_score_and_time_filters_and_counts(state):
    c, _ = client(state)
    seen = []
    after = None
    while True:
        page = c.get(
            "/api/review/detections", params={"limit": 2, **({"after": after} if after else {})}, headers=AUTH
        )
        assert page.status_code == 200
        body = page.json()
        seen += [it["id"] for it in body["items"]]
        after = body["next"]
        if after is None:
            break
    assert seen == ["3-1", "1-0", "2-0", "3-0", "1-1"]  # score descending
    assert body["counts"] == {"unreviewed": 5, "confirmed": 0, "rejected": 0, "flagged": 0, "total": 5}
    by_time = c.get("/api/review/detections?order=time", headers=AUTH).json()["items"]
    assert [it["id"] for it in by_time] == ["1-0", "1-1", "2-0", "3-0", "3-1"]
    first = by_time[0]
    assert (
        first["image"] == "a.jpg"
        and first["image_id"] == first["outcome_id"] == 1
        and first["origin"] == "model"
    )
    assert first["lat"] is not None and first["photo_width"] == W and first["time"].endswith("Z")
    for query, ids in [
        ("min_score=0.6", ["3-1", "1-0", "2-0"]),
        ("min_score=0.4&max_score=0.85", ["2-0", "3-0"]),
        ("source=upload", ["3-1", "1-0", "2-0", "3-0", "1-1"]),
        ("source=operator", []),
        ("outcome_id=3", ["3-1", "3-0"]),  # one photo's
        ("status=confirmed,flagged", []),
        ("status=unreviewed&status=rejected", ["3-1", "1-0", "2-0", "3-0", "1-1"]),
    ]:
        assert [
            it["id"] for it in c.get(f"/api/review/detections?{query}", headers=AUTH).json()["items"]
        ] == ids, query
    assert c.get("/api/review/detections?status=maybe", headers=AUTH).status_code == 422
    assert c.get("/api/review/detections?after=notacursor", headers=AUTH).status_code == 422
    forged = base64.urlsafe_b64encode(b'["a", 1, 2, 3]').decode()
    assert c.get(f"/api/review/detections?after={forged}", headers=AUTH).status_code == 422


def test_decisions_over_http_validate_and_are_kept_with_their_history(state):
    c, daemon = client(state)
    assert c.get("/api/review/counts", headers=AUTH).json()["flagged"] == 0  # the queue read once
    before = daemon.changes.version
    r = c.post(
        "/api/review/decisions", headers=POST, json={"id": "2-0", "status": "flagged", "operator": "ann"}
    )
    assert r.status_code == 200 and r.json()["status"] == "flagged" and r.json()["decided_at"].endswith("Z")
    assert daemon.changes.version > before  # the live streams wake
    c.post(
        "/api/review/decisions",
        headers=POST,
        json={"id": "2-0", "status": "confirmed", "operator": "bob", "note": "seen"},
    )
    hist = c.get("/api/review/detections/2-0/history", headers=AUTH).json()
    assert [(h["status"], h["operator"]) for h in hist["history"]] == [
        ("flagged", "ann"),
        ("confirmed", "bob"),
    ]
    assert c.get("/api/review/counts", headers=AUTH).json()["confirmed"] == 1  # patched, not read again
    by_id = {it["id"]: it for it in c.get("/api/review/detections?order=time", headers=AUTH).json()["items"]}
    assert (by_id["2-0"]["status"], by_id["2-0"]["operator"], by_id["2-0"]["note"]) == (
        "confirmed",
        "bob",
        "seen",
    )
    assert by_id["1-0"]["status"] == "unreviewed"
    for body, code in [
        ({"id": "2-0", "status": "maybe", "operator": "ann"}, 422),  # unknown status
        ({"id": "9-9", "status": "confirmed", "operator": "ann"}, 404),  # unknown id
        ({"id": "../../etc", "status": "confirmed", "operator": "ann"}, 404),  # not an id at all
        ({"id": "2-0", "status": "confirmed", "operator": ""}, 422),  # operator required
        ({"id": "2-0", "status": "confirmed", "operator": "x" * 65}, 422),  # at most 64 characters
        ({"id": "2-0", "status": "confirmed"}, 422),
    ]:
        assert c.post("/api/review/decisions", headers=POST, json=body).status_code == code, body
    assert c.get("/api/review/detections/9-9/history", headers=AUTH).status_code == 404


def test_every_review_route_needs_the_token_and_posts_must_be_same_site_json(state, tmp_path):
    c, _ = client(state, tiles=tmp_path)
    routes = [
        "/api/review/detections",
        "/api/review/counts",
        "/api/review/detections/1-0/history",
        "/api/review/crops/1-0",
        "/api/review/overlays/1",
        "/api/review/map",
        "/api/review/events",
        "/api/review/finds.geojson",
        "/api/review/finds.kml",
        "/api/review/finds.gpx",
        "/api/review/finds.csv",
        "/api/review/finds.png",
        "/tiles/0/0/0.png",
        "/openapi.json",
        "/images/1",
    ]
    for path in routes:
        assert c.get(path).status_code == 401, path
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    decision = {"id": "1-0", "status": "confirmed", "operator": "ann"}
    for post in ("/api/review/decisions", "/api/review/operator-boxes"):
        assert c.post(post, json=decision).status_code == 401
    cases = [
        ({**AUTH, "Content-Type": "text/plain"}, 415),  # a cross-site form can send this without a preflight
        ({**AUTH, "Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({**POST, "Origin": "http://evil.example"}, 403),  # another site's page
        ({**POST, "Origin": "null"}, 403),  # a sandboxed frame or a file: page
        ({**POST, "Sec-Fetch-Site": "cross-site"}, 403),
        (
            {**POST, "Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-origin"},
            200,
        ),  # the page itself
        (POST, 200),  # a script without a browser
    ]
    for headers, code in cases:
        r = c.post("/api/review/decisions", headers=headers, content=json.dumps(decision))
        assert r.status_code == code, (headers, r.text)
    # an upload from another site's page is refused too (a form posts multipart without a preflight)
    upload = {**AUTH, "Content-Type": "image/jpeg", "Content-Length": "3"}
    assert (
        c.post(
            "/images?name=x.jpg", headers={**upload, "Origin": "http://evil.example"}, content=b"abc"
        ).status_code
        == 403
    )
    assert (
        c.post(
            "/images?name=x.jpg", headers={**upload, "Sec-Fetch-Site": "cross-site"}, content=b"abc"
        ).status_code
        == 403
    )
    assert c.post("/images?name=x.jpg", headers=upload, content=b"abc").status_code not in (
        401,
        403,
    )  # past the check
    spec = c.get("/openapi.json", headers=AUTH).json()
    for path in (
        "/api/review/detections",
        "/api/review/decisions",
        "/api/review/map",
        "/api/review/finds.gpx",
    ):
        assert path in spec["paths"], path
    assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404


def test_crops_are_native_with_context_overlays_fit_1024_and_removed_photos_answer_410(state):
    c, _ = client(state)
    img = cv2.imread(str(state / "uploads" / "a.jpg"))
    r = c.get("/api/review/crops/1-0", headers=AUTH)  # box 20 x 40 at (100, 100): 40 px of context
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    crop = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape[:2] == (120, 100)
    assert np.abs(crop.astype(int) - img[60:180, 60:160].astype(int)).mean() < 12  # JPEG noise only
    edge = cv2.imdecode(np.frombuffer(c.get("/api/review/crops/3-1", headers=AUTH).content, np.uint8), 1)
    assert edge.shape[:2] == (160, 120)  # 40 x 80 with 80 px of context, clipped at the photo's corner
    over = c.get("/api/review/overlays/1", headers=AUTH)
    assert over.status_code == 200
    assert cv2.imdecode(np.frombuffer(over.content, np.uint8), 1).shape[:2] == (H, W)  # small: not resized
    assert c.get("/api/review/crops/op-99", headers=AUTH).status_code == 404
    assert c.get("/api/review/overlays/99", headers=AUTH).status_code == 404
    assert c.get("/api/review/crops/2-0", headers=AUTH).status_code == 200  # now in the cache
    assert c.get("/api/review/overlays/2", headers=AUTH).status_code == 200
    with PhotoQueue(state / "queue.sqlite3") as q:
        q.conn.execute("UPDATE items SET removed_at=1.0 WHERE name='b.jpg'")
    assert c.get("/api/review/crops/2-0", headers=AUTH).status_code == 410
    assert c.get("/api/review/overlays/2", headers=AUTH).status_code == 410


def test_tiles_are_served_by_integers_only(state, tmp_path):
    tiles = tmp_path / "tiles"
    (tiles / "3" / "4").mkdir(parents=True)
    (tiles / "3" / "4" / "5.png").write_bytes(b"\x89PNG tile")
    (tmp_path / "secret.png").write_bytes(b"secret")
    c, _ = client(state, tiles=tiles)
    assert c.get("/api/review/map", headers=AUTH).json()["tiles"] == "/tiles/{z}/{x}/{y}.png"
    r = c.get("/tiles/3/4/5.png", headers=AUTH)
    assert r.status_code == 200 and r.content == b"\x89PNG tile"
    for path, code in [
        ("/tiles/3/4/6.png", 404),  # missing
        ("/tiles/3/4/5.jpg", 404),
        ("/tiles/3/9/5.png", 404),  # x beyond 2^z
        ("/tiles/../secret.png", 404),
        ("/tiles/3/4/..%2F..%2F..%2Fsecret.png", 404),  # matches no route: y must be an integer
        ("/tiles/3/a/5.png", 422),
    ]:
        assert c.get(path, headers=AUTH).status_code == code, path
    c2, _ = client(state)
    assert c2.get("/tiles/3/4/5.png", headers=AUTH).status_code == 404  # no --tiles
    assert c2.get("/api/review/map", headers=AUTH).json()["tiles"] is None


def test_the_map_has_footprints_gsd_tracks_and_the_legend(state):
    c, _ = client(state)
    m = c.get("/api/review/map", headers=AUTH).json()
    assert [p["outcome_id"] for p in m["photos"]] == [1, 2, 3]
    fp = m["photos"][0]["footprint"]
    assert len(fp) == 4 and m["photos"][2]["footprint"] is None and m["photos"][0]["gsd_cm"] == 10.0
    corners = ground_to_pixel(nadir_pose(), [p[0] for p in fp], [p[1] for p in fp])
    np.testing.assert_allclose(corners, [[0, 0], [W, 0], [W, H], [0, H]], atol=0.05)  # TL, TR, BR, BL
    assert m["photos"][0]["overlay"] == "/api/review/overlays/1"
    # a 1.1 m apart sighting in the next photo is the same person
    assert [t["detections"] for t in m["tracks"]] == [["1-0", "2-0"]]
    # tile 512 on a 256 input: 10 px at the input is 20 photo pixels; 1.7 m over 20 px
    assert m["legend"] == {"model_min_px": 20.0, "person_m": 1.7, "max_gsd_cm_detectable": 8.5}
    assert legend(object())["model_min_px"] == 10.0  # a detector that does not say: the input's own size


def test_tracks_skip_rejected_and_unlocated_detections():
    items = [
        {"id": "1-0", "outcome_id": 1, "status": "unreviewed", "lat": 1.0, "lon": 1.0, "score": 0.9, "class_name": "person"},
        {"id": "2-0", "outcome_id": 2, "status": "rejected", "lat": 1.0, "lon": 1.0, "score": 0.9, "class_name": "person"},
        {"id": "3-0", "outcome_id": 3, "status": "confirmed", "lat": None, "lon": None, "score": 0.9, "class_name": "person"},
    ]  # fmt: skip
    assert tracks_of(items) == []


def test_an_operator_box_is_georeferenced_with_the_stored_pose_and_told_to_mavlink(state):
    sent = []

    class Sender:
        def send_text(self, text):
            sent.append(text)

        def close(self):
            pass

    hooks = GeoHooks(GeoConfig(), state, mavlink=Sender())
    c, _ = client(state, hooks)
    box = [200, 100, 230, 160]
    r = c.post(
        "/api/review/operator-boxes", headers=POST, json={"outcome_id": 1, "bbox": box, "operator": "ann"}
    )
    assert r.status_code == 201, r.text
    d = r.json()
    fix = locate_boxes(nadir_pose(), np.array([box], np.float64), GeoConfig().errors)[0]
    assert (
        d["id"] == "op-1" and d["origin"] == "operator" and d["status"] == "confirmed" and d["score"] is None
    )
    assert (d["lat"], d["lon"]) == (round(fix.lat, 8), round(fix.lon, 8)) and d["error_m"] > 0
    assert sent == [review_text(d)] and sent[0].startswith("CONFIRMED person 55.7")
    r = c.post(
        "/api/review/operator-boxes", headers=POST, json={"outcome_id": 3, "bbox": box, "operator": "ann"}
    )
    assert r.status_code == 201 and r.json()["lat"] is None  # no pose: pixels only
    for body, code in [
        ({"outcome_id": 1, "bbox": [10, 10, 5, 20], "operator": "ann"}, 422),  # x2 < x1
        ({"outcome_id": 1, "bbox": [10, 10, 700, 20], "operator": "ann"}, 422),  # beyond the photo
        ({"outcome_id": 1, "bbox": [10, 10, 20], "operator": "ann"}, 422),
        ({"outcome_id": 42, "bbox": [1, 1, 2, 2], "operator": "ann"}, 404),
    ]:
        assert c.post("/api/review/operator-boxes", headers=POST, json=body).status_code == code, body
    ids = [it["id"] for it in c.get("/api/review/detections?source=operator", headers=AUTH).json()["items"]]
    assert ids == ["op-1", "op-2"]
    assert (
        c.get("/api/review/detections/op-1/history", headers=AUTH).json()["history"][0]["status"]
        == "confirmed"
    )
    assert len(c.get("/api/review/finds.geojson", headers=AUTH).json()["features"]) == 1  # op-2 has no place


def test_exports_read_back_by_gpxpy_fastkml_geojson_and_csv_with_names_escaped(state):
    c, _ = client(state)
    for det_id, status, operator, note in [
        ("1-0", "confirmed", '=HYPERLINK("http://x")', "<b>&"),
        ("2-0", "flagged", "ann", "+1 near the river"),
        ("1-1", "rejected", "ann", None),
        ("3-1", "flagged", "ann", None),  # no place: not in the geographic files
    ]:
        body = {"id": det_id, "status": status, "operator": operator, "note": note}
        assert c.post("/api/review/decisions", headers=POST, json=body).status_code == 200
    items = {it["id"]: it for it in c.get("/api/review/detections", headers=AUTH).json()["items"]}

    r = c.get("/api/review/finds.geojson", headers=AUTH)
    assert r.headers["content-type"] == "application/geo+json"
    assert geojson.loads(r.text).is_valid
    feats = json.loads(r.text)["features"]  # geojson.loads rounds coordinates to 6 decimals
    assert [f["properties"]["title"] for f in feats] == ["Find 1 (confirmed)", "Find 2 (flagged)"]
    assert feats[0]["geometry"]["coordinates"] == [items["1-0"]["lon"], items["1-0"]["lat"]]
    assert feats[0]["properties"]["crop_url"] == "http://127.0.0.1:8765/api/review/crops/1-0"

    gpx = gpxpy.parse(c.get("/api/review/finds.gpx", headers=AUTH).text)
    wpts = gpx.waypoints
    assert [w.name for w in wpts] == ["Find 1 (confirmed)", "Find 2 (flagged)"]
    assert (wpts[1].latitude, wpts[1].longitude) == pytest.approx((items["2-0"]["lat"], items["2-0"]["lon"]))
    assert wpts[1].time is not None and wpts[1].link == "http://127.0.0.1:8765/api/review/crops/2-0"
    assert "<b>&" in wpts[0].description  # escaped in the file, the text itself when read

    doc = kml.KML.from_string(c.get("/api/review/finds.kml", headers=AUTH).content)
    marks = list(doc.features[0].features)
    assert [m.name for m in marks] == ["Find 1 (confirmed)", "Find 2 (flagged)"]
    assert (marks[0].geometry.x, marks[0].geometry.y) == pytest.approx(
        (items["1-0"]["lon"], items["1-0"]["lat"])
    )
    assert "crops/1-0" in marks[0].description and marks[0].times is not None
    assert "&lt;b&gt;&amp;" in marks[0].description  # shown as text by a reader that renders HTML

    rows = list(csv.DictReader(io.StringIO(c.get("/api/review/finds.csv", headers=AUTH).text)))
    assert [r["name"] for r in rows] == ["Find 1 (confirmed)", "Find 2 (flagged)"]
    assert rows[0]["operator"] == '\'=HYPERLINK("http://x")' and rows[1]["note"] == "'+1 near the river"
    assert float(rows[0]["latitude"]) == pytest.approx(items["1-0"]["lat"])

    png = c.get("/api/review/finds.png", headers=AUTH)
    page = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)
    assert png.headers["content-type"] == "image/png" and page.shape == (1200, 1600, 3)
    assert ((page[..., 1] > 150) & (page[..., 0] < 50) & (page[..., 2] < 50)).any()  # a green confirmed find


@pytest.mark.parametrize(
    "text, cell",
    [
        ("=1+1", "'=1+1"),  # a formula
        ("+49 123", "'+49 123"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "\\x09x"),  # control characters are written visibly, so no cell starts with one
        ("\rx", "\\x0dx"),
        ("Find 1", "Find 1"),  # plain text stays
        (None, ""),
    ],
)
def test_csv_cells_never_start_a_formula(text, cell):
    assert csv_cell(text) == cell


def test_review_text_fits_statustext():
    d = {
        "status": "flagged",
        "class_name": "person",
        "lat": 55.7512345,
        "lon": 37.6212345,
        "image": "/a/DJI_0001.JPG",
    }
    assert review_text(d) == "FLAGGED person 55.75123,37.62123 DJI_0001.JPG"  # the facts, without the words
    assert (
        review_text({**d, "lat": None, "image": "a.jpg"}) == "edgetile: FLAGGED person at no position (a.jpg)"
    )
    assert len(review_text({**d, "image": "x" * 80})) == 50


def reference_track_ids(photos, radius_m):
    """The pairwise loop TrackBuilder ran before it compared with arrays: the oracle of the same ids."""
    from edgetile.runtime.geo.tracks import Track, ground_distance_m

    tracks, out = [], []
    for image, dets in photos:
        ids = [None] * len(dets)
        located = [i for i, d in enumerate(dets) if d.get("lat") is not None]
        pairs = sorted(
            (ground_distance_m(dets[i]["lat"], dets[i]["lon"], t.lat, t.lon), i, k)
            for i in located
            for k, t in enumerate(tracks)
            if t.class_name == dets[i]["class_name"]
            and ground_distance_m(dets[i]["lat"], dets[i]["lon"], t.lat, t.lon) <= radius_m
        )
        taken_d, taken_t = set(), set()
        for _, i, k in pairs:
            if i not in taken_d and k not in taken_t:
                taken_d.add(i)
                taken_t.add(k)
                ids[i] = tracks[k].track_id
        for i in located:
            if ids[i] is None:
                tracks.append(
                    Track(len(tracks) + 1, dets[i]["class_name"], dets[i]["lat"], dets[i]["lon"], None)
                )
                ids[i] = tracks[-1].track_id
        for i in located:
            d = dets[i]
            tracks[ids[i] - 1]._add(image, i, d["lat"], d["lon"], d["score"], d["error_m"])
        out.append(ids)
    return out


def test_track_builder_gives_the_pairwise_loops_ids_on_a_crowded_search():
    from edgetile.runtime.geo import TrackBuilder

    rng = np.random.default_rng(3)
    people = rng.uniform([55.7495, 37.6190], [55.7505, 37.6210], (60, 2))  # 60 people in 110 x 125 m
    photos = []
    for p in range(80):
        seen = rng.choice(len(people), 8, replace=False)
        dets = []
        for j in seen:
            jitter = rng.normal(0, 2e-5, 2)  # about 2 m
            dets.append(
                {
                    "lat": float(people[j, 0] + jitter[0]),
                    "lon": float(people[j, 1] + jitter[1]),
                    "error_m": float(rng.uniform(1, 6)),
                    "class_name": "person" if j % 5 else "car",
                    "score": float(rng.random()),
                }
            )
        dets.append({"lat": None, "lon": None, "class_name": "person", "score": 0.5, "error_m": None})
        photos.append((f"p{p}.jpg", dets))
    builder = TrackBuilder(5.0)
    assert [builder.add_photo(img, dets) for img, dets in photos] == reference_track_ids(photos, 5.0)
