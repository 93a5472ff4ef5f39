"""Video frames georeferenced from MAVLink: a real daemon reading a video, a pymavlink 'autopilot' streaming
GLOBAL_POSITION_INT, ATTITUDE and a gimbal's attitude over UDP on 127.0.0.1, the pose recorded with each
frame when it is grabbed, and kept in the queue across a kill -9."""

from __future__ import annotations

import functools
import http.server
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pymap3d
import pytest
from scipy.spatial.transform import Rotation
from serve_process import ServeProcess, hold_detect

os.environ.setdefault("MAVLINK20", "1")
from pymavlink import mavutil  # noqa: E402

from edgetile.runtime.geo import CameraPose, PoseError, PoseOverrides, locate_boxes, rotation_ypr  # noqa: E402
from edgetile.runtime.geo.profiles import profile_by_name  # noqa: E402
from edgetile.runtime.links.mavlink import FrameTelemetry, MavlinkTelemetry  # noqa: E402
from edgetile.runtime.options.files import resolve_options  # noqa: E402
from edgetile.runtime.options.geo import serve_geo_config_from_args  # noqa: E402
from edgetile.runtime.serve.command import register  # noqa: E402
from edgetile.runtime.serve.geo_hooks import open_result_hooks  # noqa: E402
from edgetile.runtime.serve.store import SCHEMA_VERSION, Outcome, PhotoQueue  # noqa: E402
from onnx_models import red_blob_model  # noqa: E402

LAT, LON, ALT_MSL, AGL = 55.75, 37.62, 180.0, 50.0
GIMBAL_YAW_IN_VEHICLE_FRAME, GIMBAL_YAW_IN_EARTH_FRAME = 32, 64


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quaternion_wxyz(r: np.ndarray) -> list[float]:
    x, y, z, w = Rotation.from_matrix(r).as_quat()
    return [float(w), float(x), float(y), float(z)]


class Autopilot:
    """A pymavlink peer streaming the vehicle's pose at 50 Hz to a UDP port, as ArduPilot or PX4 does.

    ``pose`` is replaced whole: lat, lon (degrees), alt and rel_alt (metres), yaw, pitch, roll (the
    vehicle's, degrees), and gimbal: None or (yaw, pitch, roll, flags) of a gimbal's camera.
    """

    def __init__(self, port: int, **pose) -> None:
        self.conn = mavutil.mavlink_connection(
            f"udpout:127.0.0.1:{port}", dialect="ardupilotmega", source_system=1, source_component=1
        )
        self.pose = {
            "lat": LAT,
            "lon": LON,
            "alt": ALT_MSL,
            "rel_alt": AGL,
            "yaw": 0.0,
            "pitch": 0.0,
            "roll": 0.0,
            "gimbal": None,
            **pose,
        }
        self.sending = threading.Event()
        self.sending.set()
        self.paused = threading.Event()  # set by the sending thread once it has seen sending cleared
        self.last_ms: int | None = None  # time_boot_ms of the latest GLOBAL_POSITION_INT sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.02):
            if not self.sending.is_set():
                self.paused.set()
                continue
            p, ms = self.pose, int((time.monotonic() - t0) * 1000)
            self.conn.mav.global_position_int_send(
                ms,
                round(p["lat"] * 1e7),
                round(p["lon"] * 1e7),
                round(p["alt"] * 1000),
                round(p["rel_alt"] * 1000),
                0,
                0,
                0,
                round(p["yaw"] % 360 * 100),
            )
            self.last_ms = ms
            self.conn.mav.attitude_send(
                ms, *(math.radians(p[k]) for k in ("roll", "pitch", "yaw")), 0.0, 0.0, 0.0
            )
            if p["gimbal"] is not None:
                yaw, pitch, roll, flags = p["gimbal"]
                nan = float("nan")
                self.conn.mav.gimbal_device_attitude_status_send(
                    0,
                    0,
                    ms,
                    flags,
                    quaternion_wxyz(rotation_ypr(yaw, pitch, roll)),
                    nan,
                    nan,
                    nan,
                    0,
                    nan,
                    nan,
                    1,
                )

    def pause(self) -> int:
        """Stop sending; returns the time_boot_ms of the last position sent, once nothing more will be."""
        self.paused.clear()
        self.sending.clear()
        assert self.paused.wait(10), "the autopilot's thread did not pause"
        return self.last_ms

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()


