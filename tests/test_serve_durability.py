"""The daemon never loses a photo: SIGKILL midway and restart, and a 2,000-photo soak in bounded memory."""

from __future__ import annotations

import collections
import sqlite3
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_process import ServeProcess, person_photo, write_jpeg

from onnx_models import red_blob_model

DETECT_OPTIONS = ["--tile", "256"]
FAST = ["--settle", "0", "--poll", "0.1", "--retry-after", "0", "--max-attempts", "2", "--queue-batch", "4"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


def finished(d: ServeProcess) -> int:
    """Inputs with an outcome (results or parked), from /metrics."""
    status, _, body = d.request("/metrics")
    assert status == 200
    values = {
        f.name: f.samples[0].value
        for f in text_string_to_metric_families(body.decode())
        if f.name in ("edgetile_processed", "edgetile_failed")
    }
    return int(values["edgetile_processed"] + values["edgetile_failed"])


def drop_photos(
    drop, start: int, count: int, corrupt_every: int = 10, size=(320, 240)
) -> tuple[list[str], list[str]]:
    """Write photos; every corrupt_every-th is broken (cut JPEG, random bytes or text), each distinct."""
    good, bad = [], []
    for i in range(start, start + count):
        path = drop / f"img_{i:05d}.jpg"
        if i % corrupt_every == corrupt_every - 1:
            kind = (i // corrupt_every) % 3
            if kind == 0:
                full = write_jpeg(path, person_photo(100_000 + i, *size))
                path.write_bytes(full[: len(full) // 2])
            elif kind == 1:
                path.write_bytes(bytes((i * 7 + k) % 251 for k in range(500)))
            else:
                path = path.with_suffix(".png")
                path.write_text(f"photo {i} went missing")
            bad.append(str(path))
        else:
            write_jpeg(path, person_photo(i, *size))
            good.append(str(path))
    return good, bad


@pytest.mark.slow
def test_sigkill_midway_then_restart_gives_every_photo_exactly_one_outcome(tmp_path, model):
    drop, state = tmp_path / "drop", tmp_path / "state"
    drop.mkdir()
    good, bad = drop_photos(drop, 0, 100)
    args = ["--model", model, *DETECT_OPTIONS, "--watch", drop, "--state", state, *FAST]
    d = ServeProcess(tmp_path, *args).start()
    # The second hundred arrives while the daemon works; it is killed (as by a power cut) midway.
    written = 100
    while written < 200 and finished(d) < 80:
        g, b = drop_photos(drop, written, 10)
        good, bad, written = good + g, bad + b, written + 10
        time.sleep(0.05)
    d.wait_for(lambda: finished(d) >= 80, what="80 outcomes", interval=0.02)
    at_kill = finished(d)
    d.kill()
    while written < 200:  # the rest lands while it is down
        g, b = drop_photos(drop, written, 10)
        good, bad, written = good + g, bad + b, written + 10
    assert len(good) == 180 and len(bad) == 20
    print(f"\nSIGKILL after {at_kill} of 200 outcomes")
    assert 0 < at_kill < 200

    with ServeProcess(tmp_path, *args).start() as d2:
        d2.wait_for(lambda: finished(d2) == 200, what="200 outcomes after the restart", timeout=120)
        results = collections.Counter(it["image"] for it in d2.all_pages("/detections"))
        failed = d2.all_pages("/failed")
        recovered = [line for line in d2.log().splitlines() if "without finishing" in line]
        assert d2.terminate() == 0
    print("restart:", recovered[0].split(": ", 1)[1] if recovered else "nothing was in flight at the kill")
    assert set(results) == set(good)
    assert max(results.values()) == 1  # exactly one result per good photo
    assert sorted(it["image"] for it in failed) == sorted(bad)  # exactly one parked error per broken file
    for it in failed:
        assert it["error"] and "\n" not in it["error"]
    with sqlite3.connect(state / "queue.sqlite3") as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT item_id) FROM outcomes").fetchone() == (200, 200)
        assert dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()) == {
            "done": 180,
            "parked": 20,
        }


@pytest.mark.slow
def test_soak_2000_photos_in_bounded_memory(tmp_path, model):
    drop, state = tmp_path / "drop", tmp_path / "state"
    drop.mkdir()
    total, wave = 2000, 250
    size = (256, 192)  # one tile each: the soak is about the daemon, not the detector
    drop_photos(drop, 0, wave, corrupt_every=100, size=size)
    t0 = time.monotonic()
    with ServeProcess(
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
        "16",
    ).start() as d:
        d.wait_for(lambda: finished(d) == wave, what="the first wave", timeout=120)
        rss_start = peak = d.rss_mb()  # warm: model loaded, every code path taken once
        for start in range(wave, total, wave):
            drop_photos(drop, start, wave, corrupt_every=100, size=size)
            d.wait_for(lambda s=start: finished(d) == s + wave, what=f"{start + wave} outcomes", timeout=180)
            peak = max(peak, d.rss_mb())
        rss_end = d.rss_mb()
        pages = d.all_pages("/detections")
        failed = d.all_pages("/failed")
        assert d.terminate() == 0
    elapsed = time.monotonic() - t0
    print(
        f"\nsoak: {total} photos in {elapsed:.0f} s; daemon RSS {rss_start:.1f} MB after the first {wave}, "
        f"{rss_end:.1f} MB at the end (growth {rss_end - rss_start:+.1f} MB), peak {peak:.1f} MB"
    )
    assert len(pages) == total - total // 100 and len(failed) == total // 100
    assert len({it["image"] for it in pages}) == len(pages)
    # Bounded: the queue lives in SQLite, not in the process; what grows is allocator noise.
    assert rss_end - rss_start < 30, f"RSS grew by {rss_end - rss_start:.1f} MB over {total - wave} photos"
