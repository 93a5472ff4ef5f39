"""The daemon's parts on their own: the SQLite queue's rules, sysfs sensors, metrics text, names, watcher, config."""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgetile.runtime.options.files import resolve_options
from edgetile.runtime.serve.command import register
from edgetile.runtime.serve.config import ConfigError, ServeConfig
from edgetile.runtime.serve.sources import FolderWatcher
from edgetile.runtime.serve.store import Outcome, PhotoQueue
from edgetile.runtime.serve.telemetry import Rail, Sensors, StageHistograms, read_sensors, render_prometheus
from edgetile.runtime.serve.uploads import sanitize_name


def sha(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
def db(tmp_path):
    return tmp_path / "queue.sqlite3"


def test_queue_uses_wal_and_dedupes_by_content(db):
    with PhotoQueue(db) as q:
        assert q.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert q.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        first = q.add(sha(1), "watch", "/a/x.jpg", "/a/x.jpg")
        again = q.add(sha(1), "upload", "x.jpg", "/state/uploads/1.jpg")  # same bytes, another way in
        other = q.add(sha(2), "watch", "/a/y.jpg", "/a/y.jpg")
    assert first == (1, True) and again == (1, False) and other[1] is True and other[0] > 1
    with PhotoQueue(db) as q:  # committed: a new connection sees it
        assert q.counts() == {"queued": 2, "running": 0, "done": 0, "parked": 0}


def test_an_item_gets_one_outcome_ever(db):
    with PhotoQueue(db) as q:
        q.add(sha(1), "watch", "a", "a")
        [item] = q.claim(4)
        q.finish([Outcome(item, 10, 10, [], {})])
        with pytest.raises(sqlite3.IntegrityError):  # a second result is impossible, not merely avoided
            q.finish([Outcome(item, 10, 10, [], {})])
        assert q.conn.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 1
        assert q.claim(4) == []


def test_retried_input_pages_after_later_ones_so_since_never_misses_it(db):
    with PhotoQueue(db, max_attempts=3, retry_after=0) as q:
        for n in (1, 2):
            q.add(sha(n), "watch", f"p{n}", f"p{n}")
        a, b = q.claim(2)
        q.finish([Outcome(a, error="disk hiccup"), Outcome(b, 5, 5, [{"bbox": [0, 0, 1, 1]}], {})])
        page, cursor = q.detections(0, 100)
        assert [it["image"] for it in page] == ["p2"]
        [a2] = q.claim(2)
        assert (a2.item_id, a2.attempts) == (a.item_id, 2)
        q.finish([Outcome(a2, 5, 5, [], {})])
        later, cursor2 = q.detections(cursor, 100)  # the client's next poll
        assert [it["image"] for it in later] == ["p1"] and cursor2 > cursor


def test_failures_are_retried_then_parked_with_the_last_error(db):
    with PhotoQueue(db, max_attempts=2, retry_after=60) as q:
        q.add(sha(1), "watch", "bad.jpg", "bad.jpg")
        [item] = q.claim(1)
        assert q.finish([Outcome(item, error="truncated JPEG")]) == 0
        assert q.claim(1) == []  # waits retry_after before the next try
        q.conn.execute("UPDATE items SET not_before=0")
        [item] = q.claim(1)
        assert q.finish([Outcome(item, error="truncated JPEG again")]) == 1
        failed, _ = q.failed(0, 10)
        assert [(f["image"], f["attempts"], f["error"]) for f in failed] == [
            ("bad.jpg", 2, "truncated JPEG again")
        ]
        assert q.retry_parked() == 1 and q.failed(0, 10)[0] == [] and len(q.claim(1)) == 1


def test_a_clock_that_jumped_back_does_not_hold_retries_forever(db):
    with PhotoQueue(db, max_attempts=3, retry_after=10) as q:
        q.add(sha(1), "watch", "a", "a")
        q.add(sha(2), "watch", "b", "b")
        a, b = q.claim(2)
        q.finish([Outcome(a, error="hiccup"), Outcome(b, error="hiccup")])
        assert q.claim(2) == []  # both wait 10 s
        # The clock was a year ahead when b failed (then GPS set it right): b is due now, a still waits.
        q.conn.execute(
            "UPDATE items SET not_before=? WHERE item_id=?", (time.time() + 365 * 86400, b.item_id)
        )
        assert [it.item_id for it in q.claim(2)] == [b.item_id]


def test_interrupted_items_come_back_alone_and_are_parked_when_they_keep_killing_the_daemon(db):
    with PhotoQueue(db, max_attempts=2) as q:
        for n in range(1, 6):
            q.add(sha(n), "watch", f"p{n}", f"p{n}")
        batch = q.claim(3)  # ... and the daemon dies (no finish)
    assert [it.item_id for it in batch] == [1, 2, 3]
    with PhotoQueue(db, max_attempts=2) as q:
        assert q.recover() == (3, 0)
        [suspect] = q.claim(3)  # a suspect is claimed alone, so that only it is blamed next time
        assert (suspect.item_id, suspect.attempts) == (1, 2)
        # ... the daemon dies again on the same photo
    with PhotoQueue(db, max_attempts=2) as q:
        assert q.recover() == (0, 1)
        [(item, error)] = [(f["image"], f["error"]) for f in q.failed(0, 10)[0]]
        assert item == "p1" and "stopped 2 time(s) while processing this input" in error
        assert [it.item_id for it in q.claim(3)] == [2]  # the batch mates: alone, on their 2nd attempt
        assert q.counts()["parked"] == 1


def write_tree(root, files):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_sensors_read_from_a_jetson_like_sysfs(tmp_path):
    # The layout of an Orin on JetPack 5/6: thermal zones, and INA3221 rails under hwmon (mV, mA).
    write_tree(
        tmp_path,
        {
            "class/thermal/thermal_zone0/type": "cpu-thermal\n",
            "class/thermal/thermal_zone0/temp": "47500\n",
            "class/thermal/thermal_zone1/type": "gpu-thermal\n",
            "class/thermal/thermal_zone1/temp": "46000\n",
            "class/thermal/thermal_zone2/type": "PMIC-Die\n",
            "class/thermal/thermal_zone2/temp": "",  # this zone gives no reading: left out
            "class/hwmon/hwmon0/name": "acpitz\n",  # not a power monitor
            "class/hwmon/hwmon0/in1_input": "999\n",
            "class/hwmon/hwmon1/name": "ina3221\n",
            "class/hwmon/hwmon1/in1_label": "VDD_IN\n",
            "class/hwmon/hwmon1/in1_input": "5040\n",
            "class/hwmon/hwmon1/curr1_input": "1250\n",
            "class/hwmon/hwmon1/in2_label": "VDD_CPU_GPU_CV\n",
            "class/hwmon/hwmon1/in2_input": "5000\n",
            "class/hwmon/hwmon1/curr2_input": "400\n",
            "class/hwmon/hwmon1/in3_label": "NC\n",  # not connected
            "class/hwmon/hwmon1/in3_input": "0\n",
            "class/hwmon/hwmon1/curr3_input": "0\n",
        },
    )
    s = read_sensors(tmp_path)
    assert s.temperatures == {"thermal_zone0": ("cpu-thermal", 47.5), "thermal_zone1": ("gpu-thermal", 46.0)}
    assert [(r.name, r.volts, r.amperes) for r in s.rails] == [
        ("VDD_IN", 5.04, 1.25),
        ("VDD_CPU_GPU_CV", 5.0, 0.4),
    ]
    assert s.rails[0].watts == pytest.approx(6.3)
    assert read_sensors(tmp_path / "nothing here") == Sensors({}, [])


def test_metrics_text_parses_with_the_prometheus_parser():
    h = StageHistograms()
    for ms in (0.5, 3.0, 40.0, 40.0, 7000.0):
        h.observe_ms({"infer": ms})
    h.observe("commit", 0.002)
    text = render_prometheus(
        {"queued": 3, "running": 1, "done": 10, "parked": 2},
        h,
        Sensors({"thermal_zone0": ('cpu "big"', 51.25)}, [Rail("VDD_IN", 5.0, 1.5)]),
        retries=4,
        started_at=time.time() - 5,
        version="1.2.3",
    )
    fam = {f.name: f for f in text_string_to_metric_families(text)}
    assert fam["edgetile_queue_depth"].samples[0].value == 4
    assert fam["edgetile_processed"].samples[0].value == 10 and fam["edgetile_failed"].samples[0].value == 2
    assert fam["edgetile_retries"].samples[0].value == 4
    buckets = {
        s.labels["le"]: s.value
        for s in fam["edgetile_stage_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["stage"] == "infer"
    }
    assert (
        buckets["0.001"],
        buckets["0.005"],
        buckets["0.05"],
        buckets["5"],
        buckets["10"],
        buckets["+Inf"],
    ) == (1, 2, 4, 4, 5, 5)
    temp = fam["edgetile_temperature_celsius"].samples[0]
    assert temp.labels == {"zone": "thermal_zone0", "type": 'cpu "big"'} and temp.value == 51.25
    assert fam["edgetile_rail_power_watts"].samples[0].value == 7.5
    assert fam["edgetile_build_info"].samples[0].labels == {"version": "1.2.3"}


@pytest.mark.parametrize(
    "raw, expected",
    [
        # what a client sends -> the label kept (never a path)
        ("IMG_0001.JPG", "IMG_0001.JPG"),
        ("../../etc/passwd", "passwd"),
        ("C:\\DCIM\\100MEDIA\\DJI 0001.jpg", "DJI_0001.jpg"),
        ("..", "upload"),
        ("", "upload"),
        (None, "upload"),
        (".hidden.jpg", "hidden.jpg"),
        ("photo\x00.jpg", "photo_.jpg"),
        ("фото 1.jpg", "1.jpg"),
        ("a" * 300 + ".jpg", "a" * 120),
        ("/", "upload"),
    ],
)
def test_sanitize_name(raw, expected):
    assert sanitize_name(raw) == expected


def test_watcher_waits_for_a_file_to_settle_and_skips_partial_and_hidden_names(tmp_path):
    drop, state = tmp_path / "drop", tmp_path / "drop" / "state"
    (drop / "sub").mkdir(parents=True)
    state.mkdir()
    with PhotoQueue(tmp_path / "q.sqlite3") as q:
        w = FolderWatcher([drop], settle=1.0, exclude=state)
        (drop / "sub" / "a.jpg").write_bytes(b"first half")
        for name in ("b.jpg.part", ".c.jpg", "d.txt"):
            (drop / name).write_bytes(b"x")
        (state / "e.jpg").write_bytes(b"our own file")
        assert w.scan(q, now=100.0) == 0  # first sight
        (drop / "sub" / "a.jpg").write_bytes(b"first half, second half")  # still being written
        assert w.scan(q, now=101.5) == 0  # changed: the clock restarts
        assert w.scan(q, now=102.0) == 0  # unchanged for 0.5 s only
        assert w.scan(q, now=102.6) == 1  # unchanged for 1.1 s: complete
        assert w.scan(q, now=110.0) == 0
        assert [r[0] for r in q.conn.execute("SELECT name FROM items")] == [str(drop / "sub" / "a.jpg")]
        # A restart (new watcher, same queue) does not record it again.
        assert FolderWatcher([drop], settle=0.0, exclude=state).scan(q, now=200.0) == 0
        # A new file with settle 0 (writers rename into the folder) is taken at first sight.
        (drop / "f.jpg").write_bytes(b"renamed in whole")
        assert FolderWatcher([drop], settle=0.0, exclude=state).scan(q, now=300.0) == 1


def test_watcher_waits_for_a_removed_card_and_skips_known_photos_when_it_returns(tmp_path, caplog):
    card, moved = tmp_path / "card", tmp_path / "elsewhere"
    card.mkdir()
    (card / "a.jpg").write_bytes(b"photo a")
    with PhotoQueue(tmp_path / "q.sqlite3") as q:
        w = FolderWatcher([card], settle=0.0)
        assert w.scan(q, now=1.0) == 1
        card.rename(moved)  # pulled out
        with caplog.at_level("INFO", logger="edgetile.serve"):
            assert w.scan(q, now=2.0) == 0 and w.scan(q, now=3.0) == 0
            moved.rename(card)  # back, with one new photo
            (card / "b.jpg").write_bytes(b"photo b")
            assert w.scan(q, now=4.0) == 1
        assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
            f"watched folder {card} is not there",
            f"watched folder {card} is back",
        ]  # said once each
        assert q.counts()["queued"] == 2


def serve_parser():
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    return p


@pytest.mark.parametrize(
    "yaml_text, cli, expected",
    [
        # config file, command line -> merged values
        ("watch: /x\n", [], {"watch": ["/x"]}),
        ("watch: [/x, /y]\nconf: 0.1\n", ["--conf", "0.3"], {"watch": ["/x", "/y"], "conf": 0.3}),
        ("frame_stride: 5\nframe-stride: 6\n", [], {"frame_stride": 6}),
        ("access-log: true\nfull_frame: true\n", [], {"access_log": True, "full_frame": True}),
        ("", ["--port", "0"], {"port": 0, "host": "127.0.0.1", "conf": 0.25}),
        (
            "model: [a.onnx, b.onnx]\nmodel-weights: [1, 2]\n",
            [],
            {"model": ["a.onnx", "b.onnx"], "model_weights": [1.0, 2.0]},
        ),
    ],
)
def test_config_file_and_command_line_merge(tmp_path, yaml_text, cli, expected):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    a = serve_parser().parse_args(["serve", "--config", str(cfg), *cli])
    merged = vars(resolve_options(a))
    assert {k: merged[k] for k in expected} == expected


@pytest.mark.parametrize(
    "cli, words",
    [
        # options that parse but describe a daemon that cannot run -> one-line ConfigError
        (["--config", "missing.yaml"], "cannot read"),
        (["--port", "70000"], "--port: expected 0..65535, found 70000"),
        (["--watch", "no_such_dir"], "--watch: expected an existing folder, found nothing at no_such_dir"),
        (["--video", "no_such.avi"], "--video: expected a video file"),
        (["--host", "0.0.0.0", "--token", "two words"], "--token: expected a non-empty token without spaces"),
        (["--host", "::"], "listening beyond this machine needs --token"),
    ],
)
def test_config_problems_raise_config_error(tmp_path, monkeypatch, cli, words):
    monkeypatch.chdir(tmp_path)
    a = serve_parser().parse_args(["serve", *cli])
    with pytest.raises(ConfigError) as info:
        ServeConfig.from_options(resolve_options(a))
    assert words in str(info.value)


def test_importing_the_runtime_and_building_the_cli_loads_no_web_framework():
    code = (
        "import sys, edgetile.runtime, edgetile.runtime.serve, edgetile.runtime.cli as c; c.build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'uvicorn', 'starlette', 'yaml', "
        "'onnxruntime', 'torch', 'pydantic'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_shipped_example_config_is_valid():
    example = Path(__file__).resolve().parents[1] / "deploy" / "serve.yaml"
    a = serve_parser().parse_args(["serve", "--config", str(example)])
    merged = resolve_options(a)
    assert merged.watch == ["/media/sdcard/DCIM", "/srv/ftp/incoming"] and merged.frame_stride == 15
    assert merged.host == "127.0.0.1" and merged.port == 8765 and merged.conf == 0.2
