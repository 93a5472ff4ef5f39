"""Publishing detections to an MQTT broker, for a ground station or a team's map.

Topics, under a prefix (default ``edgetile``):
  PREFIX/detections   one JSON object per detection, QoS 1 (delivered at least once)
  PREFIX/photos       one JSON object per committed photo, before its detections (the daemon's outbox)
  PREFIX/status/ID    retained: {"state": "online"|"offline", "drone_id", "api", ...}; the broker
                      itself publishes "offline" (the last will) when the connection dies without a
                      goodbye. ID is the drone's name, so that several drones share one broker.

The link from a drone or a field laptop comes and goes. The client reconnects on its own, waiting
longer after each failure (reconnect_min_s doubling up to reconnect_max_s), and keeps every message
published meanwhile (up to max_buffer, in order) to send when the broker is back. Messages stay
pending until the broker acknowledges them (PUBACK). A buffer that is full refuses new messages and
counts them as dropped: the caller sees publish() return False, and the status says how many.
This buffer is in memory; the daemon keeps its messages in its queue database instead (see
``edgetile.runtime.serve.outbox``) and hands them over with :meth:`MqttPublisher.send` only while connected.

Needs paho-mqtt >= 2.0 (extra ``mqtt``), imported when a publisher is made.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time

from .._version import __version__

log = logging.getLogger("edgetile.links.mqtt")
DRONE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


def default_drone_id() -> str:
    """The host name cut to a valid drone id (letters, digits, '_', '.', '-'; 32 at most), else 'drone'."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0])[:32].lstrip("_.-")
    return name if DRONE_ID.match(name) else "drone"


def parse_host_port(text: str, default_port: int = 1883) -> tuple[str, int]:
    """'HOST[:PORT]' -> (host, port); ValueError naming the expected form otherwise."""
    host, sep, port_s = text.rpartition(":")
    if not sep:
        host, port_s = text, str(default_port)
    if not host or host.startswith("[") != host.endswith("]"):
        raise ValueError(f"--mqtt: expected HOST or HOST:PORT, found {text!r}")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"--mqtt: expected HOST:PORT with a numeric port, found {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"--mqtt: expected a port in 1..65535, found {port}")
    return host.strip("[]"), port


