"""The MQTT outbox: results committed while the broker is away reach it later, across restarts, in order.

The queue's rules on a real SQLite database; the behaviour with real daemon processes and the real
Mosquitto broker (stopped, restarted) that the other MQTT tests use.
"""

from __future__ import annotations

import json
import queue
import time

import pytest
from mqtt_broker import Broker, Subscriber, free_port, retained
from prometheus_client.parser import text_string_to_metric_families
from serve_process import ServeProcess, person_photo, write_jpeg

from edgetile.runtime.serve.store import Outcome, PhotoQueue
from onnx_models import red_blob_model

DETECT_OPTIONS = ["--tile", "256"]
FAST = ["--settle", "0", "--poll", "0.1", "--retry-after", "0", "--max-attempts", "2"]


def sha(n: int) -> str:
    return f"{n:064x}"


def det(x: float) -> dict:
    return {"bbox": [x, 0.0, x + 10, 20.0], "score": 0.9, "class_id": 0, "class_name": "person"}


def commit(q: PhotoQueue, n: int, detections: list[dict] | None, limit: int | None) -> None:
    """Record input n, claim it and commit its outcome (None: a failure that parks it)."""
    q.add(sha(n), "watch", f"p{n}.jpg", f"/d/p{n}.jpg")
    [item] = q.claim(1)
    q.finish(
        [Outcome(item, 10, 10, detections, {}) if detections is not None else Outcome(item, error="bad")],
        outbox_limit=limit,
    )


def photo_message(n: int, outcome_id: int, detections: int) -> dict:
    """The PREFIX/photos message of input n without its commit time (a photo without a pose)."""
    return {
        "outcome_id": outcome_id,
        "image": f"p{n}.jpg",
        "sha256": sha(n),
        "width": 10,
        "height": 10,
        "taken_at": None,
        "detections": detections,
        "footprint": None,
        "gsd_cm": None,
        "position": None,
        "error_m": None,
    }


def detection_message(n: int, outcome_id: int, index: int, d: dict) -> dict:
    return {
        "image": f"p{n}.jpg",
        "sha256": sha(n),
        **d,
        "id": f"{outcome_id}-{index}",
        "outcome_id": outcome_id,
        "index": index,
        "taken_at": None,
    }


def without_commit_time(messages: list[tuple[int, dict]]) -> list[dict]:
    for _, m in messages:
        assert isinstance(m["committed_at"], float) and abs(m["committed_at"] - time.time()) < 60
    return [{k: v for k, v in m.items() if k != "committed_at"} for _, m in messages]


def test_each_committed_photo_and_its_detections_wait_in_the_outbox_in_commit_order(tmp_path):
    with PhotoQueue(tmp_path / "q.sqlite3", max_attempts=1) as q:
        commit(q, 1, [det(1), det(2)], limit=100)
        commit(q, 2, [], limit=100)  # no detection: the photo alone (a station maps what was searched)
        commit(q, 3, None, limit=100)  # parked: no result
        commit(q, 4, [det(4)], limit=None)  # committed without MQTT: never published later
        commit(q, 5, [det(5)], limit=100)
        waiting = q.outbox_after(0, 10)
        assert without_commit_time(waiting) == [
            photo_message(1, 1, 2),  # the photo first, with how many detections follow
            detection_message(1, 1, 0, det(1)),
            detection_message(1, 1, 1, det(2)),
            photo_message(2, 2, 0),
            photo_message(5, 5, 1),  # outcomes 3 and 4: the parked input and the one without MQTT
            detection_message(5, 5, 0, det(5)),
        ]
        assert [t for _, t, _ in q.outbox_messages_after(0, 10)] == [
            "photos",
            "detections",
            "detections",
            "photos",
            "photos",
            "detections",
        ]
        ids = [i for i, _ in waiting]
        assert ids == sorted(ids)
        assert [i for i, _ in q.outbox_after(ids[0], 10)] == ids[1:]  # paging after the last one handed over
        q.outbox_done([ids[1]])  # acknowledged out of order: only that one is forgotten
        assert [i for i, _ in q.outbox_after(0, 10)] == [ids[0]] + ids[2:]
        q.outbox_done([ids[1], 999])  # again, or an id dropped meanwhile: nothing happens
        assert q.outbox_counts() == {"waiting": 5, "dropped": 0}


