"""The daemon's MQTT outbox: results reach the broker at least once, across broker outages and restarts.

The worker commits an ``mqtt_outbox`` row per detection in the same transaction as the result (see
:mod:`.store`), topic PREFIX/detections; an operator's confirmed or flagged decision commits one in
the decision's transaction, topic PREFIX/reviews (see :mod:`.review_store`). This thread hands the rows to the MQTT client in commit order, only while the broker
is connected and at most ``window`` at a time, and deletes a row only once the broker has
acknowledged its message (QoS 1 PUBACK). So:

* a broker that is away for hours costs no memory: the messages wait in the database (up to
  ``--mqtt-buffer``; past it the oldest are dropped and counted);
* a restart (SIGTERM, crash, power cut) loses nothing: rows not acknowledged are sent again, in
  order, after the next connection. A message whose acknowledgement was cut off by the outage is
  sent twice (QoS 1 is at least once); subscribers that must not count twice use ``sha256`` and
  the detection's ``bbox`` as the key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .store import PHOTOS_TOPIC, PhotoQueue

log = logging.getLogger("edgetile.serve")

WINDOW = 100  # messages handed to the MQTT client and not yet acknowledged
FLUSH_S = 3.0  # at a stop: how long acknowledgements of messages in flight are waited for
DROP_CHECK_S = 5.0


class MqttOutbox:
    """Sends the outbox's messages through an MqttPublisher and forgets each once it is acknowledged.

    The store it reads is the daemon's queue database, or any store with the same four outbox methods
    (``outbox_counts``, ``outbox_messages_after``, ``outbox_done``, and ``close`` through ``with``):
    ``edgetile station`` sends its review messages through its own.

    Args:
        publisher: A connected-or-connecting links.mqtt.MqttPublisher (the hooks' ``publisher``).
        window: Most messages in flight (handed to the client, not yet acknowledged).
        stamp: Add the publisher's ``drone_id`` and ``api`` to every message, and ``embedder`` to every
            PREFIX/photos message (the daemon's; a ground station speaks for no drone).
        embedder: The daemon's embedding model as :func:`edgetile.runtime.embedder.announcement` says
            it, or None (no --embed): a station compares appearance only between embeddings of one model.
    """

    def __init__(
        self, publisher, window: int = WINDOW, stamp: bool = True, embedder: dict | None = None
    ) -> None:
        if int(window) < 1:
            raise ValueError(f"window: expected at least 1 message, found {window!r}")
        self.publisher = publisher
        self.stamp = stamp
        self.embedder = embedder
        self.limit = int(publisher.max_buffer)
        self.window = min(int(window), self.limit)  # the client refuses more than max_buffer queued
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._published = 0
        self._in_flight: deque = deque()  # (row id, MQTTMessageInfo), in commit order; the sender thread's
        self._last = 0  # the last row handed over in this run
        self._dropped_seen = 0

    @property
    def published(self) -> int:
        """Messages acknowledged by the broker, this run."""
        with self._lock:
            return self._published

    def run(self, store: Path | Callable[[], Any], stop: threading.Event) -> None:
        """Send until ``stop``; then wait up to FLUSH_S for what is in flight (the rest waits in the outbox).

        Args:
            store: The daemon's queue database file, or a function that opens this thread's
                connection to another store with the outbox methods.
            stop: Set to stop.
        """
        pub = self.publisher
        deadline = None
        opened = PhotoQueue(store) if isinstance(store, (str, Path)) else store()
        with opened as q:
            counts = q.outbox_counts()
            self._dropped_seen, next_drop_check = counts["dropped"], time.monotonic() + DROP_CHECK_S
            if counts["waiting"]:
                log.info(
                    "MQTT outbox: %d message(s) from before wait for %s:%d",
                    counts["waiting"],
                    pub.host,
                    pub.port,
                )
            while True:
                if stop.is_set() and deadline is None:
                    deadline = time.monotonic() + FLUSH_S
                connected = pub.connected
                try:
                    self._step(q, connected)
                    if time.monotonic() >= next_drop_check:
                        self._check_dropped(q)
                        next_drop_check = time.monotonic() + DROP_CHECK_S
                except Exception:  # noqa: BLE001 - e.g. a busy database: logged whole; the rows wait, tried again
                    log.exception("MQTT outbox: sending failed; trying again in 1 s")
                    if deadline is None:
                        stop.wait(1.0)
                if deadline is not None and (
                    not self._in_flight or not connected or time.monotonic() >= deadline
                ):
                    break
                self.wake.wait(0.05 if (self._in_flight and connected) or deadline is not None else 0.5)
                self.wake.clear()
        if self._in_flight:
            log.info(
                "MQTT outbox: %d message(s) in flight were not acknowledged before the stop; they are sent "
                "again at the next start",
                len(self._in_flight),
            )

    def _step(self, q: Any, connected: bool) -> None:
        """Hand over what fits in the window (only while connected), forget what was acknowledged."""
        pub = self.publisher
        if connected and len(self._in_flight) < self.window:
            for row_id, topic, message in q.outbox_messages_after(
                self._last, self.window - len(self._in_flight)
            ):
                if self.stamp:
                    message = {**message, "drone_id": pub.drone_id, "api": pub.api}
                    if topic == PHOTOS_TOPIC:
                        message["embedder"] = self.embedder
                info = pub.send(f"{pub.topic_prefix}/{topic}", message)
                if info is None:  # the client's own buffer is full: the row waits
                    break
                self._in_flight.append((row_id, info))
                self._last = row_id
        acked = [row_id for row_id, info in self._in_flight if info.is_published()]
        if acked:
            q.outbox_done(acked)
            done = set(acked)
            self._in_flight = deque(x for x in self._in_flight if x[0] not in done)
            with self._lock:
                self._published += len(acked)

    def _check_dropped(self, q: Any) -> None:
        dropped = q.outbox_counts()["dropped"]
        if dropped > self._dropped_seen:
            log.warning(
                "MQTT outbox full (--mqtt-buffer %d) while %s:%d is away: the oldest %d message(s) were "
                "dropped",
                self.limit,
                self.publisher.host,
                self.publisher.port,
                dropped - self._dropped_seen,
            )
        self._dropped_seen = dropped