def read_password_file(path: str, option: str = "--mqtt-password-file") -> str:
    """The broker password on the first line of a file (kept as written, but for the line break).

    Raises:
        ValueError: The file cannot be read or its first line is empty, in one line naming the file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{option}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not first:
        raise ValueError(f"{option}: expected the broker password on the first line of {path}, found none")
    return first


class RefusalLog:
    """Says a broker's refusal of the connection once, not at every reconnection attempt.

    A broker that refuses the credentials refuses them again at each try (paho keeps trying, with
    backoff, so that a broker whose password file is fixed is joined without a restart). The refusal
    is logged when it first happens and when its reason changes; the disconnection that follows each
    refusal is not logged again; a later acceptance is.

    Args:
        logger: Where to say it.
        who: Whose connection, e.g. "client edgetile-station (the station)".
        host: The broker.
        port: Its port.
    """

    def __init__(self, logger: logging.Logger, who: str, host: str, port: int) -> None:
        self.log, self.who, self.host, self.port = logger, who, host, int(port)
        self.reason: str | None = None  # the refusal said last; None while accepted
        self._just_refused = False

    def refused(self, reason_code: object, authenticated: bool) -> None:
        """From on_connect with a failing reason code."""
        self._just_refused = True
        reason = str(reason_code)
        if reason == self.reason:
            return
        self.reason = reason
        hint = (
            "check --mqtt-user and --mqtt-password-file against the broker's password file"
            if authenticated
            else "the broker may ask for --mqtt-user and --mqtt-password-file"
        )
        self.log.warning(
            "MQTT broker %s:%d refused %s: %s (%s); trying again with backoff (repeats not logged)",
            self.host,
            self.port,
            self.who,
            reason,
            hint,
        )

    def accepted(self) -> None:
        """From on_connect with success."""
        if self.reason is not None:
            self.log.warning("MQTT broker %s:%d accepts %s now", self.host, self.port, self.who)
        self.reason = None
        self._just_refused = False

    def quiet_disconnect(self) -> bool:
        """From on_disconnect: True when it only follows a refusal already said (log nothing)."""
        was, self._just_refused = self._just_refused, False
        return was


class MqttPublisher:
    """A background MQTT client that publishes detections as JSON.

    Args:
        host: Broker host name or address.
        port: Broker port (1883 for plain MQTT).
        topic_prefix: Topics are PREFIX/detections and PREFIX/status.
        client_id: MQTT client id (default: edgetile-HOST-PID).
        keepalive_s: Seconds between keep-alive pings; a dead link is noticed within 1.5x this.
        reconnect_min_s: First wait before reconnecting; it doubles after each failure.
        reconnect_max_s: Longest wait between reconnection attempts.
        max_buffer: Most messages held (waiting for the broker or its acknowledgement).
        username: Broker user name, when the broker asks for one (--mqtt-user).
        password: Broker password (the first line of --mqtt-password-file); needs a username.
        drone_id: The name of this drone in every message and in its status topic (default: the
            host name).
        api: Where a ground station reaches this drone's HTTP API (e.g. http://10.0.0.7:8765), or
            None until :meth:`advertise` says it.
        status_topic: The retained status topic (default: PREFIX/status/DRONE_ID).
    """

    def __init__(
        self,
        host: str,
        port: int = 1883,
        topic_prefix: str = "edgetile",
        client_id: str | None = None,
        keepalive_s: int = 30,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        max_buffer: int = 10000,
        username: str | None = None,
        password: str | None = None,
        drone_id: str | None = None,
        api: str | None = None,
        status_topic: str | None = None,
    ) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise ImportError("MQTT publishing needs paho-mqtt >= 2.0: pip install 'edgetile[mqtt]'") from exc
        if not topic_prefix or any(c in topic_prefix for c in "#+") or topic_prefix.endswith("/"):
            raise ValueError(
                f"topic_prefix: expected a topic without wildcards or trailing '/', found {topic_prefix!r}"
            )
        if max_buffer < 1:
            raise ValueError(f"max_buffer: expected at least 1 message, found {max_buffer}")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s, reconnect_max_s: expected 0 < min <= max, found "
                f"{reconnect_min_s}, {reconnect_max_s}"
            )
        self.host, self.port = host, int(port)
        self.max_buffer = int(max_buffer)
        self.topic_prefix = topic_prefix
        self.detections_topic = f"{topic_prefix}/detections"
        self.drone_id = drone_id or default_drone_id()
        if not DRONE_ID.match(self.drone_id):
            raise ValueError(f"drone_id: expected {DRONE_ID.pattern}, found {self.drone_id!r}")
        self.api = api
        self.status_topic = status_topic or f"{topic_prefix}/status/{self.drone_id}"
        self.client_id = client_id or f"edgetile-{socket.gethostname()}-{os.getpid()}"
        if password is not None and username is None:
            raise ValueError(
                "password: expected a username as well (MQTT sends no password alone), found none"
            )
        self._refusal = RefusalLog(log, f"client {self.client_id}", self.host, self.port)
        self._authenticated = username is not None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._pending: set[int] = set()
        self._acked_early: set[int] = set()
        self.published = 0  # acknowledged by the broker
        self.dropped = 0  # refused because the buffer was full
        self.connects = 0
        self._closed = False

        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            c.username_pw_set(username, password)
        c.max_queued_messages_set(max_buffer)
        c.max_inflight_messages_set(100)
        # paho annotates the delays as int, but only stores, doubles and sleeps them: fractions work
        c.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)  # type: ignore[arg-type]
        c.will_set(self.status_topic, self._status("offline", reason="connection lost"), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self._client = c
        c.connect_async(self.host, self.port, keepalive=keepalive_s)
        c.loop_start()  # a background thread that connects, reconnects with backoff, and sends

    def advertise(self, api: str) -> None:
        """Say where this drone's HTTP API is (known once its port is bound); the status is sent again."""
        self.api = api
        if self.connected and not self._closed:
            self._client.publish(self.status_topic, self._status("online"), qos=1, retain=True)

    def _status(self, state: str, **extra: object) -> str:
        return json.dumps(
            {
                "state": state,
                "drone_id": self.drone_id,
                "api": self.api,
                "client_id": self.client_id,
                "version": __version__,
                "time": round(time.time(), 3),
                **extra,
            }
        )

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal.refused(reason_code, self._authenticated)
            return
        self._refusal.accepted()
        self.connects += 1
        client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        self._connected.set()  # after the status, so that it goes out before anything published next

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if not self._refusal.quiet_disconnect() and not self._closed:
            log.warning(
                "MQTT broker %s:%d lost (%s); reconnecting, keeping messages meanwhile",
                self.host,
                self.port,
                reason_code,
            )

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # Runs on paho's thread, possibly before publish() below has recorded the mid.
        with self._lock:
            if mid in self._pending:
                self._pending.discard(mid)
                self.published += 1
            else:
                self._acked_early.add(mid)

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up now."""
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker (buffered while offline, or in flight)."""
        with self._lock:
            return len(self._pending)

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected; False after timeout_s."""
        return self._connected.wait(timeout_s)

    def publish(self, topic: str, payload: dict, retain: bool = False) -> bool:
        """Publish one JSON object with QoS 1, now or when the broker is back.

        Returns:
            True when the message was sent or buffered; False when the buffer is full (counted in
            `dropped`, and logged).
        """
        info = self.send(topic, payload, retain)
        if info is None:
            with self._lock:
                self.dropped += 1
            log.warning(
                "MQTT buffer full (%d messages waiting for %s:%d): message to %s dropped",
                self.pending,
                self.host,
                self.port,
                topic,
            )
            return False
        return True

    def send(self, topic: str, payload: dict, retain: bool = False):
        """Publish one JSON object with QoS 1 and return paho's MQTTMessageInfo to follow it.

        ``info.is_published()`` turns True when the broker has acknowledged the message (PUBACK),
        also after a reconnection resent it.

        Returns:
            The message info, or None when the buffer is full (nothing is counted as dropped: the
            caller still holds the message).
        """
        import paho.mqtt.client as mqtt

        if self._closed:
            raise RuntimeError("publish: this MqttPublisher is closed")
        info = self._client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            return None
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"MQTT publish to {topic} failed: {mqtt.error_string(info.rc)}")
        with self._lock:  # NO_CONN: paho keeps QoS 1 messages and sends them after reconnecting
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
                self.published += 1
            else:
                self._pending.add(info.mid)
        return info

    def publish_detection(self, detection: dict, **context: object) -> bool:
        """Publish one detection record (bbox, score, class_name, lat, lon, error_m, ...) plus context
        such as image or time, to PREFIX/detections."""
        return self.publish(self.detections_topic, {**context, **detection})

    def wait_for_publish(self, timeout_s: float) -> bool:
        """Wait until every message has been acknowledged; False after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while self.pending:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Say goodbye: flush what can be sent within timeout_s, mark the status offline, disconnect.

        Messages still unacknowledged at the deadline are logged as lost. Safe to call twice.
        """
        if self._closed:
            return
        if self.connected:
            self.wait_for_publish(timeout_s)
            info = self._client.publish(
                self.status_topic, self._status("offline", reason="closed"), qos=1, retain=True
            )
            self._closed = True
            try:
                info.wait_for_publish(timeout_s)
            except (
                RuntimeError,
                ValueError,
            ) as exc:  # the link dropped meanwhile: the last will says offline
                log.warning(
                    "MQTT: the offline status was not delivered to %s:%d (%s)", self.host, self.port, exc
                )
        self._closed = True
        if self.pending:
            log.warning(
                "MQTT: %d message(s) were never acknowledged by %s:%d", self.pending, self.host, self.port
            )
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