def record_handled(path: Path) -> str:
    """A ServeProcess prelude: the daemon writes the time_boot_ms of each GLOBAL_POSITION_INT it has
    handled to path, so that a test knows when the daemon has read what the autopilot sent."""
    return (
        "import os\n"
        "from edgetile.runtime.links.mavlink import MavlinkTelemetry\n"
        "_handle = MavlinkTelemetry._handle\n"
        "def handle(self, msg):\n"
        "    _handle(self, msg)\n"
        "    if msg.get_type() == 'GLOBAL_POSITION_INT':\n"
        f"        with open({str(path) + '.tmp'!r}, 'w') as f:\n"
        "            f.write(str(msg.time_boot_ms))\n"
        f"        os.replace({str(path) + '.tmp'!r}, {str(path)!r})\n"
        "MavlinkTelemetry._handle = handle\n"
    )


def handled_ms(path: Path) -> int:
    return int(path.read_text()) if path.exists() else -1


def write_video(path: Path, frames: int, size: tuple[int, int], blob_xy) -> Path:
    """An MJPG .avi of a green field with one 16x16 red 'person' per frame at blob_xy(i)."""
    w, h = size
    tmp = path.with_name(f".{path.name}.tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((h, w, 3), (70, 100, 60), np.uint8)
        x, y = blob_xy(i)
        frame[y : y + 16, x : x + 16] = (0, 0, 255)
        writer.write(frame)
    writer.release()
    os.replace(tmp, path)  # a stream server never serves half a file
    return path


def metres_apart(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    n, e, _ = pymap3d.geodetic2ned(lat1, lon1, 0.0, lat2, lon2, 0.0)
    return math.hypot(n, e)


def assert_located(detections: list[dict], pose: CameraPose) -> None:
    """Every detection carries the coordinates ground.py gives for this pose and its box, to the centimetre."""
    assert detections
    fixes = locate_boxes(pose, np.array([d["bbox"] for d in detections]))
    for d, fix in zip(detections, fixes):
        assert "lat" in d, d
        assert metres_apart(d["lat"], d["lon"], fix.lat, fix.lon) < 0.01, (d, fix)
        assert d["error_m"] == pytest.approx(fix.error_m, abs=0.01) and d["error_m"] > 0


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:  # WAL: reads beside the daemon
        return int(c.execute(sql).fetchone()[0])


@pytest.mark.slow
def test_frames_get_coordinates_from_the_gimbal_pose_when_grabbed(tmp_path, model):
    port = free_udp_port()
    # The vehicle heads 30 deg, tilted 3 deg nose up and 2 deg right; its gimbal holds the camera 60 deg down
    # and 15 deg right of the nose, level with the horizon (yaw in the vehicle frame): camera yaw 45, pitch -60.
    ap = Autopilot(
        port, yaw=30.0, pitch=3.0, roll=2.0, gimbal=(15.0, -60.0, 0.0, GIMBAL_YAW_IN_VEHICLE_FRAME)
    )
    video = write_video(tmp_path / "flight.avi", 8, (320, 240), lambda i: (16 + 32 * i, 40 + 16 * i))
    # the MAVLink options from the YAML configuration, as a deployment keeps them
    (tmp_path / "serve.yaml").write_text(
        f"geo: true\nmavlink-in: udpin:127.0.0.1:{port}\nmavlink-max-age: 1.0\nfocal-px: 300\n"
    )
    state = tmp_path / "state"
    try:
        with ServeProcess(
            tmp_path,
            "--model",
            model,
            "--tile",
            "256",
            "--video",
            video,
            "--frame-stride",
            "2",
            "--state",
            state,
            "--config",
            tmp_path / "serve.yaml",
        ).start() as d:
            items = d.wait_for(lambda: len(r := d.all_pages("/detections")) == 4 and r, what="4 frames")
            pose = CameraPose.from_angles(LAT, LON, AGL, 45.0, -60.0, 0.0, 300.0, 320, 240, abs_alt_m=ALT_MSL)
            for it in items:
                assert_located(it["detections"], pose)
            # the gimbal's attitude was used, not the vehicle's with a fixed downward mount (tens of metres apart)
            rigid = CameraPose(
                LAT, LON, AGL, rotation_ypr(30, 3, 2) @ rotation_ypr(0, -90, 0), 300.0, 160, 120, 320, 240
            )
            d0 = items[0]["detections"][0]
            other = locate_boxes(rigid, np.array([d0["bbox"]]))[0]
            assert metres_apart(d0["lat"], d0["lon"], other.lat, other.lon) > 10
            feats = d.json("/detections.geojson")["features"]
            assert len(feats) == sum(len(it["detections"]) for it in items)
            log = d.log()
            assert "GIMBAL_DEVICE_ATTITUDE_STATUS (yaw from the heading in ATTITUDE)" in log
            assert "no ground coordinates:" not in log and "Traceback" not in log
            assert d.terminate() == 0
        # recorded with each frame, in the queue: where the vehicle was and how old that news was
        with sqlite3.connect(state / "queue.sqlite3") as db:
            rows = [json.loads(t) for (t,) in db.execute("SELECT telemetry FROM frame_telemetry")]
        assert len(rows) == 4
        assert all((r["lat"], r["lon"], r["relative_alt_m"]) == (LAT, LON, AGL) for r in rows)
        assert all(0 <= r["position_age_s"] <= 1.0 and 0 <= r["attitude_age_s"] <= 1.0 for r in rows)
    finally:
        ap.close()


@pytest.mark.slow
def test_stale_telemetry_gives_pixels_and_one_warning_and_fresh_telemetry_coordinates_again(tmp_path, model):
    port, handled = free_udp_port(), tmp_path / "handled_ms"
    ap = Autopilot(port, yaw=30.0)  # level, heading 30; no gimbal: the default mount looks straight down
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cam.avi"  # a live camera that is not up yet
    try:
        with ServeProcess(
            tmp_path,
            "--model",
            model,
            "--tile",
            "256",
            "--video",
            url,
            "--frame-stride",
            "2",
            "--state",
            tmp_path / "state",
            "--geo",
            "--mavlink-in",
            f"udpin:127.0.0.1:{port}",
            "--mavlink-max-age",
            "0.5",
            "--focal-px",
            "300",
            prelude=record_handled(handled),
        ).start() as d:
            d.wait_for(lambda: "position and attitude are fresh" in d.log(), what="the first telemetry")
            last = ap.pause()  # the telemetry link drops...
            d.wait_for(lambda: handled_ms(handled) == last, what="the daemon reading the last position")
            # ...for longer than --mavlink-max-age, counted from the daemon's receipt of the last position
            # (which has happened: it is recorded above), then the camera comes up.
            time.sleep(0.6)
            write_video(www / "cam.avi", 6, (320, 240), lambda i: (16 + 32 * i, 24))  # blobs along the top
            stale = d.wait_for(lambda: len(r := d.all_pages("/detections")) == 3 and r, what="3 frames")
            for it in stale:
                assert it["detections"] and all("lat" not in x and "thumbnail" in x for x in it["detections"])
            warning = (
                f"no ground coordinates: no fresh MAVLink telemetry when the frame was grabbed: the latest "
                f"GLOBAL_POSITION_INT on udpin:127.0.0.1:{port} is older than 0.5 s (--mavlink-max-age)"
            )
            log = d.log()
            assert log.count(warning) == 1, log  # one line, however many frames
            assert "video frames get no ground coordinates until it is fresh again" in log

            ap.sending.set()  # the link is back: the next frames are georeferenced
            d.wait_for(lambda: handled_ms(handled) > last, what="the daemon reading positions again")
            write_video(
                www / "cam.avi", 6, (320, 240), lambda i: (16 + 32 * i, 184)
            )  # blobs along the bottom
            items = d.wait_for(lambda: len(r := d.all_pages("/detections")) == 6 and r, what="3 more frames")
            fresh = [it for it in items if it["detections"][0]["bbox"][1] > 120]
            assert len(fresh) == 3
            pose = CameraPose.from_angles(LAT, LON, AGL, 30.0, -90.0, 0.0, 300.0, 320, 240, abs_alt_m=ALT_MSL)
            for it in fresh:
                assert_located(it["detections"], pose)
            for it in items:  # frames grabbed while it was stale keep no coordinates
                if it not in fresh:
                    assert all("lat" not in x for x in it["detections"])
            assert d.log().count("position and attitude are fresh") == 2
            assert d.terminate() == 0
    finally:
        server.shutdown()
        server.server_close()
        ap.close()


@pytest.mark.slow
def test_the_pose_recorded_at_grab_survives_kill_9_and_a_restart_without_telemetry(tmp_path, model):
    port = free_udp_port()
    ap = Autopilot(port, yaw=30.0)
    n = 12
    video = write_video(tmp_path / "flight.avi", n, (1280, 720), lambda i: (64 + 24 * i, 96 + 12 * i))
    args = [
        "--model",
        model,
        "--tile",
        "256",
        "--video",
        video,
        "--frame-stride",
        "1",
        "--state",
        tmp_path / "state",
        "--geo",
        "--mavlink-in",
        f"udpin:127.0.0.1:{port}",
        "--focal-px",
        "1000",
        "--camera-mount",
        "0,-70,0",
    ]
    db = tmp_path / "state" / "queue.sqlite3"
    moved, never = tmp_path / "moved", tmp_path / "never"
    done_sql = "SELECT COUNT(*) FROM items WHERE state='done'"
    try:
        # One frame a batch, each committed on its own; the 3rd frame waits in detect until the vehicle
        # has moved, the 6th until the kill (never released): frames are left, one of them interrupted.
        d = ServeProcess(
            tmp_path, *args, "--queue-batch", "1", prelude=hold_detect(3, moved, (6, never))
        ).start()
        try:
            d.wait_for(
                lambda: (
                    db.exists() and count(db, "SELECT COUNT(*) FROM items") == n and count(db, done_sql) == 2
                ),
                what="every frame queued, two processed",
                interval=0.02,
            )
            # The vehicle flies on 1.1 km north; frames processed from now on must still use where they were seen.
            ap.pose = {**ap.pose, "lat": LAT + 0.01}
            moved.touch()
            running = "SELECT COUNT(*) FROM items WHERE state='running'"
            d.wait_for(
                lambda: count(db, done_sql) == 5 and count(db, running) == 1,
                what="three frames processed after the vehicle moved, the 6th in hand",
            )
        finally:
            d.kill()  # SIGKILL, as in a power cut, while the 6th frame is in hand
        assert count(db, "SELECT COUNT(*) FROM items WHERE state='running'") == 1
        assert count(db, "SELECT COUNT(*) FROM items WHERE state!='done'") == n - 5
        assert count(db, "SELECT COUNT(*) FROM frame_telemetry") == n
    finally:
        ap.close()
    # The autopilot is gone: the restarted daemon has no telemetry at all, only what was recorded.
    with ServeProcess(tmp_path, *args).start() as d:
        items = d.wait_for(lambda: len(r := d.all_pages("/detections")) == n and r, what=f"all {n} frames")
        pose = CameraPose.from_angles(LAT, LON, AGL, 30.0, -70.0, 0.0, 1000.0, 1280, 720, abs_alt_m=ALT_MSL)
        for it in items:
            assert_located(it["detections"], pose)
        log = d.log()
        assert "stopped without finishing" in log
        assert "no ground coordinates:" not in log and "Traceback" not in log
        assert d.terminate() == 0


# ---- the parts on their own ----

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    item_id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
    name TEXT NOT NULL, path TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'parked')),
    attempts INTEGER NOT NULL DEFAULT 0, suspect INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    not_before REAL NOT NULL DEFAULT 0, created_at REAL NOT NULL);