def test_past_its_limit_the_outbox_drops_the_oldest_and_counts_them_across_restarts(tmp_path):
    db = tmp_path / "q.sqlite3"

    def waiting(q):
        return [
            (t, m["bbox"][0] if t == "detections" else m["image"])
            for _, t, m in q.outbox_messages_after(0, 10)
        ]

    with PhotoQueue(db) as q:
        commit(q, 1, [det(1), det(2)], limit=3)  # the photo and its two
        commit(q, 2, [det(3), det(4)], limit=3)  # 6 > 3: the first photo's three go
        assert waiting(q) == [("photos", "p2.jpg"), ("detections", 3), ("detections", 4)]
        assert q.outbox_counts() == {"waiting": 3, "dropped": 3}
    with PhotoQueue(db) as q:  # the count is in the database, not in the process
        commit(q, 3, [det(5), det(6), det(7)], limit=3)
        assert waiting(q) == [("detections", 5), ("detections", 6), ("detections", 7)]
        assert q.outbox_counts() == {"waiting": 3, "dropped": 7}
    with PhotoQueue(db) as q, pytest.raises(ValueError, match="outbox_limit: expected at least 1 message"):
        q.finish([], outbox_limit=0)


# ---- the daemon and a real broker ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return red_blob_model(tmp_path_factory.mktemp("models") / "red.onnx")


def metric_values(d: ServeProcess) -> dict[str, float]:
    status, _, body = d.request("/metrics")
    assert status == 200
    return {f.name: f.samples[0].value for f in text_string_to_metric_families(body.decode()) if f.samples}


def messages(result: dict) -> list[tuple[str, str, str, list | None]]:
    """What subscribers should hear of one result: the photo, then one message per detection."""
    return [("drone9/photos", result["image"], result["sha256"], None)] + [
        ("drone9/detections", result["image"], result["sha256"], d["bbox"]) for d in result["detections"]
    ]


