"""The station's MQTT subscriber: every drone's photos, detections and status into the store, once each.

The client has a fixed id and a persistent session (``clean_session=False``), subscribed at QoS 1:
while the station is down the broker keeps what the drones publish and delivers it at the next
connection. Messages are acknowledged by hand (paho's ``manual_ack_set(True)``), only after the
transaction that recorded them has committed: a ``kill -9`` between the two means the broker
delivers the message again, never that it is lost; the store recognises it (see :mod:`.store`).
The connection comes back by itself after a broker outage, waiting 1, 2, 4 ... 30 s between tries.

A message the station cannot read (not JSON, a field missing or of the wrong type) is logged in one
line, counted (``bad_messages``) and acknowledged: it would be delivered again forever otherwise,
and hold up the queue behind it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable

from ..links.mqtt import DRONE_ID, RefusalLog
from .store import NewSighting, StationStore

log = logging.getLogger("edgetile.station")


class BadMessage(ValueError):
    """A message that is not what a daemon publishes; the text says which field and what was found."""


def _num(m: dict, key: str, optional: bool = True) -> float | None:
    v = m.get(key)
    if v is None:
        if optional:
            return None
        raise BadMessage(f"{key}: expected a number, found none")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise BadMessage(f"{key}: expected a number, found {v!r:.60}")
    return float(v)


def _int(m: dict, key: str) -> int:
    v = m.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise BadMessage(f"{key}: expected an integer >= 0, found {v!r:.60}")
    return v


def _text(m: dict, key: str, optional: bool = False) -> str | None:
    v = m.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v or len(v) > 4096:
        raise BadMessage(f"{key}: expected a text, found {v!r:.60}")
    return v


def _drone(m: dict) -> str:
    drone = _text(m, "drone_id")
    if not DRONE_ID.match(drone or ""):
        raise BadMessage(f"drone_id: expected {DRONE_ID.pattern}, found {drone!r:.60}")
    return str(drone)


def _api(m: dict) -> str | None:
    api = _text(m, "api", optional=True)
    if api is not None and not api.startswith(("http://", "https://")):
        raise BadMessage(f"api: expected an http:// or https:// URL, found {api!r:.60}")
    return api


def parse_detection(m: dict) -> NewSighting:
    """A PREFIX/detections message as a NewSighting; BadMessage naming the first bad field."""
    bbox = m.get("bbox")
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    ):
        raise BadMessage(f"bbox: expected four numbers, found {bbox!r:.80}")
    lat, lon = _num(m, "lat"), _num(m, "lon")
    if (lat is None) != (lon is None) or (lat is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180)):  # type: ignore[operator]
        raise BadMessage(f"lat, lon: expected a position in degrees or neither, found {lat!r}, {lon!r}")
    embedding = m.get("embedding")
    return NewSighting(
        drone_id=_drone(m),
        api=_api(m),
        outcome_id=_int(m, "outcome_id"),
        index=_int(m, "index"),
        image=str(_text(m, "image")),
        sha256=_text(m, "sha256", optional=True),
        score=_num(m, "score"),
        class_name=str(m.get("class_name") or "object")[:64],
        bbox=[float(v) for v in bbox],
        lat=lat,
        lon=lon,
        error_m=_num(m, "error_m"),
        committed_at=_num(m, "committed_at"),
        taken_at=_num(m, "taken_at"),
        embedding=embedding if isinstance(embedding, str) else None,
    )


def parse_photo(m: dict) -> dict:
    """A PREFIX/photos message, checked; BadMessage naming the first bad field."""
    out: dict[str, object] = {
        "drone_id": _drone(m),
        "api": _api(m),
        "outcome_id": _int(m, "outcome_id"),
        "image": _text(m, "image"),
        "sha256": _text(m, "sha256", optional=True),
        "committed_at": _num(m, "committed_at"),
        "taken_at": _num(m, "taken_at"),
        "gsd_cm": _num(m, "gsd_cm"),
        "error_m": _num(m, "error_m"),
    }
    for key in ("width", "height", "detections"):
        out[key] = None if m.get(key) is None else _int(m, key)
    footprint = m.get("footprint")
    if footprint is not None and not (
        isinstance(footprint, list)
        and len(footprint) == 4
        and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)
            for p in footprint
        )
    ):
        raise BadMessage(f"footprint: expected four [lat, lon] pairs or null, found {footprint!r:.80}")
    out["footprint"] = footprint
    position = m.get("position")
    if position is not None:
        if not isinstance(position, dict):
            raise BadMessage(f"position: expected {{lat, lon, alt_m}} or null, found {position!r:.80}")
        position = {
            "lat": _num(position, "lat", False),
            "lon": _num(position, "lon", False),
            "alt_m": _num(position, "alt_m"),
        }
    out["position"] = position
    out["embedder"] = parse_embedder(m.get("embedder"))
    return out


def parse_embedder(e: object) -> dict | None:
    """A photo message's ``embedder`` (the daemon's embedding model, or null without --embed), checked."""
    if e is None:
        return None
    if not isinstance(e, dict):
        raise BadMessage(f"embedder: expected {{sha256, threshold}} or null, found {e!r:.80}")
    name = e.get("sha256")
    if not isinstance(name, str) or not name or len(name) > 128:
        raise BadMessage(f"embedder.sha256: expected the model's name (a text), found {name!r:.60}")
    threshold = e.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0)
    ):
        raise BadMessage(
            f"embedder.threshold: expected a cosine similarity in [-1, 1] or null, found {threshold!r:.60}"
        )
    return {"sha256": name, "threshold": None if threshold is None else float(threshold)}


class MqttIngest:
    """The persistent-session subscriber that records every drone's messages (paho's network thread).

    Args:
        host: The broker.
        port: Its port.
        prefix: The drones' topic prefix (their --mqtt-topic).
        client_id: The fixed client id of the persistent session (one per station).
        db: The station's database file.
        on_sighting: Called with (sighting id, find id) after a new sighting is committed.
        on_change: Called after anything else was committed (a photo, a drone's status).
        assign: The grouper's ``add`` (see :meth:`.grouping.Finds.add`).
        regroup: Rebuilds the grouper from the store, after a transaction that failed.
        on_models: Called with every drone's announced embedding model (``StationStore.embedders``)
            after a photo message that announced one was committed.
        username: The station's broker user name (--mqtt-user), or None.
        password: Its password (the first line of --mqtt-password-file), or None.
    """

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        client_id: str,
        db,
        on_sighting: Callable[[int, int], None],
        on_change: Callable[[], None],
        assign,
        regroup: Callable[[StationStore], object],
        username: str | None = None,
        password: str | None = None,
        on_models: Callable[[dict[str, dict]], object] | None = None,
    ) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise ImportError("the station needs paho-mqtt >= 2.0: pip install 'edgetile[mqtt]'") from exc
        self.host, self.port, self.prefix = host, int(port), prefix
        self.db = db
        self.on_sighting, self.on_change = on_sighting, on_change
        self.assign, self.regroup, self.on_models = assign, regroup, on_models
        self.topics = {f"{prefix}/photos": "photos", f"{prefix}/detections": "detections"}
        self.status_prefix = f"{prefix}/status/"
        self._store: StationStore | None = None  # opened on paho's thread, the only one that uses it
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.received = 0
        self.bad = 0
        self.duplicates = 0
        self._closing = threading.Event()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311
        )
        if username is not None:
            c.username_pw_set(username, password)
        self._refusal = RefusalLog(log, f"client {client_id} (the station)", self.host, self.port)
        self._authenticated = username is not None
        c.manual_ack_set(True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self._client = c

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal.refused(reason_code, self._authenticated)
            return
        self._refusal.accepted()
        self.connected.set()
        session = "the broker kept this station's session" if flags.session_present else "a new session"
        log.info("MQTT broker %s:%d connected (%s)", self.host, self.port, session)
        client.subscribe([(t, 1) for t in self.topics] + [(self.status_prefix + "+", 1)])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        log.info("MQTT: subscribed to %s/photos, /detections, /status/+ (QoS 1)", self.prefix)
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if self._refusal.quiet_disconnect() or self._closing.is_set():
            return
        log.warning(
            "MQTT broker %s:%d lost (%s); reconnecting (the broker keeps the drones' messages meanwhile)",
            self.host,
            self.port,
            reason_code,
        )

    def _on_message(self, client, userdata, msg) -> None:
        """Record, commit, then acknowledge.

        A failure of the store (a full disk, a locked database) is tried again every second until it
        works or the station stops, the message unacknowledged meanwhile: the drones' messages then
        wait at the broker, in order, instead of being skipped.
        """
        if self._store is None:
            self._store = StationStore(self.db, shared=True)
        store = self._store
        while True:
            try:
                self._record(store, msg)
                break
            except BadMessage as exc:
                self.bad += 1
                log.warning("MQTT %s: message ignored: %s", msg.topic, exc)
                store.count_bad_message()
                break
            except Exception:  # noqa: BLE001 - logged whole; the message is not acknowledged
                log.exception("MQTT %s: could not record the message; trying again in 1 s", msg.topic)
                self.regroup(store)
                if self._closing.wait(1.0):
                    return  # not acknowledged: the broker delivers it again at the next start
        client.ack(msg.mid, msg.qos)

    def _record(self, store: StationStore, msg) -> None:
        self.received += 1
        try:
            m = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadMessage(f"expected a JSON object, found {msg.payload[:60]!r} ({exc})") from None
        if not isinstance(m, dict):
            raise BadMessage(f"expected a JSON object, found {type(m).__name__}")
        kind = self.topics.get(msg.topic)
        if kind == "detections":
            s = parse_detection(m)
            got = store.record_sighting(s, lambda key, photo: self.assign(s, key, photo))
            if got is None:
                self.duplicates += 1
                return
            self.on_sighting(*got)
        elif kind == "photos":
            photo = parse_photo(m)
            store.record_photo(photo)
            if photo["embedder"] is not None and self.on_models is not None:
                self.on_models(store.embedders())
            self.on_change()
        elif msg.topic.startswith(self.status_prefix):
            drone = msg.topic[len(self.status_prefix) :]
            if not DRONE_ID.match(drone):
                raise BadMessage(
                    f"status topic: expected {self.status_prefix}DRONE_ID, found {msg.topic!r:.80}"
                )
            state = m.get("state")
            if state not in ("online", "offline"):
                raise BadMessage(f"state: expected 'online' or 'offline', found {state!r:.40}")
            store.record_status(drone, _api(m), state == "online", _num(m, "time") or time.time())
            self.on_change()
        else:
            raise BadMessage(f"expected a topic under {self.prefix}/, found {msg.topic!r:.80}")

    def close(self) -> None:
        self._closing.set()
        self._client.disconnect()
        self._client.loop_stop()
        if self._store is not None:
            self._store.close()
