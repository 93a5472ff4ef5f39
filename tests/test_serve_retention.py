"""The state folder stays within its budget: copies of finished inputs go, oldest result first; nothing else does.

Real SQLite databases and real files for the rules, real daemon processes over real HTTP for the
behaviour, and a real (small, mounted) file system for the disk floor's way back.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import logging
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_process import ServeProcess, multipart, person_photo, write_jpeg

from edgetile.runtime.options.files import resolve_options
from edgetile.runtime.serve.command import register
from edgetile.runtime.serve.config import ConfigError, ServeConfig
from edgetile.runtime.serve.retention import DiskFloor, Retention
from edgetile.runtime.serve.store import SCHEMA_VERSION, Outcome, PhotoQueue
from onnx_models import red_blob_model

DETECT_OPTIONS = ["--tile", "256"]
FAST = ["--settle", "0", "--poll", "0.1", "--retry-after", "0", "--max-attempts", "2"]
GIB = 1 << 30


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


# ---- the rules, on a real queue database and real files ------------------------------------------------


def sha(n: int) -> str:
    return f"{n:064x}"


class State:
    """A state folder with one input of each kind and fate, in this commit order:

    w1 watched photo, done  |  u2 upload, done  |  v3 video frame, done  |  u4 upload, parked
    u5 upload, running (claimed, not finished)  |  v6 video frame, queued
    Every own copy is 1000 bytes.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads, self.frames, self.drop = root / "uploads", root / "frames", root / "drop"
        for d in (self.uploads, self.frames, self.drop):
            d.mkdir(parents=True, exist_ok=True)
        self.db = root / "queue.sqlite3"
        self.paths = {}
        kinds = {"w1": "watch", "u2": "upload", "v3": "video", "u4": "upload", "u5": "upload", "v6": "video"}
        with PhotoQueue(self.db, max_attempts=1) as q:
            for n, (name, source) in enumerate(kinds.items(), 1):
                folder = {"watch": self.drop, "upload": self.uploads, "video": self.frames}[source]
                path = folder / f"{sha(n)}.jpg"
                path.write_bytes(bytes([n]) * 1000)
                self.paths[name] = path
                q.add(sha(n), source, name, path, size=None if source == "watch" else 1000)
                if name in ("w1", "u2", "v3", "u4"):  # finished one by one, in this order
                    [item] = q.claim(1)
                    q.finish([Outcome(item, 1, 1, [], {}) if name != "u4" else Outcome(item, error="broken")])
            [self.running] = q.claim(1)  # u5: being processed

    def sweep(self, budget: int | None, keep_days: float | None = None, floor: int = 0) -> tuple[int, int]:
        r = Retention((self.uploads, self.frames), budget, keep_days, DiskFloor(self.root, floor))
        with PhotoQueue(self.db) as q:
            return r.sweep(q, time.time())

    def present(self) -> list[str]:
        return sorted(name for name, p in self.paths.items() if p.exists())


ALL = ["u2", "u4", "u5", "v3", "v6", "w1"]


@pytest.mark.parametrize(
    "budget, keep_days, removed",
    [
        # budget (bytes of copies; 5 copies of 1000 bytes are held), age limit -> copies deleted
        (5000, None, []),  # within the budget: nothing
        (None, None, []),  # no budget, no age limit: nothing
        (4000, None, ["u2"]),  # 1000 over: the oldest finished copy
        (3500, None, ["u2", "v3"]),  # 1500 over: a copy is deleted whole, so two go
        (
            0,
            None,
            ["u2", "u4", "v3"],
        ),  # nothing allowed: every finished copy, the parked one too; u5, v6 stay
        (None, 0, ["u2", "u4", "v3"]),  # every result is older than 0 days
        (None, 1, []),  # every result is younger than a day
    ],
)
def test_only_finished_copies_go_oldest_result_first(tmp_path, budget, keep_days, removed):
    s = State(tmp_path)
    files, nbytes = s.sweep(budget, keep_days)
    assert (files, nbytes) == (len(removed), 1000 * len(removed))
    assert s.present() == sorted(
        set(ALL) - set(removed)
    )  # the watched photo and unfinished inputs always stay
    with PhotoQueue(s.db) as q:
        assert q.copies() == {
            "held_files": 5 - len(removed),
            "held_bytes": 1000 * (5 - len(removed)),
            "removed_files": len(removed),
            "removed_bytes": 1000 * len(removed),
        }
        marked = {r[0] for r in q.conn.execute("SELECT name FROM items WHERE removed_at IS NOT NULL")}
    assert marked == set(removed)
    assert s.sweep(budget, keep_days) == (0, 0)  # a second sweep finds nothing more to do


