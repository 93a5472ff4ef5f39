"""The daemon's rarer paths, each with a real `edgetile serve` process: a photo failing on the read-ahead
thread in the middle of a batch, the worker dying on a failed SQLite write (exit 1), a backend failure
that is not a ValueError, and --retry-failed at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_process import ServeProcess, hold_detect, person_photo, write_jpeg

from onnx_models import red_blob_model

pytestmark = pytest.mark.slow

DETECT_OPTIONS = ["--tile", "256"]
FAST = ["--settle", "0", "--poll", "0.1", "--retry-after", "0", "--max-attempts", "2"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


@pytest.fixture(scope="module")
def odd_failing_model(tmp_path_factory):
    """Fails in ONNX Runtime (onnxruntime's Fail, not a ValueError) on a photo of one 256 px tile."""
    return red_blob_model(tmp_path_factory.mktemp("models") / "odd.onnx", fail_odd_batch=True)


# A prelude that says in the daemon's log which inputs reached the worker with the read-ahead thread's
# error attached, so that the test knows the failure took that path and not a read in turn.
SAY_READ_AHEAD_ERRORS = """
from edgetile.runtime.serve.daemon import Daemon, log
_process = Daemon.process
def process(self, item, ahead=None, read_error=None):
    if read_error is not None:
        log.info("test: %s failed on the read-ahead thread", item.name)
    return _process(self, item, ahead, read_error)
Daemon.process = process
"""


def by_name(items: list[dict]) -> dict[str, dict]:
    return {Path(it["image"]).name: it for it in items}


def test_a_corrupt_photo_failing_on_the_read_ahead_thread_mid_batch_fails_alone(tmp_path, model):
    drop, release = tmp_path / "drop", tmp_path / "release"
    drop.mkdir()
    write_jpeg(drop / "a.jpg", person_photo(1))
    # The first photo waits in detect while the next four are queued, so that they are claimed together:
    # b, then the cut c read on the read-ahead thread while b is detected, then d and e.
    with ServeProcess(
        tmp_path,
        "--model",
        model,
        *DETECT_OPTIONS,
        "--watch",
        drop,
        "--state",
        tmp_path / "state",
        *FAST,
        "--queue-batch",
        "4",
        "--read-ahead",
        "64",
        "--log-level",
        "debug",
        prelude=hold_detect(1, release) + SAY_READ_AHEAD_ERRORS,
    ).start() as d:
        d.wait_for(lambda: "claimed 1 input(s)" in d.log(), what="the first photo in hand")
        for name, seed in (("b.jpg", 2), ("d.jpg", 4), ("e.jpg", 5)):
            write_jpeg(drop / name, person_photo(seed))
        cut = write_jpeg(tmp_path / "c.jpg", person_photo(3))[:3000]  # a card pulled out mid-write
        (drop / "c.jpg").write_bytes(cut)
        d.wait_for(lambda: d.log().count(" queued ") == 5, what="four more photos queued")
        release.touch()
        d.wait_for(lambda: len(d.json("/failed")["items"]) == 1, what="the cut photo parked")
        done = by_name(d.all_pages("/detections"))
        assert set(done) == {"a.jpg", "b.jpg", "d.jpg", "e.jpg"}
        assert all(it["detections"] for it in done.values())
        failed = d.json("/failed")["items"][0]
        assert Path(failed["image"]).name == "c.jpg" and failed["attempts"] == 2
        assert "truncated JPEG" in failed["error"] or "corrupt" in failed["error"], failed
        log = d.log()
        assert "claimed 4 input(s)" in log and "committed 4 outcome(s)" in log
        assert "c.jpg: attempt 1 of 2 failed" in log and "Traceback" not in log
        assert log.count("c.jpg failed on the read-ahead thread") == 2  # both attempts
        assert log.count("failed on the read-ahead thread") == 2  # and no other photo
        assert d.json("/health")["status"] == "ok"
        assert d.terminate() == 0, d.log()


def break_commit(marker: Path) -> str:
    """A prelude for ServeProcess: once ``marker`` exists, the queue's commit of a batch fails as SQLite
    does on a damaged database (a full disk is no such failure: the daemon waits for room instead)."""
    return (
        "import os, sqlite3\n"
        "from edgetile.runtime.serve.store import PhotoQueue\n"
        "_finish = PhotoQueue.finish\n"
        "def finish(self, outcomes, *args, **kwargs):\n"
        f"    if os.path.exists({str(marker)!r}):\n"
        "        raise sqlite3.DatabaseError('database disk image is malformed')\n"
        "    return _finish(self, outcomes, *args, **kwargs)\n"
        "PhotoQueue.finish = finish\n"
    )


def test_the_worker_dying_on_a_failed_sqlite_commit_stops_the_daemon_with_exit_1(tmp_path, model):
    drop, release, broken, state = (
        tmp_path / "drop",
        tmp_path / "release",
        tmp_path / "broken",
        tmp_path / "state",
    )
    drop.mkdir()
    write_jpeg(drop / "a.jpg", person_photo(1))
    args = ["--model", model, *DETECT_OPTIONS, "--watch", drop, "--state", state, *FAST]
    prelude = hold_detect(1, release) + break_commit(broken)
    d = ServeProcess(tmp_path, *args, "--log-level", "debug", prelude=prelude).start()
    try:
        d.wait_for(lambda: "claimed 1 input(s)" in d.log(), what="the photo in hand")
        broken.touch()  # the commit of the photo in hand fails
        release.touch()
        assert d.wait(60) == 1, d.log()
    finally:
        d.kill()
    log = d.log()
    assert "the worker stopped; what it had not committed runs again at the next start" in log
    assert "database disk image is malformed" in log, log[-3000:]
    # A sound database again: the next start runs what the dead worker had not committed.
    with ServeProcess(tmp_path, *args).start() as d2:
        items = d2.wait_for(lambda: d2.all_pages("/detections"), what="the photo processed")
        assert [Path(it["image"]).name for it in items] == ["a.jpg"] and items[0]["detections"]
        assert d2.terminate() == 0


def test_a_backend_failure_that_is_not_a_value_error_fails_that_input_only(tmp_path, odd_failing_model):
    drop = tmp_path / "drop"
    drop.mkdir()
    write_jpeg(drop / "wide.jpg", person_photo(1))  # 320x240: two tiles, an even batch
    write_jpeg(drop / "small.jpg", person_photo(2, 200, 200))  # one tile: the model fails on it
    with ServeProcess(
        tmp_path,
        "--model",
        odd_failing_model,
        *DETECT_OPTIONS,
        "--watch",
        drop,
        "--state",
        tmp_path / "state",
        *FAST,
    ).start() as d:
        d.wait_for(
            lambda: d.all_pages("/detections") and d.json("/failed")["items"], what="one done, one parked"
        )
        assert [Path(it["image"]).name for it in d.all_pages("/detections")] == ["wide.jpg"]
        failed = d.json("/failed")["items"][0]
        assert Path(failed["image"]).name == "small.jpg" and failed["attempts"] == 2
        # Recorded as 'TypeName: first line', the type being ONNX Runtime's own (Fail), not a ValueError.
        assert failed["error"].startswith("Fail: [ONNXRuntimeError]") and "\n" not in failed["error"]
        log = d.log()
        assert "small.jpg: attempt 1 of 2 failed" in log
        assert "Traceback" in log and "onnxruntime" in log  # an unexpected failure is logged whole
        assert d.json("/health")["status"] == "ok"  # and the daemon goes on
        assert d.terminate() == 0


def test_retry_failed_at_start_sends_parked_inputs_back_with_fresh_tries(tmp_path, model, odd_failing_model):
    drop, state = tmp_path / "drop", tmp_path / "state"
    drop.mkdir()
    write_jpeg(drop / "small.jpg", person_photo(2, 200, 200))
    with ServeProcess(
        tmp_path, "--model", odd_failing_model, *DETECT_OPTIONS, "--watch", drop, "--state", state, *FAST
    ).start() as d:
        d.wait_for(lambda: d.json("/failed")["items"], what="the photo parked")
        assert d.terminate() == 0
    # Without --retry-failed a start leaves it parked; with it, the fixed model gets fresh tries.
    with ServeProcess(
        tmp_path, "--model", model, *DETECT_OPTIONS, "--watch", drop, "--state", state, *FAST
    ).start() as d:
        assert d.json("/health")["queue_depth"] == 0 and len(d.json("/failed")["items"]) == 1
        assert "--retry-failed" not in d.log()
        assert d.terminate() == 0
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
        "--retry-failed",
    ).start() as d:
        assert "--retry-failed: 1 parked input(s) queued again" in d.log()
        items = d.wait_for(lambda: d.all_pages("/detections"), what="the retried photo processed")
        assert [Path(it["image"]).name for it in items] == ["small.jpg"] and items[0]["detections"]
        assert d.json("/failed")["items"] == []
        assert d.terminate() == 0