def wait_subscribed(sub: Subscriber, topic: str, timeout: float = 20.0) -> None:
    """Until the subscriber hears its own message: it subscribes when its connection is up, a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        sub.client.publish(topic, json.dumps({"ping": 1}), qos=1)
        try:
            sub.collect(1, topic, timeout=1.0)
            return
        except queue.Empty:
            if time.monotonic() > deadline:
                raise AssertionError(f"the subscriber did not hear {topic} within {timeout} s") from None


@pytest.mark.slow
def test_results_committed_while_the_broker_is_down_arrive_after_a_restart_in_order(tmp_path, model):
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, "drone9/#", client_id="ground-station")  # a persistent session
    try:
        wait_subscribed(sub, "drone9/ping")  # from now the broker keeps this session's messages
        broker.stop()  # the link to the ground goes down, before the daemon ever connects

        drop, state = tmp_path / "drop", tmp_path / "state"
        drop.mkdir()
        for i in range(3):
            write_jpeg(drop / f"a{i}.jpg", person_photo(1100 + i))
        args = [
            "--model",
            model,
            *DETECT_OPTIONS,
            "--watch",
            drop,
            "--state",
            state,
            *FAST,
            "--mqtt",
            f"127.0.0.1:{broker.port}",
            "--mqtt-topic",
            "drone9",
            "--drone-id",
            "uav-9",
        ]
        with ServeProcess(tmp_path, *args).start() as d:
            first = d.wait_for(lambda: len(r := d.all_pages("/detections")) == 3 and r, what="3 results")
            expected = [m for r in first for m in messages(r)]
            assert expected  # the red people are found
            d.wait_for(
                lambda: metric_values(d)["edgetile_mqtt_outbox_messages"] == len(expected),
                what="every message waiting in the outbox",
            )
            assert metric_values(d)["edgetile_mqtt_connected"] == 0
            assert d.terminate() == 0  # nothing was sent: everything waits in the queue database

        for i in range(2):  # more photos while the daemon is down
            write_jpeg(drop / f"b{i}.jpg", person_photo(1200 + i))
        with ServeProcess(tmp_path, *args).start() as d:
            results = d.wait_for(lambda: len(r := d.all_pages("/detections")) == 5 and r, what="5 results")
            expected = [m for r in results for m in messages(r)]  # in commit order
            before = sum(len(messages(r)) for r in results[:3])  # the first run's results
            assert f"MQTT outbox: {before} message(s) from before wait" in d.log()
            d.wait_for(
                lambda: metric_values(d)["edgetile_mqtt_outbox_messages"] == len(expected),
                what="the new messages waiting too",
            )

            broker.start()  # the link comes back
            heard: list[tuple[str, str, str, list | None]] = []
            while len(set(map(repr, heard))) < len(expected):
                m = sub.get(timeout=90)
                if m.topic not in ("drone9/photos", "drone9/detections"):
                    continue
                payload = json.loads(m.payload)
                assert payload["drone_id"] == "uav-9" and payload["api"] == d.url
                if m.topic == "drone9/photos":
                    result = next(r for r in results if r["id"] == payload["outcome_id"])
                    assert payload["detections"] == len(result["detections"])
                else:
                    assert payload["id"] == f"{payload['outcome_id']}-{payload['index']}"
                heard.append((m.topic, payload["image"], payload["sha256"], payload.get("bbox")))
            first_seen = list(dict.fromkeys(map(repr, heard)))
            assert first_seen == [repr(m) for m in expected]  # every one, at least once, in commit order
            d.wait_for(
                lambda: metric_values(d)["edgetile_mqtt_outbox_messages"] == 0,
                what="the outbox emptied by the acknowledgements",
            )
            m = metric_values(d)
            assert m["edgetile_mqtt_published"] == len(expected) and m["edgetile_mqtt_dropped"] == 0
            assert m["edgetile_mqtt_connected"] == 1
            assert d.terminate() == 0
        status = retained(broker.port, "drone9/status/uav-9", "offline")
        assert status["reason"] == "closed" and status["drone_id"] == "uav-9"
    finally:
        sub.close()
        broker.stop()


@pytest.mark.slow
def test_a_full_outbox_drops_the_oldest_messages_and_says_so(tmp_path, model):
    port = free_port()  # no broker ever listens here
    drop = tmp_path / "drop"
    drop.mkdir()
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
        "--mqtt",
        f"127.0.0.1:{port}",
        "--mqtt-buffer",
        "2",
    ).start() as d:
        for i in range(4):
            write_jpeg(drop / f"p{i}.jpg", person_photo(1300 + i))
        results = d.wait_for(lambda: len(r := d.all_pages("/detections")) == 4 and r, what="4 results")
        total = sum(1 + len(r["detections"]) for r in results)  # each photo, then its detections
        assert total > 2
        d.wait_for(
            lambda: (
                (m := metric_values(d))["edgetile_mqtt_outbox_messages"] == 2
                and m["edgetile_mqtt_dropped"] == total - 2
            ),
            what="the outbox held at its limit",
        )
        d.wait_for(lambda: "MQTT outbox full (--mqtt-buffer 2)" in d.log(), what="the warning", timeout=30)
        assert d.terminate() == 0
    with ServeProcess(
        tmp_path,
        "--model",
        model,
        *DETECT_OPTIONS,
        "--state",
        tmp_path / "state",
        *FAST,
        "--mqtt",
        f"127.0.0.1:{port}",
        "--mqtt-buffer",
        "2",
    ).start() as d:
        m = metric_values(d)  # a restart keeps what waits and what was dropped
        assert (m["edgetile_mqtt_outbox_messages"], m["edgetile_mqtt_dropped"]) == (2, total - 2)
        assert d.terminate() == 0