def test_old_results_go_by_age_and_the_rest_by_budget(tmp_path):
    s = State(tmp_path)
    with sqlite3.connect(s.db) as db:  # v3's result is 8 days old, the others are from now
        db.execute("UPDATE outcomes SET processed_at=processed_at-8*86400 WHERE item_id=3")
    assert s.sweep(None, 7) == (1, 1000) and s.present() == sorted(set(ALL) - {"v3"})
    assert s.sweep(3500, 7) == (1, 1000) and s.present() == sorted(set(ALL) - {"v3", "u2"})


def test_the_disk_floor_removes_finished_copies_whatever_the_budget(tmp_path):
    s = State(tmp_path)
    # A floor above the disk's size: never met, so every finished copy goes, the unfinished stay.
    assert s.sweep(None, None, floor=shutil.disk_usage(tmp_path).total + 1) == (3, 3000)
    assert s.present() == ["u5", "v6", "w1"]


def test_a_recorded_copy_outside_uploads_and_frames_is_never_deleted(tmp_path, caplog):
    s = State(tmp_path)
    moved = tmp_path / "elsewhere" / "u2.jpg"  # as if the state folder had been moved since
    moved.parent.mkdir()
    moved.write_bytes(b"x" * 1000)
    with sqlite3.connect(s.db) as db:
        db.execute("UPDATE items SET path=? WHERE name='u2'", (str(moved),))
    r = Retention((s.uploads, s.frames), 0, None, DiskFloor(tmp_path, 0))  # one daemon's, sweeping twice
    with caplog.at_level(logging.WARNING, logger="edgetile.serve"), PhotoQueue(s.db) as q:
        assert r.sweep(q, time.time()) == (2, 2000)  # v3 and u4; u2 is skipped
        assert r.sweep(q, time.time()) == (0, 0)
    assert moved.exists() and s.present() == ["u2", "u5", "v6", "w1"]  # ("u2" is its old path: gone)
    warnings = [r.getMessage() for r in caplog.records if "not deleted" in r.getMessage()]
    assert len(warnings) == 1 and "was the state folder moved?" in warnings[0]  # said once, not per sweep


def test_retry_failed_leaves_a_parked_input_without_its_copy_parked(tmp_path):
    s = State(tmp_path)
    s.sweep(0)
    with PhotoQueue(s.db) as q:
        assert q.parked_without_copy() == 1
        assert q.retry_parked() == 0  # u4's bytes are gone: nothing to try again
        assert q.counts()["parked"] == 1


def test_a_known_upload_stored_again_is_not_kept_twice(tmp_path):
    s = State(tmp_path)
    s.sweep(0)
    with PhotoQueue(s.db) as q:
        assert not q.holds_copy(sha(2), s.paths["u2"])  # removed: a new copy there would be nobody's
        assert q.holds_copy(sha(5), s.paths["u5"])
        assert not q.holds_copy(sha(5), s.uploads / "other.jpg")
        assert q.known(sha(6)) and not q.known(sha(99))


V2_SCHEMA = """
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
CREATE TABLE frame_telemetry (item_id INTEGER PRIMARY KEY REFERENCES items (item_id), telemetry TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '2');
"""


def test_a_state_folder_of_schema_2_gets_its_copies_measured_once(tmp_path):
    (tmp_path / "uploads").mkdir()
    kept = tmp_path / "uploads" / "a.jpg"
    kept.write_bytes(b"a" * 1234)
    with sqlite3.connect(tmp_path / "queue.sqlite3") as c:  # written by the daemon before the retention
        c.executescript(V2_SCHEMA)
        for n, (source, path) in enumerate(
            [
                ("upload", kept),
                ("video", tmp_path / "frames" / "gone.jpg"),
                ("watch", tmp_path / "drop" / "w.jpg"),
            ],
            1,
        ):
            c.execute(
                "INSERT INTO items (sha256, source, name, path, state, created_at) VALUES (?, ?, ?, ?, 'done', 0)",
                (sha(n), source, path.name, str(path)),
            )
            c.execute(
                "INSERT INTO outcomes (item_id, ok, detections, processed_at) VALUES (?, 1, '[]', 0)", (n,)
            )
    with PhotoQueue(tmp_path / "queue.sqlite3") as q:
        sizes = dict(q.conn.execute("SELECT name, bytes FROM items").fetchall())
        assert sizes == {
            "a.jpg": 1234,
            "gone.jpg": 0,
            "w.jpg": None,
        }  # missing: not counted; watched: not ours
        assert q.copies()["held_bytes"] == 1234
        assert q.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(
            SCHEMA_VERSION
        )
        r = Retention((tmp_path / "uploads", tmp_path / "frames"), 0, None, DiskFloor(tmp_path, 0))
        assert (
            r.sweep(q, time.time()) == (1, 1234) and not kept.exists()
        )  # the budget applies to them at once


