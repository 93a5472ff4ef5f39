"""`edgetile serve` as a device runs it: a real daemon process, real HTTP, real ONNX Runtime, real SQLite."""

from __future__ import annotations

import functools
import http.server
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.parse
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_process import ServeProcess, hold_detect, multipart, person_photo, write_jpeg

from edgetile.runtime.images import read_image
from onnx_models import red_blob_model

DETECT_OPTIONS = ["--tile", "256"]
FAST = ["--settle", "0", "--poll", "0.1", "--retry-after", "0", "--max-attempts", "2"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


@pytest.fixture(scope="module")
def api(tmp_path_factory, model):
    """A daemon over a drop folder of 6 photos with people and 2 broken files, everything processed."""
    root = tmp_path_factory.mktemp("api")
    drop = root / "drop"
    drop.mkdir()
    good = {}
    for i in range(6):
        good[f"photo_{i}.jpg"] = write_jpeg(drop / f"photo_{i}.jpg", person_photo(i))
    (drop / "cut.jpg").write_bytes(good["photo_0.jpg"][:3000])  # a card pulled out mid-write
    (drop / "notes.png").write_text("not an image")
    d = ServeProcess(
        root,
        "--model",
        model,
        *DETECT_OPTIONS,
        "--watch",
        drop,
        "--state",
        root / "state",
        *FAST,
        "--max-upload-mb",
        "0.2",
    ).start()
    d.wait_for(
        lambda: len(d.json("/detections")["items"]) == 6 and len(d.json("/failed")["items"]) == 2,
        what="6 results and 2 parked inputs",
    )
    d.root, d.drop, d.state, d.good = root, drop, root / "state", good
    yield d
    assert d.terminate() == 0, d.log()


@pytest.mark.slow
def test_health_answers_ok_with_the_queue_depth(api):
    status, headers, body = api.request("/health")
    assert status == 200 and headers["content-type"] == "application/json"
    # The installed distribution's version, read by importlib.metadata, not by the daemon's own module;
    # nothing is queued: the fixture waited for every input, and each test waits for what it adds.
    assert json.loads(body) == {
        "status": "ok",
        "version": metadata.version("edgetile"),
        "queue_depth": 0,
        "stopping": False,
    }


@pytest.mark.slow
def test_detections_are_the_records_detect_writes(api, model, tmp_path):
    # The drop folder's photos; uploads other tests made (stored under their hash) are not detect's.
    served = {
        Path(it["image"]).name: it
        for it in api.all_pages("/detections")
        if Path(it["image"]).parent == api.drop
    }
    assert set(served) == set(api.good)
    out = tmp_path / "detect"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgetile.runtime.cli",
            "detect",
            *(str(api.drop / n) for n in api.good),
            "--model",
            str(model),
            *DETECT_OPTIONS,
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    written = {Path(rec["image"]).name: rec for rec in json.loads((out / "detections.json").read_text())}
    for name, item in served.items():
        assert item["detections"] == written[name]["detections"], name
        assert item["detections"], f"{name}: the red person is found"
        assert (
            (item["width"], item["height"]) == (written[name]["width"], written[name]["height"]) == (320, 240)
        )
        assert item["image"] == str(api.drop / name)
        assert item["processed_at"].endswith("Z") and "T" in item["processed_at"]
        assert set(item) == {"id", "image", "sha256", "width", "height", "detections", "processed_at"}


@pytest.mark.slow
def test_detections_pages_with_since_and_limit(api):
    everything = api.json("/detections?limit=1000")
    ids = [it["id"] for it in everything["items"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) >= 6
    assert everything["next"] == ids[-1]
    pages, since = [], 0
    while len(pages) < len(ids):  # pages of two, each starting after the previous 'next'
        page = api.json(f"/detections?since={since}&limit=2")
        assert 1 <= len(page["items"]) <= 2 and page["next"] == page["items"][-1]["id"]
        pages += page["items"]
        since = page["next"]
    assert [it["id"] for it in pages] == ids
    assert api.json(f"/detections?since={ids[-1]}") == {
        "items": [],
        "next": ids[-1],
    }  # nothing new: same cursor
    middle = api.json(f"/detections?since={ids[2]}&limit=1000")["items"]
    assert [it["id"] for it in middle] == ids[3:]
    # Out-of-range paging is refused, not clamped.
    for query, words in [
        ("limit=0", "limit: input should be greater than or equal to 1, found '0'"),
        ("limit=1001", "limit: input should be less than or equal to 1000, found '1001'"),
        ("since=-1", "since: input should be greater than or equal to 0, found '-1'"),
        ("since=abc", "since: input should be a valid integer"),
    ]:
        status, _, body = api.request(f"/detections?{query}")
        assert status == 422 and words in json.loads(body)["detail"], (query, body)


@pytest.mark.slow
def test_failed_lists_each_broken_input_once_with_its_error(api):
    failed = {Path(it["image"]).name: it for it in api.json("/failed")["items"]}
    assert set(failed) == {"cut.jpg", "notes.png"}
    assert "truncated JPEG" in failed["cut.jpg"]["error"] or "corrupt" in failed["cut.jpg"]["error"]
    assert "not a readable image" in failed["notes.png"]["error"]
    for it in failed.values():
        assert it["attempts"] == 2 and it["source"] == "watch" and "\n" not in it["error"]
    # A failed input's id is no result: no annotated image, and its bytes (which may be anything,
    # e.g. a file a link pointed at) are not served either.
    bad = failed["notes.png"]["id"]
    status, _, body = api.request(f"/images/{bad}/annotated")
    assert status == 409 and b"not a readable image" in body
    status, _, body = api.request(f"/images/{bad}")
    assert status == 409 and b"not a readable image" in body and b'not an image"' not in body


@pytest.mark.slow
def test_images_serve_the_photo_and_an_annotated_copy(api):
    item = next(it for it in api.json("/detections")["items"] if it["image"].endswith("photo_3.jpg"))
    status, headers, raw = api.request(f"/images/{item['id']}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert raw == api.good["photo_3.jpg"]
    status, headers, jpeg = api.request(f"/images/{item['id']}/annotated")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    drawn = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    original = read_image(api.drop / "photo_3.jpg")
    assert drawn.shape == original.shape
    # Boxes are drawn 2 px outside each detection in pure red; the background there is grey-green.
    x1, y1, x2, y2 = (int(round(v)) for v in item["detections"][0]["bbox"])
    edge = drawn[y1 + 4 : y2 - 4, max(x1 - 4, 0)].astype(int)
    assert (edge[:, 2] > 180).mean() > 0.8 and (edge[:, 1] < 80).mean() > 0.8, edge[:5]
    assert np.abs(drawn.astype(int) - original.astype(int)).max() > 100
    for path in ("/images/999999", "/images/999999/annotated"):
        status, _, body = api.request(path)
        assert status == 404 and b"no result with id 999999" in body


@pytest.mark.slow
def test_metrics_are_prometheus_text_with_queue_counts_and_stage_histograms(api):
    status, headers, body = api.request("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}  # the real parser as oracle
    value = {
        name: families[name].samples[0].value
        for name in ("edgetile_queue_depth", "edgetile_processed", "edgetile_failed", "edgetile_retries")
    }
    done = len(api.all_pages("/detections"))
    assert value == {
        "edgetile_queue_depth": 0,
        "edgetile_processed": done,
        "edgetile_failed": 2,
        "edgetile_retries": 2,
    }  # each broken file: tried, retried once, parked
    assert families["edgetile_processed"].type == "counter"
    hist = families["edgetile_stage_seconds"]
    assert hist.type == "histogram"
    counts = {s.labels["stage"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert counts["infer"] == counts["read"] == counts["total"] == done
    assert {"slice", "preprocess", "decode", "merge", "commit"} <= set(counts)
    infer_buckets = [
        s.value for s in hist.samples if s.name.endswith("_bucket") and s.labels["stage"] == "infer"
    ]
    assert infer_buckets == sorted(infer_buckets) and infer_buckets[-1] == done  # cumulative, +Inf = count
    # This machine has no Jetson power monitor; the rail metrics are then absent, not zero.
    has_ina = (
        any(
            p.joinpath("name").read_text().strip() == "ina3221"
            for p in Path("/sys/class/hwmon").glob("hwmon*")
        )
        if Path("/sys/class/hwmon").is_dir()
        else False
    )
    assert ("edgetile_rail_power_watts" in families) == has_ina
    zones = (
        list(Path("/sys/class/thermal").glob("thermal_zone*")) if Path("/sys/class/thermal").is_dir() else []
    )
    if not zones:
        assert "edgetile_temperature_celsius" not in families


@pytest.mark.slow
def test_upload_is_checked_stored_by_hash_and_processed(api, tmp_path):
    data = cv2.imencode(".jpg", person_photo(100))[1].tobytes()
    body, headers = multipart("file", "../../../etc/evil name;rm -rf.jpg", data)
    status, _, answer = api.request("/images", "POST", body, headers)
    assert status == 201, answer
    info = json.loads(answer)
    assert info["image"] == "evil_name_rm_-rf.jpg" and info["duplicate"] is False
    assert (info["width"], info["height"]) == (320, 240)
    stored = api.state / "uploads" / f"{info['sha256']}.jpg"
    assert stored.read_bytes() == data  # stored under its hash, never under the client's name
    assert not (api.root / "etc").exists() and not list(api.root.rglob("evil*"))
    done = api.wait_for(
        lambda: (s := api.json(f"/inputs/{info['sha256']}"))["state"] == "done" and s, what="upload"
    )
    item = next(it for it in api.all_pages("/detections") if it["id"] == done["id"])
    assert item["image"] == "evil_name_rm_-rf.jpg" and item["detections"]
    assert api.request(f"/images/{done['id']}")[2] == data
    # The same photo again is recognised by content: answered 200, not queued twice.
    status, _, again = api.request("/images", "POST", *multipart("file", "copy.jpg", data))
    assert status == 200 and json.loads(again)["duplicate"] is True and json.loads(again)["id"] == done["id"]
    assert sum(it["sha256"] == info["sha256"] for it in api.all_pages("/detections")) == 1
    # A raw body with ?name= works too (curl --data-binary).
    raw = cv2.imencode(".png", person_photo(101))[1].tobytes()
    status, _, answer = api.request("/images?name=a%2Fb%5Cc.png", "POST", raw, {"Content-Type": "image/png"})
    assert status == 201 and json.loads(answer)["image"] == "c.png"
    # Processed before the test ends, so that no other test finds it still queued.
    sha = json.loads(answer)["sha256"]
    api.wait_for(lambda: api.json(f"/inputs/{sha}")["state"] == "done", what="the raw-body upload")


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, body, headers, status, words",
    [
        # case, what is sent, expected status and words of the one-line reason
        ("text", *multipart("file", "x.jpg", b"hello, not a photo"), 415, "not a readable image"),
        (
            "cut jpeg",
            *multipart("file", "x.jpg", cv2.imencode(".jpg", person_photo(7))[1].tobytes()[:2000]),
            415,
            "truncated JPEG",
        ),
        ("empty", *multipart("file", "x.jpg", b""), 415, "empty file"),
        ("no file field", *multipart("photo", "x.jpg", b"abc"), 422, "field named 'file'"),
        (
            "declared over the limit",
            *multipart(
                "file",
                "big.png",
                cv2.imencode(
                    ".png", np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
                )[1].tobytes(),
            ),
            413,
            "too large: expected at most 209715 bytes (--max-upload-mb), found",
        ),
        # within the multipart allowance, so only counting the bytes while storing them catches it
        (
            "counted over the limit",
            *multipart(
                "file",
                "big.png",
                cv2.imencode(
                    ".png", np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
                )[1].tobytes(),
            ),
            413,
            "too large: expected at most 209715 bytes, found more",
        ),
    ],
)
def test_upload_refusals_name_the_reason_and_leave_nothing_behind(api, case, body, headers, status, words):
    before = sorted(p.name for p in (api.state / "uploads").iterdir())
    got, _, answer = api.request("/images", "POST", body, headers)
    assert got == status, (case, answer)
    assert words in json.loads(answer)["detail"], (case, answer)
    assert sorted(p.name for p in (api.state / "uploads").iterdir()) == before
    assert list((api.state / "tmp").iterdir()) == []


@pytest.mark.slow
def test_upload_declared_over_the_limit_is_refused_before_reading(api):
    # Only the headers are sent: the daemon answers 413 from Content-Length without waiting for the body.
    where = urllib.parse.urlsplit(api.url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as s:
        s.sendall(
            b"POST /images HTTP/1.1\r\nHost: %s\r\nContent-Type: image/jpeg\r\nContent-Length: 900000000\r\n\r\n"
            % where.netloc.encode()  # a Host that names the daemon, as every client sends
        )
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer


@pytest.mark.slow
def test_a_second_daemon_on_the_same_state_or_port_is_refused(api, model, tmp_path):
    in_flight = api.state / "tmp" / "upload-being-received.part"
    in_flight.write_bytes(b"half a photo")
    same_state = ServeProcess(tmp_path, "--model", model, "--state", api.state)
    assert same_state.run_to_exit() == 2
    assert "another edgetile serve is using this folder" in same_state.log()
    assert in_flight.exists()  # the refused daemon touched nothing of the running one's
    in_flight.unlink()
    port = urllib.parse.urlsplit(api.url).port
    same_port = ServeProcess(tmp_path, "--model", model, "--state", tmp_path / "state", "--port", port)
    assert same_port.run_to_exit() == 2
    assert f"--port {port}: cannot listen there" in same_port.log() and "Traceback" not in same_port.log()
    assert api.request("/health")[0] == 200  # the first daemon is untouched


def test_non_loopback_without_token_is_refused_at_start(tmp_path, model):
    d = ServeProcess(tmp_path, "--model", model, "--state", tmp_path / "state", "--host", "0.0.0.0")
    assert d.run_to_exit() == 2
    log = d.log()
    assert "--host 0.0.0.0" in log and "--token" in log and "Traceback" not in log
    assert not (tmp_path / "state").exists()  # refused before anything was created
    both = ServeProcess(tmp_path, "--model", model, "--token", "a", "--token-file", tmp_path / "t")
    assert both.run_to_exit() == 2 and "expected one of them, found both" in both.log()


@pytest.mark.slow
def test_with_a_token_every_route_but_health_needs_the_bearer_header(tmp_path, model):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with ServeProcess(
        tmp_path,
        "--model",
        model,
        *DETECT_OPTIONS,
        "--state",
        tmp_path / "state",
        "--host",
        "0.0.0.0",
        "--token-file",
        token_file,
    ).start() as d:
        assert "token required" in d.log()
        url = d.url.replace("0.0.0.0", "127.0.0.1")
        d.url = url
        photo = cv2.imencode(".jpg", person_photo(5))[1].tobytes()
        for path, method, body, headers in [
            ("/metrics", "GET", None, {}),
            ("/detections", "GET", None, {}),
            ("/failed", "GET", None, {}),
            ("/images/1", "GET", None, {}),
            ("/inputs/" + "0" * 64, "GET", None, {}),
            ("/images", "POST", *multipart("file", "p.jpg", photo)),
        ]:
            for token in (None, "wrong", "s3cret-token-but-longer"):
                status, h, _ = d.request(path, method, body, headers, token=token)
                assert status == 401 and h["www-authenticate"] == "Bearer", (path, token, status)
        status, _, _ = d.request("/detections", headers={"Authorization": "Basic czNjcmV0LXRva2Vu"})
        assert status == 401
        assert list((tmp_path / "state" / "uploads").iterdir()) == []  # refused uploads stored nothing
        assert d.request("/health")[0] == 200  # health checks carry no secret
        assert d.request("/detections", token="s3cret-token")[0] == 200
        assert d.request("/metrics", token="s3cret-token")[0] == 200
        status, _, _ = d.request("/images", "POST", *multipart("file", "p.jpg", photo), token="s3cret-token")
        assert status == 201
        assert d.terminate() == 0


@pytest.mark.slow
def test_yaml_config_is_used_and_the_command_line_wins(tmp_path, model):
    drop = tmp_path / "drop"
    drop.mkdir()
    write_jpeg(drop / "a.jpg", person_photo(1))
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        f"model: {model}\ntile: 256\nwatch: {drop}\nsettle: 0\npoll: 0.1\nhost: 0.0.0.0\n"
        f"state: {tmp_path / 'state'}\nframe-stride: 3\n"
    )
    # From the file alone, host 0.0.0.0 without a token is refused...
    assert ServeProcess(tmp_path, "--config", cfg).run_to_exit() == 2
    # ...and --host on the command line overrides it.
    with ServeProcess(tmp_path, "--config", cfg, "--host", "127.0.0.1").start() as d:
        d.wait_for(lambda: d.json("/detections")["items"], what="the watched photo from the config's folder")
        assert d.terminate() == 0


@pytest.mark.parametrize(
    "yaml_text, words",
    [
        # a bad config file is refused in one line naming the key and what was expected
        ("conf: 2\n", "conf: expected a number in [0.0, 1.0] for --conf, found 2"),
        ("tile: big\n", "tile: expected an integer >= 32 for --tile, found 'big'"),
        ("color: red\n", "unknown key 'color'"),
        ("merge: average\n", "merge: expected one of ios, nms, nmm, wbf"),
        ("access-log: 1\n", "access-log: expected true or false, found 1"),
        ("- just\n- a list\n", "expected a mapping of option names to values, found list"),
        ("watch: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_files_are_refused_with_one_line(tmp_path, yaml_text, words):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(yaml_text)
    d = ServeProcess(tmp_path, "--config", cfg, "--state", tmp_path / "state")
    assert d.run_to_exit() == 2
    log = d.log()
    assert words in log and "Traceback" not in log and len(log.strip().splitlines()) == 1, log


@pytest.mark.slow
def test_video_file_frames_by_stride(tmp_path, model):
    video = tmp_path / "flight.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    assert writer.isOpened()
    for i in range(23):  # a person walking right, 8 px per frame
        frame = np.full((240, 320, 3), (70, 100, 60), np.uint8)
        frame[100:140, 20 + 8 * i : 44 + 8 * i] = (0, 0, 255)
        writer.write(frame)
    writer.release()
    state = tmp_path / "state"
    with ServeProcess(
        tmp_path, "--model", model, *DETECT_OPTIONS, "--video", video, "--frame-stride", "5", "--state", state
    ).start() as d:
        items = d.wait_for(lambda: len(r := d.all_pages("/detections")) == 5 and r, what="5 frames")
        assert sorted(it["image"] for it in items) == sorted(f"{video}#frame={i}" for i in (0, 5, 10, 15, 20))
        for it in items:
            i = int(it["image"].rsplit("=", 1)[1])
            xs = [(b["bbox"][0] + b["bbox"][2]) / 2 for b in it["detections"]]
            assert xs and all(20 + 8 * i - 8 <= x <= 44 + 8 * i + 8 for x in xs), (i, xs)
        assert d.terminate() == 0
    # A restart does not read the finished file again.
    with ServeProcess(
        tmp_path, "--model", model, *DETECT_OPTIONS, "--video", video, "--frame-stride", "5", "--state", state
    ).start() as d:
        d.wait_for(lambda: "finished" in d.log(), what="the reader to reach the end")
        assert len(d.all_pages("/detections")) == 5
        assert d.terminate() == 0
    with sqlite3.connect(state / "queue.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 5


@pytest.mark.slow
def test_video_stream_url_reconnects_and_queues_each_distinct_frame_once(tmp_path, model):
    video = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(12):
        frame = np.full((240, 320, 3), (70, 100, 60), np.uint8)
        frame[100:140, 20 + 8 * i : 44 + 8 * i] = (0, 0, 255)
        writer.write(frame)
    writer.release()
    # A live source as OpenCV sees one: a URL that ends (the stream drops) and comes back.
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cam.avi"
    try:
        with ServeProcess(
            tmp_path,
            "--model",
            model,
            *DETECT_OPTIONS,
            "--video",
            url,
            "--frame-stride",
            "4",
            "--state",
            tmp_path / "state",
        ).start() as d:
            d.wait_for(lambda: d.log().count("reconnecting") >= 2, what="two reconnections", timeout=60)
            items = d.wait_for(lambda: len(r := d.all_pages("/detections")) == 3 and r, what="3 frames")
            assert all(it["image"].startswith(f"{url}#t=") and it["image"].endswith("Z") for it in items)
            assert all(it["detections"] for it in items)
            server.shutdown()  # the camera goes away: the daemon keeps serving and keeps trying
            server.server_close()
            d.wait_for(lambda: "cannot be opened; trying again" in d.log(), what="a failed reconnection")
            assert d.request("/health")[0] == 200
            assert len(d.all_pages("/detections")) == 3  # each distinct frame once, however often it was read
            assert d.terminate() == 0
    finally:
        server.server_close()


@pytest.mark.slow
def test_sigterm_finishes_the_batch_commits_and_exits_0_and_systemd_is_told(tmp_path, model):
    drop = tmp_path / "drop"
    drop.mkdir()
    for i in range(24):
        write_jpeg(drop / f"p{i:03d}.jpg", person_photo(1000 + i))
    notify, release = tmp_path / "notify.sock", tmp_path / "release"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(60)
    try:
        state = tmp_path / "state"
        d = ServeProcess(
            tmp_path,
            "--model",
            model,
            *DETECT_OPTIONS,
            "--watch",
            drop,
            "--state",
            state,
            *FAST,
            "--queue-batch",
            "8",
            "--log-level",
            "debug",
            env={"NOTIFY_SOCKET": str(notify)},
            # The second photo of the first batch waits in detect until the daemon has taken the
            # SIGTERM: 7 photos of the batch are then still to go, on any machine.
            prelude=hold_detect(2, release),
        ).start()
        assert sock.recv(100) == b"READY=1"
        d.wait_for(lambda: "detection(s)" in d.log(), what="the first photo")
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for(lambda: "stopping: finishing the current batch" in d.log(), what="the stop")
        release.touch()
        assert d.wait() == 0, d.log()
        assert sock.recv(100) == b"STOPPING=1"
    finally:
        sock.close()
    log = d.log()
    assert "Traceback" not in log
    stopping = log.index("stopping: finishing the current batch")
    assert log.count("claimed 8 input(s)") == 1 and log.index("claimed 8 input(s)") < stopping
    assert log.index("committed 8 outcome(s)") > stopping  # the batch in hand was finished after SIGTERM...
    assert log[:stopping].count("detection(s)") == 1 and log[stopping:].count("detection(s)") == 7
    with sqlite3.connect(state / "queue.sqlite3") as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
        outcomes = db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0]
    assert states == {"done": 8, "queued": 16} and outcomes == 8  # ...and committed; no other batch was begun
    # The next start has nothing interrupted to recover and goes on with the rest.
    with ServeProcess(
        tmp_path, "--model", model, *DETECT_OPTIONS, "--watch", drop, "--state", state, *FAST
    ).start() as d2:
        d2.wait_for(lambda: len(d2.all_pages("/detections")) == 24, what="all 24 photos")
        assert "without finishing" not in d2.log()
        assert d2.terminate() == 0