CREATE INDEX items_pending ON items (state, suspect, item_id);
CREATE TABLE outcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, item_id INTEGER NOT NULL UNIQUE REFERENCES items (item_id),
    ok INTEGER NOT NULL, width INTEGER, height INTEGER, detections TEXT, timings TEXT, error TEXT,
    processed_at REAL NOT NULL);
CREATE INDEX outcomes_by_kind ON outcomes (ok, id);
CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items (item_id));
CREATE TABLE video_progress (source TEXT PRIMARY KEY, frames INTEGER NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
INSERT INTO items (sha256, source, name, path, created_at) VALUES ('a', 'video', 'old#frame=0', '/f/a.jpg', 0);
INSERT INTO items (sha256, source, name, path, state, created_at) VALUES ('b', 'watch', 'p.jpg', '/p.jpg', 'done', 0);
INSERT INTO outcomes (item_id, ok, width, height, detections, timings, processed_at) VALUES (2, 1, 4, 3, '[]', '{}', 0);
"""


def test_a_state_folder_of_the_previous_schema_is_migrated_and_keeps_its_queue(tmp_path):
    db = tmp_path / "queue.sqlite3"
    with sqlite3.connect(db) as c:  # written by the daemon before frame telemetry existed
        c.executescript(V1_SCHEMA)
    with PhotoQueue(db) as q, PhotoQueue(db) as q2:  # a second opener finds it migrated
        assert SCHEMA_VERSION == 4
        assert q.counts() == {"queued": 1, "running": 0, "done": 1, "parked": 0}
        assert q.detections(0, 10)[0][0]["image"] == "p.jpg"
        assert q2.add("c", "video", "new#frame=1", "/f/c.jpg", telemetry={"problem": "none"}) == (3, True)
        # the same content again does not replace what was recorded at its first grab
        assert q2.add("c", "video", "new#frame=9", "/f/c.jpg", telemetry={"problem": "other"}) == (3, False)
        old, new = q.claim(4)
        assert (old.name, old.telemetry) == ("old#frame=0", None)  # queued before: nothing recorded
        assert (new.name, new.telemetry) == ("new#frame=1", {"problem": "none"})
        q.finish([Outcome(old, 4, 3, [], {}), Outcome(new, 4, 3, [], {})])
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(SCHEMA_VERSION)


def test_frame_telemetry_becomes_a_pose_by_the_flags_rules():
    rot = rotation_ypr(30, -70, 0)
    t = FrameTelemetry(
        LAT, LON, ALT_MSL, AGL, rot, "MAVLink ATTITUDE x camera mount", 0.1, 0.05, 1.7e9, "udpin:x"
    )
    back = FrameTelemetry.from_dict(json.loads(json.dumps(t.to_dict())))
    np.testing.assert_array_equal(back.rotation, rot)
    cases = [
        # (overrides, expected height above ground, expected focal length)
        (PoseOverrides(focal_px=800.0), AGL, 800.0),
        (PoseOverrides(focal_px=800.0, ground_above_takeoff=12.0), AGL - 12.0, 800.0),
        (PoseOverrides(focal_px=800.0, ground_alt=150.0), ALT_MSL - 150.0, 800.0),  # MSL altitude - ground
        (PoseOverrides(focal_px=800.0, height_above_ground=33.0), 33.0, 800.0),
        (
            PoseOverrides(camera="mavic-air-2"),
            AGL,
            profile_by_name("mavic-air-2").focal_px(1280),
        ),  # scaled to width
    ]
    for overrides, agl, focal in cases:
        pose = back.pose(1280, 720, overrides)
        assert (pose.lat, pose.lon, pose.abs_alt_m) == (LAT, LON, ALT_MSL)
        assert pose.agl_m == pytest.approx(agl) and pose.focal_px == pytest.approx(focal)
        np.testing.assert_allclose(pose.rotation, rot)
    with pytest.raises(
        PoseError, match="no focal length: a video frame has no EXIF; pass --focal-px or --camera"
    ):
        back.pose(1280, 720, PoseOverrides())
    with pytest.raises(ValueError, match="expected the key 'rotation'"):
        FrameTelemetry.from_dict({k: v for k, v in t.to_dict().items() if k != "rotation"})


def test_snapshot_refuses_stale_telemetry_and_follows_the_gimbals_frame():
    port = free_udp_port()
    with MavlinkTelemetry(f"udpin:127.0.0.1:{port}", mount_ypr=(0, -70, 0)) as tele:
        ap = Autopilot(port, yaw=100.0)
        try:
            assert tele.wait_for(lambda t: t.counts().get("ATTITUDE", 0) > 2, 10)
            snap = tele.snapshot(0.5)
            np.testing.assert_allclose(snap.rotation, rotation_ypr(100, -70, 0), atol=1e-6)  # vehicle x mount
            assert snap.attitude_source == "MAVLink ATTITUDE x camera mount"
            # a gimbal that reports its yaw against north turns the camera whatever the vehicle's heading
            ap.pose = {**ap.pose, "gimbal": (-20.0, -45.0, 0.0, GIMBAL_YAW_IN_EARTH_FRAME)}
            assert tele.wait_for(lambda t: t.counts().get("GIMBAL_DEVICE_ATTITUDE_STATUS", 0) > 0, 10)
            np.testing.assert_allclose(tele.snapshot(0.5).rotation, rotation_ypr(-20, -45, 0), atol=1e-6)
            ap.pose = {**ap.pose, "gimbal": (-20.0, -45.0, 0.0, GIMBAL_YAW_IN_VEHICLE_FRAME)}
            n = tele.counts()["GIMBAL_DEVICE_ATTITUDE_STATUS"]
            assert tele.wait_for(lambda t: t.counts()["GIMBAL_DEVICE_ATTITUDE_STATUS"] > n + 1, 10)
            np.testing.assert_allclose(tele.snapshot(0.5).rotation, rotation_ypr(80, -45, 0), atol=1e-6)
            last = ap.pause()
            # The reader has taken the last position sent (its receipt time is then fixed), and 0.4 s
            # pass after that: older than the 0.3 s asked for below, however late it was read.
            assert tele.wait_for(lambda t: t._state.position["time_boot_ms"] == last, 10)
            time.sleep(0.4)
            with pytest.raises(
                PoseError,
                match=r"the latest GLOBAL_POSITION_INT on udpin:127.0.0.1:\d+ is older "
                r"than 0.3 s \(--mavlink-max-age\)",
            ):
                tele.snapshot(0.3)
            assert tele.snapshot(None).lat == LAT  # without a bound, the last known pose
        finally:
            ap.close()


def hooks_from_options(a, state_dir):
    """The daemon's hooks from its options, as ``edgetile serve`` opens them."""
    return open_result_hooks(serve_geo_config_from_args(a), state_dir)


def serve_options(*cli: str):
    import argparse

    p = argparse.ArgumentParser(prog="edgetile")
    register(p.add_subparsers())
    a = p.parse_args(["serve", *cli])
    return resolve_options(a)


@pytest.mark.parametrize(
    "cli, words",
    [
        # MAVLink poses need a place to go and a focal length; each missing piece is named at start
        (
            ["--mavlink-in", "udpin:127.0.0.1:9", "--video", "v.avi", "--focal-px", "300"],
            "--mavlink-in: expected --geo as well",
        ),
        (
            ["--mavlink-in", "udpin:127.0.0.1:9", "--geo", "--focal-px", "300"],
            "--mavlink-in: expected a --video source as well (photos use their own EXIF/XMP pose)",
        ),
        (
            ["--mavlink-in", "udpin:127.0.0.1:9", "--geo", "--video", "v.avi"],
            "video frames have no EXIF focal length: expected --focal-px F or --camera NAME, found neither",
        ),
    ],
)
def test_mavlink_in_without_what_it_needs_is_refused(tmp_path, cli, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        hooks_from_options(serve_options(*cli), tmp_path)


def test_a_mavlink_in_link_that_cannot_be_opened_is_refused_in_one_line(tmp_path):
    ok = ["--geo", "--video", "v.avi", "--focal-px", "300"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        busy = f"udpin:127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ValueError, match=f"--mavlink-in {busy}: cannot open the link: .*in use"):
            hooks_from_options(serve_options(*ok, "--mavlink-in", busy), tmp_path)
    with pytest.raises(
        ValueError,
        match="--mavlink-in: expected a pymavlink connection string such as "
        "udpin:0.0.0.0:14550, .*found 'udpin:127.0.0.1:notaport'",
    ):
        hooks_from_options(serve_options(*ok, "--mavlink-in", "udpin:127.0.0.1:notaport"), tmp_path)


@pytest.mark.parametrize(
    "yaml_text, words",
    [
        (
            "mavlink-max-age: 0\n",
            "mavlink-max-age: expected a positive number for --mavlink-max-age, found 0",
        ),
        (
            "camera-mount: 0,-95,0\n",
            "camera-mount: expected a pitch in [-90, 90] for --camera-mount, found -95",
        ),
        ("camera-mount: down\n", "camera-mount: expected YAW,PITCH,ROLL in degrees for --camera-mount"),
    ],
)
def test_bad_mavlink_values_in_the_config_file_are_refused_like_flags(tmp_path, yaml_text, words):
    (tmp_path / "c.yaml").write_text(yaml_text)
    d = ServeProcess(tmp_path, "--config", tmp_path / "c.yaml", "--state", tmp_path / "state")
    assert d.run_to_exit() == 2
    log = d.log()
    assert words in log and "Traceback" not in log and len(log.strip().splitlines()) == 1, log


@pytest.mark.slow
def test_run_to_exit_kills_and_reaps_a_daemon_that_does_not_stop(tmp_path, model):
    d = ServeProcess(tmp_path, "--model", model, "--state", tmp_path / "state")  # a daemon that starts fine
    with pytest.raises(subprocess.TimeoutExpired):
        d.run_to_exit(timeout=1.0)
    assert d.proc.returncode == -signal.SIGKILL  # killed and reaped: the test leaves no daemon behind
    with pytest.raises(ProcessLookupError):
        os.kill(d.pid, 0)
