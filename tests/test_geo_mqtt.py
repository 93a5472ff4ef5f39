"""MQTT publishing against a real Mosquitto broker that the tests start (and stop, and restart)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from mqtt_broker import Broker, Subscriber, free_port, needs_mosquitto, retained

from edgetile.runtime.links.mqtt import MqttPublisher, parse_host_port

DET = {
    "bbox": [10.0, 20.0, 30.0, 60.0],
    "score": 0.87,
    "class_name": "person",
    "lat": 55.75,
    "lon": 37.62,
    "error_m": 3.2,
}


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def wait_until(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.slow
def test_detections_arrive_as_json_with_qos1_and_status_is_retained(broker):
    sub = Subscriber(broker.port)
    try:
        with MqttPublisher(
            "127.0.0.1", broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0, drone_id="uav-1"
        ) as pub:
            assert pub.wait_connected(10)
            online = retained(broker.port, "edgetile/status/uav-1", "online")
            assert (online["drone_id"], online["api"]) == ("uav-1", None)
            pub.advertise("http://10.0.0.7:8765")  # known once the daemon's port is bound: said again
            assert wait_until(
                lambda: (
                    retained(broker.port, "edgetile/status/uav-1", "online")["api"] == "http://10.0.0.7:8765"
                )
            )
            for k in range(3):
                assert pub.publish_detection({**DET, "score": 0.5 + k / 10}, image=f"DJI_{k}.JPG")
            got = sub.collect(3, "edgetile/detections")
            assert pub.wait_for_publish(10) and pub.published >= 3 and pub.pending == 0
        assert [p["image"] for p, _ in got] == ["DJI_0.JPG", "DJI_1.JPG", "DJI_2.JPG"]
        assert all(m.qos == 1 for _, m in got)
        assert got[1][0] == {**DET, "score": 0.6, "image": "DJI_1.JPG"}
        assert retained(broker.port, "edgetile/status/uav-1", "offline")["reason"] == "closed"
    finally:
        sub.close()


@pytest.mark.slow
def test_buffers_while_the_broker_is_down_and_delivers_after_reconnecting(broker):
    sub = Subscriber(broker.port)  # a persistent session: the broker keeps its messages while it is away
    pub = MqttPublisher("127.0.0.1", broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0)
    try:
        assert pub.wait_connected(10)
        pub.publish_detection(DET, image="before.jpg")
        assert sub.collect(1, "edgetile/detections")[0][0]["image"] == "before.jpg"

        broker.stop()
        assert wait_until(lambda: not pub.connected)
        for k in range(5):
            assert pub.publish_detection(DET, image=f"offline_{k}.jpg")
        assert pub.pending == 5  # held, in order, until the broker is back
        time.sleep(1.5)  # several reconnection attempts fail meanwhile
        assert pub.pending == 5 and not pub.connected

        broker.start()
        assert pub.wait_connected(20)
        assert pub.wait_for_publish(20) and pub.pending == 0
        # QoS 1 is at-least-once: a message whose acknowledgement the broker's stop cut off comes again.
        got: list[str] = []
        while len(set(got) - {"before.jpg"}) < 5:
            got += [p["image"] for p, _ in sub.collect(1, "edgetile/detections", timeout=30)]
        first_seen = list(dict.fromkeys(g for g in got if g != "before.jpg"))
        assert first_seen == [f"offline_{k}.jpg" for k in range(5)]  # every one, in order
        assert pub.connects == 2 and pub.dropped == 0
    finally:
        pub.close()
        sub.close()


@pytest.mark.slow
def test_publisher_started_before_the_broker_sends_once_it_appears(tmp_path):
    needs_mosquitto()
    b = Broker(tmp_path / "b")
    pub = MqttPublisher("127.0.0.1", b.port, reconnect_min_s=0.2, reconnect_max_s=0.5, max_buffer=3)
    try:
        accepted = [pub.publish_detection(DET, image=f"{k}.jpg") for k in range(5)]
        assert accepted == [True, True, True, False, False]  # a full buffer refuses, and says so
        assert (pub.pending, pub.dropped) == (3, 2)
        b.start()
        assert pub.wait_connected(20) and pub.wait_for_publish(20)
        assert pub.published == 3
    finally:
        pub.close()
        b.stop()


PUBLISHER_THAT_DIES = """
import sys, time
from edgetile.runtime.links.mqtt import MqttPublisher
pub = MqttPublisher("127.0.0.1", int(sys.argv[1]), topic_prefix="drone7", keepalive_s=5, drone_id="d7")
assert pub.wait_connected(10)
print("connected", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_last_will_marks_the_status_offline_when_the_process_dies(broker):
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER_THAT_DIES, str(broker.port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "connected"
        assert retained(broker.port, "drone7/status/d7", "online")
        proc.kill()  # no goodbye: the broker publishes the will
        proc.wait(10)
        assert retained(broker.port, "drone7/status/d7", "offline")["reason"] == "connection lost"
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("localhost", ("localhost", 1883)),
        ("10.0.0.5:8883", ("10.0.0.5", 8883)),
        ("[::1]:1884", ("::1", 1884)),
    ],
)
def test_host_port(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text,words",
    [(":1883", "expected HOST or HOST:PORT"), ("h:x", "numeric port"), ("h:70000", "port in 1..65535")],
)
def test_bad_host_port(text, words):
    with pytest.raises(ValueError, match=words):
        parse_host_port(text)


def test_bad_publisher_arguments():
    port = free_port()
    with pytest.raises(ValueError, match="topic_prefix: expected a topic without wildcards"):
        MqttPublisher("127.0.0.1", port, topic_prefix="a/#")
    with pytest.raises(ValueError, match="max_buffer: expected at least 1"):
        MqttPublisher("127.0.0.1", port, max_buffer=0)
    with pytest.raises(ValueError, match="drone_id: expected"):
        MqttPublisher("127.0.0.1", port, drone_id="a/b")