def serve_parser():
    import argparse

    p = argparse.ArgumentParser(prog="edgetile")
    register(p.add_subparsers(dest="command"))
    return p


def config_of(tmp_path, cli, yaml_text=None) -> ServeConfig:
    args = ["serve", "--state", str(tmp_path / "state"), *cli]
    if yaml_text is not None:
        (tmp_path / "c.yaml").write_text(yaml_text)
        args += ["--config", str(tmp_path / "c.yaml")]
    a = serve_parser().parse_args(args)
    return ServeConfig.from_options(resolve_options(a))


@pytest.mark.parametrize(
    "cli, yaml_text, expected",
    [
        # command line, config file -> (keep_inputs_bytes, keep_days, min_free_bytes)
        ([], None, (2 * GIB, None, 500 << 20)),  # the defaults
        (["--keep-inputs-gb", "0.5", "--keep-days", "7", "--min-free-mb", "0"], None, (GIB // 2, 7.0, 0)),
        (["--keep-inputs-gb", "unlimited"], None, (None, None, 500 << 20)),
        ([], "keep-inputs-gb: unlimited\nkeep_days: 0\nmin-free-mb: 1024\n", (None, 0.0, GIB)),
        (
            ["--keep-inputs-gb", "8"],
            "keep-inputs-gb: unlimited\n",
            (8 * GIB, None, 500 << 20),
        ),  # the command line wins
    ],
)
def test_disk_options_from_the_command_line_and_the_config_file(tmp_path, cli, yaml_text, expected):
    c = config_of(tmp_path, cli, yaml_text)
    assert (c.keep_inputs_bytes, c.keep_days, c.min_free_bytes) == expected


@pytest.mark.parametrize(
    "cli, yaml_text, words",
    [
        # a bad value is refused naming the option, what was expected and what was found
        (
            ["--keep-inputs-gb", "-1"],
            None,
            "expected a number of GiB >= 0 or 'unlimited' for --keep-inputs-gb, found -1",
        ),
        (
            ["--keep-inputs-gb", "lots"],
            None,
            "expected a number of GiB >= 0 or 'unlimited' for --keep-inputs-gb, found 'lots'",
        ),
        (["--keep-days", "-2"], None, "expected a finite number >= 0 for --keep-days, found -2"),
        (["--min-free-mb", "nan"], None, "expected a finite number >= 0 for --min-free-mb, found nan"),
        ([], "keep-inputs-gb: [1, 2]\n", "keep-inputs-gb: expected a single value"),
        (
            [],
            "keep-days: forever\n",
            "keep-days: expected a finite number >= 0 for --keep-days, found 'forever'",
        ),
    ],
)
def test_bad_disk_options_are_refused_in_one_line(tmp_path, capsys, cli, yaml_text, words):
    try:
        config_of(tmp_path, cli, yaml_text)
    except SystemExit as exc:  # argparse: exit 2 with its message on stderr
        assert exc.code == 2
        message = capsys.readouterr().err
    except ConfigError as exc:
        message = str(exc)
    else:
        raise AssertionError(f"{cli} {yaml_text!r} was accepted")
    assert words in message, message


# ---- the daemon ------------------------------------------------------------------------------------------


def metric_values(d: ServeProcess) -> dict[str, float]:
    status, _, body = d.request("/metrics")
    assert status == 200
    return {f.name: f.samples[0].value for f in text_string_to_metric_families(body.decode()) if f.samples}


def upload(d: ServeProcess, data: bytes, name: str = "p.jpg") -> tuple[int, dict]:
    status, _, body = d.request("/images", "POST", *multipart("file", name, data))
    return status, json.loads(body)


def upload_and_wait(d: ServeProcess, data: bytes) -> int:
    """Upload a photo, wait until it is done; returns its result id."""
    status, info = upload(d, data)
    assert status == 201, info
    return d.wait_for(
        lambda: (s := d.json(f"/inputs/{info['sha256']}"))["state"] == "done" and s["id"],
        what=f"upload {info['sha256'][:8]} done",
    )


def jpeg(seed: int) -> bytes:
    return cv2.imencode(".jpg", person_photo(seed), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def test_over_budget_copies_go_oldest_result_first_and_their_images_answer_410(tmp_path, model):
    drop, state = tmp_path / "drop", tmp_path / "state"
    drop.mkdir()
    watched = {drop / f"w{i}.jpg": write_jpeg(drop / f"w{i}.jpg", person_photo(500 + i)) for i in range(3)}
    photos = [jpeg(600 + i) for i in range(9)]
    budget = 3.5 * max(len(p) for p in photos)  # three copies fit, a fourth does not
    args = [
        "--model",
        model,
        *DETECT_OPTIONS,
        "--watch",
        drop,
        "--state",
        state,
        *FAST,
        "--keep-inputs-gb",
        repr(budget / GIB),
    ]
    with ServeProcess(tmp_path, *args).start() as d:
        d.wait_for(lambda: len(d.all_pages("/detections")) == 3, what="the watched photos")
        ids = [upload_and_wait(d, p) for p in photos[:8]]
        d.wait_for(
            lambda: metric_values(d)["edgetile_inputs_kept_files"] == 3, what="the copies trimmed to three"
        )
        m = metric_values(d)
        assert m["edgetile_inputs_removed"] == 5
        assert m["edgetile_inputs_kept_bytes"] == sum(len(p) for p in photos[5:8]) <= budget
        for i, result in enumerate(ids):
            status, headers, body = d.request(f"/images/{result}")
            if i < 5:  # the five oldest results lost their copies...
                detail = json.loads(body)["detail"]
                assert status == 410 and headers["content-type"] == "application/json", (i, status)
                assert "removed by the retention budget" in detail and "\n" not in detail
                assert d.request(f"/images/{result}/annotated")[0] == 410
            else:  # ...the three newest are served as received
                assert status == 200 and body == photos[i]
        assert sorted(p.name for p in (state / "uploads").iterdir()) == sorted(
            f"{hashlib.sha256(p).hexdigest()}.jpg" for p in photos[5:8]
        )
        results = d.all_pages("/detections")
        assert len(results) == 11 and all(it["detections"] for it in results)  # every result stays
        for path, data in watched.items():  # the user's photos are never touched
            assert path.read_bytes() == data
        watched_ids = [it["id"] for it in results if it["image"].startswith(str(drop))]
        assert all(d.request(f"/images/{i}")[0] == 200 for i in watched_ids)
        assert "retention: removed the copies of" in d.log()
        assert d.terminate() == 0

    with ServeProcess(tmp_path, *args).start() as d:  # a restart keeps the marks and goes on
        assert [d.request(f"/images/{i}")[0] for i in ids] == [410] * 5 + [200] * 3
        status, info = upload(d, photos[0])  # a removed photo sent again: known, and its new copy not kept
        assert status == 200 and info["duplicate"] is True and info["id"] == ids[0]
        assert len(list((state / "uploads").iterdir())) == 3
        newest = upload_and_wait(d, photos[8])
        d.wait_for(lambda: d.request(f"/images/{ids[5]}")[0] == 410, what="the oldest kept copy to go")
        assert [d.request(f"/images/{i}")[0] for i in (*ids[6:], newest)] == [200, 200, 200]
        assert metric_values(d)["edgetile_inputs_removed"] == 6
        assert d.terminate() == 0


def write_video(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    assert writer.isOpened()
    for i in range(frames):  # a person walking right: every frame distinct
        frame = np.full((240, 320, 3), (70, 100, 60), np.uint8)
        frame[100:140, 10 + 6 * i : 34 + 6 * i] = (0, 0, 255)
        writer.write(frame)
    writer.release()


def test_a_zero_budget_never_takes_the_copy_of_an_input_still_to_be_processed(tmp_path, model):
    # With nothing allowed, every sweep (one after each commit) deletes all it may while uploads and
    # frames keep arriving. Had it deleted a queued input's copy, that input would fail to be read
    # and be parked; instead every one has its detections, and then every copy is gone.
    video, state = tmp_path / "walk.avi", tmp_path / "state"
    write_video(video, 40)
    photos = [jpeg(700 + i) for i in range(16)]
    with ServeProcess(
        tmp_path,
        "--model",
        model,
        *DETECT_OPTIONS,
        "--video",
        video,
        "--frame-stride",
        "1",
        "--state",
        state,
        *FAST,
        "--queue-batch",
        "4",
        "--keep-inputs-gb",
        "0",
    ).start() as d:
        for p in photos:
            assert upload(d, p)[0] == 201
        d.wait_for(
            lambda: (m := metric_values(d))["edgetile_processed"] + m["edgetile_failed"] == 56,
            what="56 outcomes",
            timeout=180,
        )
        assert d.all_pages("/failed") == []
        results = d.all_pages("/detections")
        assert len(results) == 56 and all(it["detections"] for it in results)
        d.wait_for(lambda: metric_values(d)["edgetile_inputs_kept_files"] == 0, what="every copy removed")
        assert list((state / "uploads").iterdir()) == [] and list((state / "frames").iterdir()) == []
        assert {d.request(f"/images/{it['id']}")[0] for it in results} == {410}
        assert metric_values(d)["edgetile_inputs_removed"] == 56
        assert d.terminate() == 0


@pytest.fixture
def live_stream(tmp_path):
    """A URL that OpenCV reads as a live source: a video served over HTTP that ends and comes back."""
    write_video(tmp_path / "cam.avi", 12)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cam.avi"
    server.shutdown()
    server.server_close()


def test_below_the_disk_floor_frames_are_skipped_uploads_refused_and_finished_copies_go(
    tmp_path, model, live_stream
):
    state = tmp_path / "state"
    base = ["--model", model, *DETECT_OPTIONS, "--state", state, *FAST, "--keep-inputs-gb", "unlimited"]
    with ServeProcess(tmp_path, *base).start() as d:  # first, with room: two uploads and their copies
        ids = [upload_and_wait(d, jpeg(800 + i)) for i in range(2)]
        assert d.terminate() == 0
    video = tmp_path / "flight.avi"
    write_video(video, 10)
    # A floor no disk can meet: the daemon behaves as on a full eMMC, and keeps working.
    with ServeProcess(
        tmp_path,
        *base,
        "--min-free-mb",
        "1e12",
        "--video",
        live_stream,
        "--video",
        video,
        "--frame-stride",
        "2",
    ).start() as d:
        status, info = upload(d, jpeg(900))
        assert status == 507 and "below --min-free-mb 1e+12" in info["detail"], info
        d.wait_for(lambda: metric_values(d)["edgetile_frames_skipped"] >= 10, what="live frames skipped")
        d.wait_for(
            lambda: all(d.request(f"/images/{i}")[0] == 410 for i in ids), what="finished copies removed"
        )
        assert d.request("/health")[0] == 200
        assert len(d.all_pages("/detections")) == 2  # no frame of either video was kept
        assert list((state / "frames").iterdir()) == []
        assert list((state / "tmp").iterdir()) == []  # the refused upload left nothing behind
        log = d.log()
        assert log.count("below --min-free-mb") == 1, log  # said once, however many frames and uploads
        assert "--min-free-mb 1e+12" in log.split("retention: removed the copies of 2", 1)[1].splitlines()[0]
        assert d.terminate() == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs of its own, so that the test can fill it and free it (needs root to mount)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(
            f"needs a small file system to fill: 'mount -t tmpfs' failed ({r.stderr.strip() or r.returncode}); "
            "run as root"
        )
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_the_daemon_comes_back_when_the_disk_has_room_again(tmp_path, model, small_disk):
    state = small_disk / "state"
    with ServeProcess(
        tmp_path,
        "--model",
        model,
        *DETECT_OPTIONS,
        "--state",
        state,
        *FAST,
        "--keep-inputs-gb",
        "unlimited",
        "--min-free-mb",
        "8",
    ).start() as d:
        first = upload_and_wait(d, jpeg(1000))
        filler = small_disk / f"filler-{uuid.uuid4().hex[:6]}"
        filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - (4 << 20)))  # 4 MiB left, floor 8
        status, info = upload(d, jpeg(1001))
        assert status == 507 and "below --min-free-mb 8" in info["detail"]
        d.wait_for(lambda: d.request(f"/images/{first}")[0] == 410, what="the finished copy removed for room")
        filler.unlink()
        second = upload_and_wait(d, jpeg(1001))  # room again: accepted, processed, its copy kept
        assert d.request(f"/images/{second}")[0] == 200
        log = d.log()
        assert log.count("below --min-free-mb 8") == 1 and log.count("free again") == 1, log
        assert d.terminate() == 0
