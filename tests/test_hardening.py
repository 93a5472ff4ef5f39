"""Hostile files and requests: what a decompression bomb, a link, a name or a request can and cannot do.

Every file, folder and request is built here; the HTTP tests talk to the app in this process (Starlette's
TestClient) or to a real daemon on a loopback port. Peak memory is measured on the child process
(``/usr/bin/time -f %M`` for ``detect``, VmHWM for the daemon), never with RUSAGE_CHILDREN, which is
the largest child the test process ever had.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from serve_process import ServeProcess, multipart, person_photo, write_jpeg

from edgetile.runtime.images import ImageReadError, ImageTooLarge, read_image
from onnx_models import red_blob_model

EDGETILE = [sys.executable, "-m", "edgetile.runtime.cli"]
TIME = Path("/usr/bin/time")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


def jpeg_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes of JPEG whose frame header claims width x height pixels."""
    ok, buf = cv2.imencode(".jpg", np.full((8, 8), 128, np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR (with a valid CRC) claims width x height pixels."""
    ok, buf = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def timed(*args) -> tuple[subprocess.CompletedProcess, float]:
    """Run edgetile under /usr/bin/time; (result, the child's peak resident memory in MiB)."""
    r = subprocess.run(
        [str(TIME), "-f", "PEAK_KB=%M", *EDGETILE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    peak = [ln for ln in r.stderr.splitlines() if ln.startswith("PEAK_KB=")]
    assert peak, r.stderr
    return r, int(peak[-1].split("=")[1]) / 1024


# ---- decompression bombs and files that OpenCV or Pillow refuse ---------------------------------------


@pytest.mark.parametrize(
    "case, data, limit, error",
    [
        # a 673-byte JPEG claiming 60000x60000: refused from its header, nothing allocated
        ("jpeg bomb", jpeg_bomb(60000, 60000), None, ImageTooLarge),
        ("png bomb", png_bomb(20000, 20000), None, ImageTooLarge),
        ("just over the limit", jpeg_bomb(1001, 1000), 1_000_000, ImageTooLarge),
        # with no limit of ours, OpenCV raises on 3.6e9 pixels: a normal one-line read error
        ("png past OpenCV's limit", png_bomb(60000, 60000), 0, ImageReadError),
    ],
)
def test_read_image_refuses_bombs_from_the_header_with_one_line(tmp_path, case, data, limit, error):
    path = tmp_path / ("x.png" if data.startswith(b"\x89PNG") else "x.jpg")
    path.write_bytes(data)
    with pytest.raises(error) as info:
        read_image(path, *(() if limit is None else (limit or None,)))
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    if error is ImageTooLarge:
        assert "--max-pixels" in message
    else:
        assert message.startswith("not a readable image") and "OpenCV" in message


def test_a_photo_at_the_limit_is_read(tmp_path):
    ok, buf = cv2.imencode(".png", person_photo(1, 200, 100))
    (tmp_path / "ok.png").write_bytes(buf.tobytes())
    assert read_image(tmp_path / "ok.png", 200 * 100).shape == (100, 200, 3)


@pytest.mark.slow
@pytest.mark.skipif(not TIME.exists(), reason="needs GNU time at /usr/bin/time to measure the child's peak")
def test_detect_refuses_bombs_in_bounded_memory_and_processes_the_rest(tmp_path, model):
    d = tmp_path / "card"
    d.mkdir()
    write_jpeg(d / "a_good.jpg", person_photo(0))
    (d / "b_bomb.jpg").write_bytes(jpeg_bomb(60000, 60000))
    (d / "c_bomb.png").write_bytes(png_bomb(20000, 20000))
    write_jpeg(d / "d_good.jpg", person_photo(1))
    r, peak_mb = timed("detect", d, "--model", model, "--out", tmp_path / "out", "--tile", 256, "--quiet")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    records = {
        Path(x["image"]).name: x for x in json.loads((tmp_path / "out" / "detections.json").read_text())
    }
    assert records["a_good.jpg"]["detections"] and records["d_good.jpg"]["detections"]
    for name, size in [("b_bomb.jpg", "60000x60000"), ("c_bomb.png", "20000x20000")]:
        error = records[name]["error"]
        assert error.startswith("image too large: expected at most 120000000 pixels (--max-pixels)"), error
        assert size in error
    # The same run over the good photos alone is the baseline (the interpreter, OpenCV and ONNX
    # Runtime: ~100 MB); one decode of the JPEG bomb would add 10.8 GB, of the PNG bomb 1.2 GB.
    r, baseline_mb = timed(
        "detect",
        d / "a_good.jpg",
        d / "d_good.jpg",
        "--model",
        model,
        "--out",
        tmp_path / "base",
        "--tile",
        256,
    )
    assert r.returncode == 0, r.stderr
    assert peak_mb < baseline_mb + 50, f"peak RSS {peak_mb:.0f} MB, {baseline_mb:.0f} MB without the bombs"

    # With the limit lifted, a PNG past OpenCV's own limit is one bad input, not the end of the run.
    (d / "b_bomb.jpg").unlink()
    (d / "c_bomb.png").write_bytes(png_bomb(60000, 60000))
    r, peak_mb = timed(
        "detect", d, "--model", model, "--out", tmp_path / "out2", "--tile", 256, "--quiet", "--max-pixels", 0
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    records = {
        Path(x["image"]).name: x for x in json.loads((tmp_path / "out2" / "detections.json").read_text())
    }
    assert records["c_bomb.png"]["error"].startswith("not a readable image"), records["c_bomb.png"]
    assert records["a_good.jpg"]["detections"] and records["d_good.jpg"]["detections"]
    assert peak_mb < 600, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.slow
def test_serve_refuses_bombs_from_uploads_and_folders_in_bounded_memory(tmp_path, model):
    drop = tmp_path / "drop"
    drop.mkdir()
    options = ["--tile", "256", "--watch", drop, "--state", tmp_path / "state", "--settle", "0"]
    options += ["--poll", "0.1", "--retry-after", "0", "--max-attempts", "1"]
    with ServeProcess(tmp_path, "--model", model, *options) as d:
        d.start()

        def peak_mb() -> float:
            status = Path(f"/proc/{d.pid}/status").read_text().splitlines()
            return int(next(ln for ln in status if ln.startswith("VmHWM:")).split()[1]) / 1024

        # the baseline: a good photo uploaded and detected (the decoder and ONNX Runtime warmed up)
        body, headers = multipart("file", "good.jpg", photo_bytes(12))
        assert d.request("/images", "POST", body, headers)[0] == 201
        d.wait_for(lambda: d.json("/detections")["items"], what="the good photo detected")
        baseline = peak_mb()
        for data, name in [(jpeg_bomb(60000, 60000), "up.jpg"), (png_bomb(20000, 20000), "up.png")]:
            body, headers = multipart("file", name, data)
            status, _, answer = d.request("/images", "POST", body, headers)
            detail = json.loads(answer)["detail"]
            assert status == 413 and detail.startswith("image too large: expected at most 120000000"), detail
            assert "\n" not in detail and name in detail
        (drop / "bomb.jpg").write_bytes(jpeg_bomb(60000, 60000))
        failed = d.wait_for(lambda: d.json("/failed")["items"], what="the watched bomb parked")
        assert failed[0]["error"].startswith("image too large"), failed
        # one decode of the JPEG bomb would add 10.8 GB, of the PNG bomb 1.2 GB
        assert peak_mb() < baseline + 50, (
            f"the daemon's peak RSS went from {baseline:.0f} to {peak_mb():.0f} MB"
        )
        assert d.terminate() == 0, d.log()


def test_a_pose_pillow_refuses_leaves_the_pixel_detections(tmp_path):
    from edgetile.runtime.geo.writers import GeoConfig, GeoWriter

    path = tmp_path / "huge.png"
    path.write_bytes(png_bomb(60000, 60000))  # past twice Pillow's MAX_IMAGE_PIXELS
    from edgetile.runtime.results import Detections

    records = [{"bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9, "class_id": 0, "class_name": "person"}]
    dets = Detections.from_records(records, {0: "person"})
    with GeoWriter(tmp_path / "out", GeoConfig(formats=("geojson",))) as w:
        placed = w.add(str(path), dets, None)
    warning = placed.warning
    assert warning and "\n" not in warning and "Pillow" in warning, warning
    assert placed.detections.to_records({0: "person"}) == records
    assert placed.record_fields() == {"geo_warning": warning}


def test_serve_geo_keeps_the_detections_of_a_photo_pillow_refuses(tmp_path):
    from edgetile.runtime.options.geo import ServeGeoConfig
    from edgetile.runtime.serve.geo_hooks import open_result_hooks
    from edgetile.runtime.serve.store import Item

    path = tmp_path / "huge.png"
    path.write_bytes(png_bomb(60000, 60000))
    hooks = open_result_hooks(ServeGeoConfig(georeference=True), tmp_path)
    item = Item(1, "0" * 64, "watch", str(path), str(path), 1)
    from edgetile.runtime.results import Detections

    records = [{"bbox": [1.0, 2.0, 30.0, 40.0], "score": 0.9, "class_id": 0, "class_name": "person"}]
    dets = Detections.from_records(records, {0: "person"})
    # no exception: the photo is not parked
    out = hooks.annotate(item, np.zeros((50, 50, 3), np.uint8), dets).to_records({0: "person"})
    assert out[0]["score"] == 0.9 and out[0]["bbox"] == records[0]["bbox"] and "lat" not in out[0]
    hooks.close()


# ---- outputs that carry names ----------------------------------------------------------------------

HOSTILE_NAMES = [
    "<img src=x onerror=alert(1)>.jpg",  # live HTML in a KML description or a thumbnail's src
    '"><script>alert(1)</script>.jpg',  # out of the src attribute
    "=2+5.jpg",  # a formula in a spreadsheet
    "+cmd.jpg",
    "-2+3.jpg",
    "@SUM(A1).jpg",
    "\tTAB.jpg",
    "\rCR.jpg",
    "bell\x07and\x01ctrl.jpg",  # not allowed in XML 1.0 at all, escaped or not
    "line\nbreak.jpg",
    "amp&amp;lt.jpg",
    "undecodable\udcff.jpg",  # a file name's invalid UTF-8 byte, as os.listdir gives it
]


def located(name: str, i: int) -> dict:
    return {
        "bbox": [1.0, 2.0, 30.0, 40.0],
        "score": 0.9,
        "class_id": 0,
        "class_name": "person",
        "lat": 47.0 + i * 1e-3,
        "lon": -8.0 - i * 1e-3,  # a negative number stays a number in the CSV
        "error_m": 3.0,
        "thumbnail": f"thumbs/{Path(name).stem}_000.jpg",
    }


class _Tags:
    """The HTML tags and attributes of a KML description, as a browser's parser sees them."""

    def __init__(self, text: str) -> None:
        from html.parser import HTMLParser

        self.tags: list[tuple[str, dict]] = []
        outer = self

        class P(HTMLParser):
            def handle_starttag(self, tag, attrs):
                outer.tags.append((tag, dict(attrs)))

            handle_startendtag = handle_starttag

        p = P()
        p.feed(text)
        p.close()


def test_kml_with_hostile_names_is_valid_xml_and_its_html_shows_them_as_text(tmp_path):
    import xml.etree.ElementTree as ET

    from fastkml import kml

    from edgetile.runtime.geo.writers import GeoDocuments

    photos = [(f"/drop/{n}", [located(n, i)]) for i, n in enumerate(HOSTILE_NAMES)]
    text = GeoDocuments(photos).kml()
    (tmp_path / "d.kml").write_text(text, encoding="utf-8")  # UTF-8 can carry every character left
    root = ET.fromstring((tmp_path / "d.kml").read_bytes())
    ns = {"k": "http://www.opengis.net/kml/2.2"}
    descriptions = [d.text for d in root.iterfind(".//k:Folder/k:Placemark/k:description", ns)]
    assert len(descriptions) == 2 * len(HOSTILE_NAMES)  # one detection and one track per photo
    for html_text in descriptions:
        tags = _Tags(html_text).tags
        assert {t for t, _ in tags} <= {"br", "img"}, tags
        for tag, attrs in tags:
            if tag == "img":
                assert set(attrs) == {"src", "width"} and attrs["src"].startswith("thumbs/"), attrs
                assert not set(attrs["src"]) & set("<>\"' \t\n"), attrs
    images = [
        d.text for d in root.iterfind(".//k:Placemark/k:ExtendedData/k:Data[@name='image']/k:value", ns)
    ]
    for name, shown in zip(HOSTILE_NAMES, images):
        if name.isprintable() and name.encode("utf-8", "surrogatepass").isascii() and "\udcff" not in name:
            assert shown == f"/drop/{name}"  # printable names come back exactly
    assert "bell\\x07and\\x01ctrl.jpg" in text and "undecodable\\udcff.jpg" in text
    doc = kml.KML.from_string(text.encode("utf-8")).features[0]
    assert len(doc.features[0].features) == len(HOSTILE_NAMES)


def _no_formula(cell: str) -> None:
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert cell.isprintable(), cell


def _as_csv_text(name: str) -> str:
    """What a name becomes in a CSV cell: control characters and undecodable bytes made visible."""
    out = name.encode("utf-8", "backslashreplace").decode()
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 else c for c in out)


def test_csv_files_never_start_a_text_cell_with_a_formula(tmp_path):
    import csv

    from edgetile.runtime.geo.writers import GeoDocuments
    from edgetile.runtime.outputs import ResultWriter

    photos = [(n, [located(n, i)]) for i, n in enumerate(HOSTILE_NAMES)]
    (tmp_path / "geo.csv").write_text(GeoDocuments(photos).csv_text(), encoding="utf-8", newline="")
    rows = list(csv.DictReader((tmp_path / "geo.csv").open(newline="", encoding="utf-8")))
    assert len(rows) == len(HOSTILE_NAMES)
    for name, row in zip(HOSTILE_NAMES, rows):
        _no_formula(row["image"])
        _no_formula(row["thumbnail"])
        assert row["image"].removeprefix("'") == _as_csv_text(name)
        assert float(row["longitude"]) < 0  # numbers are not prefixed

    with ResultWriter(tmp_path / "out", {0: "person"}) as w:
        for n in HOSTILE_NAMES:
            w.add({"image": f"/card/{n}", "detections": [located(n, 0)]})
    rows = list(csv.DictReader((tmp_path / "out" / "detections.csv").open(newline="", encoding="utf-8")))
    assert len(rows) == len(HOSTILE_NAMES)
    for name, row in zip(HOSTILE_NAMES, rows):
        _no_formula(row["id"])
        assert row["id"].removeprefix("'") == _as_csv_text(name.rpartition("/")[2])  # the file's name


# ---- the HTTP API in this process ------------------------------------------------------------------


@pytest.fixture
def app_of(tmp_path):
    """make(**config) -> (daemon, TestClient) over a fresh state folder; no worker runs."""
    from fastapi.testclient import TestClient

    from edgetile.runtime.serve.app import create_app
    from edgetile.runtime.serve.config import ServeConfig
    from edgetile.runtime.serve.daemon import Daemon

    clients = []

    def make(**config):
        cfg = ServeConfig(**{"state": tmp_path / "state", "min_free_bytes": 0, **config})
        daemon = Daemon(cfg, detector=None)
        daemon._prepare_state()
        client = TestClient(create_app(daemon), base_url="http://127.0.0.1:8765")
        clients.append(client)
        return daemon, client

    yield make
    for c in clients:
        c.close()


def photo_bytes(seed: int = 0, ext: str = ".jpg") -> bytes:
    ok, buf = cv2.imencode(ext, person_photo(seed))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    "case, host, allowed, status",
    [
        ("the loopback address", "127.0.0.1:8765", (), 200),
        ("localhost", "localhost:8765", (), 200),
        ("a rebinding attacker's name", "rebind.attacker.example:8765", (), 400),
        ("an attacker's name without port", "rebind.attacker.example", (), 400),
        ("no host at all", "", (), 400),
        ("a name the operator allowed", "drone.example:8765", ("drone.example",), 200),
        ("any name with *", "rebind.attacker.example", ("*",), 200),
    ],
)
def test_the_host_header_must_name_this_daemon(app_of, case, host, allowed, status):
    _, client = app_of(allowed_hosts=allowed)
    for path in ("/detections", "/health", "/images/1"):
        r = client.get(path, headers={"Host": host})
        if status == 400:
            assert r.status_code == 400 and "Host header" in r.json()["detail"], (case, path, r.text)
        else:
            assert r.status_code != 400, (case, path, r.text)


def test_with_a_token_any_host_is_accepted_and_the_token_is_what_counts(app_of):
    _, client = app_of(token="s3cret")
    rebound = {"Host": "rebind.attacker.example:8765"}
    assert client.get("/detections", headers=rebound).status_code == 401  # no token: nothing to read
    r = client.get("/detections", headers={**rebound, "Authorization": "Bearer s3cret"})
    assert r.status_code == 200  # e.g. behind Docker's -p or a proxy, whose clients use their own names


def test_the_address_connected_to_is_a_good_host(app_of):
    from fastapi.testclient import TestClient

    from edgetile.runtime.serve.app import create_app

    daemon, _ = app_of()
    with TestClient(create_app(daemon), base_url="http://10.1.2.3:8765") as c:  # scope server: 10.1.2.3
        assert c.get("/detections").status_code == 200
        assert c.get("/detections", headers={"Host": "10.9.9.9:8765"}).status_code == 400


@pytest.mark.parametrize(
    "case, headers, status",
    [
        ("a program: no Origin, no Sec-Fetch-Site", {}, 201),
        ("the daemon's own page", {"Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-origin"}, 201),
        ("another site's page", {"Origin": "http://evil.example"}, 403),
        ("another site's page, fetch metadata", {"Sec-Fetch-Site": "cross-site"}, 403),
        ("a sibling site", {"Origin": "http://127.0.0.1:9999", "Sec-Fetch-Site": "same-site"}, 403),
        ("a sandboxed frame", {"Origin": "null"}, 403),
    ],
)
def test_cross_site_uploads_are_refused(app_of, case, headers, status):
    _, client = app_of()
    r = client.post(
        "/images", files={"file": ("a.jpg", photo_bytes(len(case)), "image/jpeg")}, headers=headers
    )
    assert r.status_code == status, (case, r.text)
    if status == 403:
        assert "\n" not in r.json()["detail"] and "expected a request from" in r.json()["detail"]


# ---- uploads past the limit ------------------------------------------------------------------------


def test_content_length_with_chunked_is_refused_and_bodies_are_counted_as_they_arrive(app_of):
    daemon, client = app_of(max_upload_bytes=100_000)
    r = client.post(
        "/images?name=a.jpg",
        content=iter([b"\xff\xd8\xff" + b"x" * 1000] * 3),
        headers={"Content-Length": "10", "Transfer-Encoding": "chunked", "Content-Type": "image/jpeg"},
    )
    assert r.status_code == 400 and "found both" in r.json()["detail"], r.text
    # a body longer than its Content-Length says (an HTTP server would cut it; the count holds anyway)
    over = 100_000 + 64 * 1024 + 1
    for ctype, body in [("image/jpeg", b"\xff" * over), ("multipart/form-data; boundary=b", b"-" * over)]:
        r = client.post(
            "/images?name=a.jpg", content=body, headers={"Content-Type": ctype, "Content-Length": "1000"}
        )
        assert r.status_code == 413 and "request body too large" in r.json()["detail"], (ctype, r.text)
    assert list(daemon.config.tmp_dir.iterdir()) == [] and list(daemon.config.uploads_dir.iterdir()) == []


def test_an_upload_that_would_cross_the_free_space_floor_is_refused(app_of, monkeypatch):
    daemon, client = app_of(min_free_bytes=1 << 20)
    monkeypatch.setattr(daemon.floor, "free_bytes", lambda: (1 << 20) + 50_000)  # above the floor by 50 kB
    data = photo_bytes(3)
    assert 25_000 < len(data) < 100_000
    r = client.post(
        "/images?name=a.jpg", content=data + b"\0" * 30_000, headers={"Content-Type": "image/jpeg"}
    )
    assert r.status_code == 507 and "twice the upload" in r.json()["detail"], r.text
    monkeypatch.setattr(daemon.floor, "free_bytes", lambda: (1 << 20) + 10 * len(data))
    r = client.post("/images?name=a.jpg", content=data, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 201, r.text


@pytest.mark.slow
def test_a_chunked_body_behind_a_small_content_length_never_reaches_the_disk(tmp_path, model):
    import socket
    import urllib.parse

    with ServeProcess(
        tmp_path, "--model", model, "--state", tmp_path / "state", "--max-upload-mb", "0.2"
    ) as d:
        d.start()
        where = urllib.parse.urlsplit(d.url)
        sent = 0
        with socket.create_connection((where.hostname, where.port), timeout=20) as s:
            s.sendall(
                b"POST /images?name=big.jpg HTTP/1.1\r\nHost: %s\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n" % where.netloc.encode()
            )
            chunk = b"100000\r\n" + b"\xff" * 0x100000 + b"\r\n"
            try:
                for _ in range(256):  # up to 256 MiB, bounded, on loopback
                    s.sendall(chunk)
                    sent += len(chunk)
                s.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon answered and closed: the point
            s.settimeout(20)
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert sent < 64 << 20, f"the daemon read {sent} bytes before answering"
        spooled = sum(
            p.stat().st_size for p in (tmp_path / "state").rglob("*") if p.is_file() and "queue" not in p.name
        )
        assert spooled < 1 << 20, spooled
        assert d.terminate() == 0, d.log()


# ---- links in watched folders, and bytes that were never an image ----------------------------------


def test_links_in_a_watched_folder_are_not_followed(tmp_path):
    from edgetile.runtime.serve.sources import FolderWatcher
    from edgetile.runtime.serve.store import PhotoQueue

    secret = tmp_path / "secrets.txt"
    secret.write_text("the daemon's secret")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_jpeg(elsewhere / "outside.jpg", person_photo(4))
    drop = tmp_path / "drop"
    drop.mkdir()
    write_jpeg(drop / "real.jpg", person_photo(5))
    (drop / "leak.jpg").symlink_to(secret)
    (drop / "photo_link.jpg").symlink_to(elsewhere / "outside.jpg")  # an image, but outside the folder
    (drop / "folder_link").symlink_to(elsewhere, target_is_directory=True)
    with PhotoQueue(tmp_path / "q.sqlite3") as q:
        assert FolderWatcher([drop], settle=0.0).scan(q, now=1.0) == 1
        assert [r[0] for r in q.conn.execute("SELECT name FROM items")] == [str(drop / "real.jpg")]


def finished(daemon, path: Path, ok: bool) -> int:
    """Record ``path`` as an input and commit its outcome (ok or failed); returns the outcome id."""
    import hashlib

    from edgetile.runtime.serve.store import Outcome, PhotoQueue

    with PhotoQueue(daemon.config.db_path, 1, 0) as q:
        q.add(hashlib.sha256(path.read_bytes()).hexdigest(), "watch", str(path), path)
        (item,) = q.claim(1)
        outcome = Outcome(item, 320, 240, [], {}) if ok else Outcome(item, error="not a readable image")
        q.finish([outcome])
        return q.conn.execute("SELECT max(id) FROM outcomes").fetchone()[0]


def test_bytes_that_never_decoded_are_never_served(app_of, tmp_path):
    daemon, client = app_of()
    secret = tmp_path / "secret.jpg"
    secret.write_text("password=hunter2")
    bad = finished(daemon, secret, ok=False)
    r = client.get(f"/images/{bad}")
    assert r.status_code == 409 and "hunter2" not in r.text and "failed input" in r.json()["detail"], r.text

    # a photo that was read, then replaced by a link to something else
    good = tmp_path / "good.jpg"
    write_jpeg(good, person_photo(6))
    done = finished(daemon, good, ok=True)
    assert client.get(f"/images/{done}").content == good.read_bytes()
    good.unlink()
    good.symlink_to(secret)
    r = client.get(f"/images/{done}")
    assert r.status_code == 409 and "hunter2" not in r.text and "no longer a plain file" in r.text, r.text


# ---- start-up and odd values -----------------------------------------------------------------------


def damaged_queue(state: Path, how: str) -> Path:
    """A queue database of a few hundred inputs, then damaged as a dying SD card or a cut write leaves it."""
    from edgetile.runtime.serve.store import PhotoQueue

    state.mkdir(parents=True)
    db = state / "queue.sqlite3"
    with PhotoQueue(db) as q:
        q.add_many([(f"{i:064x}", "watch", f"/drop/{i}.jpg" * 4, f"/drop/{i}.jpg", None) for i in range(600)])
    data = bytearray(db.read_bytes())
    assert len(data) > 8 * 4096 and not (state / "queue.sqlite3-wal").exists()
    if how == "bad header":
        data[:16] = b"not a database!!"
    elif how == "truncated":
        data = data[: len(data) // 2 + 100]
    else:  # a page of the items table overwritten
        data[3 * 4096 : 4 * 4096] = bytes(range(256)) * 16
    db.write_bytes(bytes(data))
    return db


@pytest.mark.slow
@pytest.mark.parametrize("how", ["bad header", "truncated", "bad page"])
def test_a_damaged_queue_database_is_refused_with_one_line_and_exit_2(tmp_path, model, how):
    db = damaged_queue(tmp_path / "state", how)
    d = ServeProcess(tmp_path, "--model", model, "--state", tmp_path / "state")
    assert d.run_to_exit() == 2, d.log()
    log = d.log()
    lines = [ln for ln in log.splitlines() if "error" in ln.lower()]
    assert "Traceback" not in log and len(lines) == 1, log
    assert str(db) in lines[0] and f"mv {db} {db}.damaged" in lines[0], lines[0]


READ_ONLY = Path("/sys/kernel")  # read-only for every user, root included


@pytest.mark.slow
@pytest.mark.skipif(not READ_ONLY.is_dir(), reason="needs sysfs at /sys as a read-only folder")
@pytest.mark.parametrize("where", [READ_ONLY, READ_ONLY / "edgetile-test"])
def test_a_read_only_out_or_state_is_one_line_and_exit_2(tmp_path, model, where):
    write_jpeg(tmp_path / "a.jpg", person_photo(0))
    r = subprocess.run(
        [*EDGETILE, "detect", str(tmp_path / "a.jpg"), "--model", str(model), "--out", str(where)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and f"--out {where}: cannot write there" in r.stderr, r.stderr
    d = ServeProcess(tmp_path, "--model", model, "--state", where)
    assert d.run_to_exit() == 2, d.log()
    assert "Traceback" not in d.log() and f"--state {where}: cannot write there" in d.log(), d.log()


def test_ids_past_sqlites_integers_are_422_not_500(app_of):
    _, client = app_of()
    big = 2**63
    for path in (f"/images/{big}", f"/images/{big}/annotated", f"/images/{10**30}"):
        r = client.get(path)
        assert r.status_code == 422 and "expected an integer in 0..9223372036854775807" in r.text, (
            path,
            r.text,
        )
    for path in (f"/detections?since={big}", f"/failed?since={big}"):
        assert client.get(path).status_code == 422, path
    assert client.get(f"/images/{big - 1}").status_code == 404
    assert client.get(f"/detections?since={big - 1}").json() == {"items": [], "next": big - 1}


class _NoPeople:
    names = {0: "person"}
    infers_on_cpu = True

    def detect(self, image, timings):
        from edgetile.runtime.results import Detections

        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def test_a_full_disk_at_commit_is_not_the_photos_fault(tmp_path, monkeypatch):
    import sqlite3
    import threading

    from edgetile.runtime.serve import daemon as daemon_module
    from edgetile.runtime.serve.config import ServeConfig
    from edgetile.runtime.serve.store import PhotoQueue

    monkeypatch.setattr(daemon_module, "COMMIT_RETRY_S", 0.05, raising=False)
    full = {"left": 3}
    real_finish = PhotoQueue.finish

    def finish(self, outcomes, outbox_limit=None):
        if full["left"] > 0:
            full["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real_finish(self, outcomes, outbox_limit)

    monkeypatch.setattr(PhotoQueue, "finish", finish)
    cfg = ServeConfig(state=tmp_path / "state", max_attempts=1, retry_after=0, min_free_bytes=0)
    d = daemon_module.Daemon(cfg, _NoPeople())
    d._prepare_state()
    write_jpeg(tmp_path / "a.jpg", person_photo(7))
    with PhotoQueue(cfg.db_path) as q:
        q.add("a" * 64, "watch", str(tmp_path / "a.jpg"), tmp_path / "a.jpg")
    worker = threading.Thread(target=d.work)
    worker.start()
    try:
        for _ in range(200):
            with PhotoQueue(cfg.db_path) as q:
                if q.counts()["done"]:
                    break
            worker.join(0.05)
    finally:
        d.request_stop()
        worker.join(30)
    assert d.worker_error is None, d.worker_error
    with PhotoQueue(cfg.db_path) as q:
        assert q.counts()["done"] == 1 and q.counts()["parked"] == 0
        assert (
            q.conn.execute("SELECT attempts FROM items").fetchone()[0] == 1
        )  # one attempt, however many commits

    # stopped while the disk stays full: given back to the queue with its attempt uncounted
    full["left"] = 10**6
    write_jpeg(tmp_path / "b.jpg", person_photo(8))
    with PhotoQueue(cfg.db_path) as q:
        q.add("b" * 64, "watch", str(tmp_path / "b.jpg"), tmp_path / "b.jpg")
    d.stop.clear()
    worker = threading.Thread(target=d.work)
    worker.start()
    worker.join(1.0)
    d.request_stop()
    worker.join(30)
    assert d.worker_error is None, d.worker_error
    with PhotoQueue(cfg.db_path) as q:
        row = q.conn.execute("SELECT state, attempts FROM items WHERE sha256=?", ("b" * 64,)).fetchone()
        assert tuple(row) == ("queued", 0)


def test_health_says_what_fails_when_folder_scans_fail(app_of, tmp_path, monkeypatch):
    import sqlite3
    import threading

    from edgetile.runtime.serve.sources import FolderWatcher
    from edgetile.runtime.serve.store import PhotoQueue

    daemon, client = app_of()
    daemon.worker_alive = lambda: True
    drop = tmp_path / "drop"
    drop.mkdir()
    write_jpeg(drop / "a.jpg", person_photo(9))

    def add_many(self, *args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(PhotoQueue, "add_many", add_many)
    daemon.watcher = FolderWatcher([drop, tmp_path / "card"], settle=0.0)
    stop = threading.Event()
    scans = threading.Thread(target=daemon.watcher.run, args=(daemon.config.db_path, stop, 0.05, lambda: 1.0))
    scans.start()
    try:
        for _ in range(100):
            if daemon.watcher.failing:
                break
            scans.join(0.05)
        body = client.get("/health").json()
    finally:
        stop.set()
        scans.join(30)
    assert body["status"] == "degraded", body
    assert any("card" in p and "not there" in p for p in body["problems"]), body
    assert any("database or disk is full" in p and str(drop) in p for p in body["problems"]), body


def test_hundreds_of_broken_xmp_packets_are_said_once_counted(tmp_path):
    from geo_photos import splice_app1

    from edgetile.runtime.geo.pose import XMP_HEADER, PoseError, pose_from_photo

    ok, buf = cv2.imencode(".jpg", person_photo(10))
    data = buf.tobytes()
    for _ in range(250):
        data = splice_app1(data, XMP_HEADER + b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><broken")
    (tmp_path / "x.jpg").write_bytes(data)
    with pytest.raises(PoseError) as info:
        pose_from_photo(tmp_path / "x.jpg")
    message = str(info.value)
    assert "(the first of 250 broken XMP packets)" in message and len(message) < 600, message
    assert message.count("not well-formed") == 1, message


# ---- slow clients and floods -----------------------------------------------------------------------


@pytest.mark.slow
def test_half_sent_requests_are_closed_and_health_keeps_answering(tmp_path, model):
    import socket
    import time
    import urllib.parse

    with ServeProcess(
        tmp_path,
        "--model",
        model,
        "--state",
        tmp_path / "state",
        "--max-connections",
        "20",
        "--header-timeout",
        "1",
    ) as d:
        d.start()
        where = urllib.parse.urlsplit(d.url)
        slow = []
        try:
            for _ in range(60):  # three times the cap, on loopback: a bounded slowloris
                s = socket.create_connection((where.hostname, where.port), timeout=10)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: %s\r\nX-Slow: " % where.netloc.encode())
                slow.append(s)
            status, _, body = d.request("/health", timeout=10)
            assert status == 200 and json.loads(body)["status"] == "ok", body
            # past the header timeout every half-sent request has been closed by the daemon
            deadline = time.monotonic() + 15
            for s in slow:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    assert s.recv(1024) == b""
                except ConnectionResetError:
                    pass
            fds = len(list(Path(f"/proc/{d.pid}/fd").iterdir()))
            assert fds < 60, f"the daemon holds {fds} file descriptors"
        finally:
            for s in slow:
                s.close()
        assert d.request("/health")[0] == 200
        assert "Traceback" not in d.log()
        assert d.terminate() == 0, d.log()


def test_repeated_log_lines_are_said_once_a_window_and_counted():
    import logging

    from edgetile.runtime.serve.command import RepeatedLines

    now = [0.0]
    f = RepeatedLines(window=60.0, clock=lambda: now[0])

    def rec(msg, *args, name="asyncio", level=logging.ERROR):
        return logging.LogRecord(name, level, __file__, 1, msg, args, None)

    said = [f.filter(rec("socket.accept() out of system resource")) for _ in range(5000)]
    assert said.count(True) == 1
    assert f.filter(rec("%s: attempt %d failed", "a.jpg", 1)) and f.filter(
        rec("%s: attempt %d failed", "b.jpg", 1)
    )
    assert all(f.filter(rec("video x: reconnecting in 1 s", name="edgetile.serve")) for _ in range(3))
    now[0] = 61.0
    r = rec("socket.accept() out of system resource")
    assert f.filter(r) and r.getMessage().endswith("(4999 more like it in the last 60 s not logged)")
    assert not f.filter(rec("socket.accept() out of system resource"))


def test_annotated_images_are_decoded_two_at_a_time(app_of, tmp_path, monkeypatch):
    import threading
    import time

    from edgetile.runtime.serve import app as app_module

    daemon, client = app_of()
    write_jpeg(tmp_path / "p.jpg", person_photo(11))
    done = finished(daemon, tmp_path / "p.jpg", ok=True)
    now, most, lock = [0], [0], threading.Lock()
    real = app_module.read_image

    def read_image(path, max_pixels):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.2)
        with lock:
            now[0] -= 1
        return real(path, max_pixels)

    monkeypatch.setattr(app_module, "read_image", read_image)
    answers = []
    threads = [
        threading.Thread(target=lambda: answers.append(client.get(f"/images/{done}/annotated").status_code))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [200] * 8 and most[0] == 2, (answers, most)


@pytest.mark.parametrize(
    "ext, params",
    [
        (".jpg", []),
        (".png", []),
        (".bmp", []),
        (".tif", []),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),  # lossy: VP8
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),  # lossless: VP8L
        (".jp2", []),
    ],
)
def test_every_format_read_tells_its_size_from_the_header(tmp_path, ext, params):
    from edgetile.runtime.images import claimed_size

    ok, buf = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8), params)
    assert ok
    (tmp_path / f"x{ext}").write_bytes(buf.tobytes())
    assert claimed_size(tmp_path / f"x{ext}") == (53, 37)


def _tiff_with_size(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".tif", np.zeros((4, 4, 3), np.uint8))
    data = bytearray(buf.tobytes())
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, kind = struct.unpack("<HH", data[at : at + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            data[at + 8 : at + 12] = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
    return bytes(data)


def _bmp_with_size(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".bmp", np.zeros((4, 4, 3), np.uint8))
    data = bytearray(buf.tobytes())
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


@pytest.mark.parametrize(
    "case, data", [("tiff", _tiff_with_size(60000, 60000)), ("bmp", _bmp_with_size(60000, 60000))]
)
def test_bombs_in_other_formats_are_refused_before_opencv_sees_them(tmp_path, case, data):
    path = tmp_path / f"bomb.{case}"
    path.write_bytes(data)
    with pytest.raises(ImageTooLarge, match="found 60000x60000"):
        read_image(path)
