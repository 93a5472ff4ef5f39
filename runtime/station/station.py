"""The ground station: MQTT ingest, crop fetcher, review outbox and HTTP server around one store.

Threads: paho's network thread (the ingest: record, commit, acknowledge), the crop fetcher, the
review outbox (the daemon's :class:`..serve.outbox.MqttOutbox` over the station's store), uvicorn.
The main thread waits for SIGTERM or SIGINT, then stops them in order and exits 0. A ``kill -9``
at any moment loses nothing: an unacknowledged message comes again from the broker, a pending crop
fetch resumes, a decision answered 200 was committed.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..options import EXIT_OK, EXIT_WORKER_FAILED
from ..serve.daemon import ChangeSignal, bind_socket, sd_notify
from ..serve.geo_hooks import review_text
from .config import StationConfig
from .fetch import CropFetcher, DaemonClient, DroneNetworks
from .grouping import Finds
from .store import StationStore

if TYPE_CHECKING:
    from ..serve.outbox import MqttOutbox
    from .ingest import MqttIngest

log = logging.getLogger("edgetile.station")


class Station:
    """One running station.

    Args:
        config: The checked configuration.
    """

    def __init__(self, config: StationConfig) -> None:
        self.config = config
        self.stop = threading.Event()
        self.changes = ChangeSignal()
        self.finds = Finds(config.find_window_s, config.appearance_min)
        self.client = DaemonClient(config.daemon_token, DroneNetworks(config.drone_networks))
        self.fetcher = CropFetcher(
            config.state, self.client, on_crop=self.changes.bump, max_age_s=config.crop_max_age_s
        )
        self.ingest: MqttIngest | None = None
        self.outbox: MqttOutbox | None = None
        self.mavlink: Any = None
        self.version = __version__

    def store(self) -> StationStore:
        """A new connection to the station's database, for the calling thread."""
        return StationStore(self.config.db_path)

    @property
    def outbox_limit(self) -> int | None:
        return None if self.outbox is None else self.outbox.limit

    def announce(self, find: dict) -> None:
        """After a first confirmed/flagged decision on a find was committed: wake the outbox, tell MAVLink."""
        if self.outbox is not None:
            self.outbox.wake.set()
        if self.mavlink is not None:
            try:
                self.mavlink.send_text(review_text(find))
            except Exception:  # noqa: BLE001 - the decision is committed; the link failing is logged whole
                log.exception("the decision on %s is kept, but the MAVLink STATUSTEXT failed", find["id"])

    def status(self, store: StationStore) -> dict:
        """What /api/station/status answers."""
        ing = self.ingest
        row = store.conn.execute(
            "SELECT (SELECT COUNT(*) FROM drones), (SELECT COUNT(*) FROM photos), (SELECT COUNT(*) FROM sightings), "
            "(SELECT COUNT(DISTINCT find_id) FROM sightings)"
        ).fetchone()
        return {
            "version": self.version,
            "mqtt": {
                "connected": bool(ing is not None and ing.connected.is_set()),
                "subscribed": bool(ing is not None and ing.subscribed.is_set()),
                "bad_messages": store.counter("bad_messages"),
                "received_this_run": 0 if ing is None else ing.received,
                "duplicates_this_run": 0 if ing is None else ing.duplicates,
            },
            "crops": store.crop_counts(),
            "outbox": store.outbox_counts(),
            "drones": int(row[0]),
            "photos": int(row[1]),
            "sightings": int(row[2]),
            "finds": int(row[3]),
            "grouping": self.finds.rule.as_dict(),
        }

    def _on_sighting(self, sighting_id: int, find_id: int) -> None:
        self.changes.bump()
        self.fetcher.wake.set()

    def _open_links(self) -> tuple[MqttIngest, MqttOutbox]:
        from ..links.mqtt import MqttPublisher
        from ..serve.outbox import MqttOutbox
        from .ingest import MqttIngest

        cfg = self.config
        self.ingest = MqttIngest(
            cfg.mqtt_host,
            cfg.mqtt_port,
            cfg.mqtt_prefix,
            cfg.client_id,
            cfg.db_path,
            on_sighting=self._on_sighting,
            on_change=self.changes.bump,
            assign=self.finds.add,
            regroup=self.finds.restore,
            on_models=self.finds.models,
            username=cfg.mqtt_user,
            password=cfg.mqtt_password,
        )
        publisher = MqttPublisher(
            cfg.mqtt_host,
            cfg.mqtt_port,
            topic_prefix=cfg.mqtt_prefix,
            client_id=f"{cfg.client_id}-reviews",
            max_buffer=int(cfg.mqtt_buffer),
            drone_id="station",
            status_topic=f"{cfg.mqtt_prefix}/station/status",
            username=cfg.mqtt_user,
            password=cfg.mqtt_password,
        )
        self.outbox = MqttOutbox(publisher, stamp=False)
        if cfg.mavlink_out is not None:
            from ..links.mavlink import MavlinkSender

            try:
                self.mavlink = MavlinkSender(cfg.mavlink_out)
            except (ImportError, OSError) as exc:
                publisher.close(0.5)
                raise ValueError(f"--mavlink-out {cfg.mavlink_out}: cannot open the link: {exc}") from None
        return self.ingest, self.outbox

    def run(self) -> int:  # noqa: C901 - start-up, wait and ordered shutdown share the threads they start
        """Start everything, wait for SIGTERM/SIGINT, stop in order; returns the exit code."""
        import uvicorn

        from ..options.files import ConfigError
        from ..serve.guard import guarded_h11_protocol
        from .app import create_app

        cfg = self.config
        try:
            cfg.state.mkdir(parents=True, exist_ok=True)
            (cfg.state / "crops").mkdir(exist_ok=True)
            (cfg.state / "photos").mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--state {cfg.state}: cannot write there ({exc.strerror or exc})") from None
        try:
            with self.store() as store:
                store.check()
                restored = self.finds.restore(store)
                counts = self.status(store)
        except sqlite3.DatabaseError as exc:
            db = cfg.db_path
            raise ConfigError(
                f"the station database {db} cannot be used ({exc}); move it aside with its -wal and -shm files "
                f"(mv {db} {db}.damaged) to start with an empty one"
            ) from None
        try:
            ingest, outbox = self._open_links()
        except (ValueError, ImportError) as exc:
            raise ConfigError(str(exc)) from None
        sock = bind_socket(cfg.host, cfg.port)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(self),
                http=guarded_h11_protocol(64, 10.0),
                timeout_graceful_shutdown=5,
                log_config=None,
                log_level="warning",
                lifespan="off",
            )
        )
        outbox_stop = threading.Event()
        threads = [
            threading.Thread(
                target=self.fetcher.run, name="crops", daemon=True, args=(cfg.db_path, self.stop)
            ),
            threading.Thread(
                target=outbox.run, name="mqtt outbox", daemon=True, args=(self.store, outbox_stop)
            ),
        ]
        http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self.stop.set())
        code = EXIT_OK
        try:
            for t in threads:
                t.start()
            http.start()
            ingest.start()
            host, port = sock.getsockname()[:2]
            url_host = f"[{host}]" if ":" in host else host
            log.info(
                "listening on http://%s:%d  state %s  MQTT %s:%d prefix %s  %d drone(s), %d sighting(s) in %d "
                "find(s), %d crop(s) pending%s  fetching only inside %s",
                url_host,
                port,
                cfg.state,
                cfg.mqtt_host,
                cfg.mqtt_port,
                cfg.mqtt_prefix,
                counts["drones"],
                restored,
                counts["finds"],
                counts["crops"]["pending"],
                "  (token required)" if cfg.token else "",
                self.client.networks,
            )
            rule = self.finds.rule
            (log.warning if rule.conflict else log.info)("finds: sightings join by %s", rule.describe())
            sd_notify("READY=1")
            while not self.stop.wait(0.5):
                if not http.is_alive() or not all(t.is_alive() for t in threads):
                    log.error(
                        "a part of the station stopped: %s",
                        [t.name for t in [http, *threads] if not t.is_alive()],
                    )
                    code = EXIT_WORKER_FAILED
                    break
            sd_notify("STOPPING=1")
            log.info("stopping")
        finally:
            self.stop.set()
            self.fetcher.wake.set()
            ingest.close()
            outbox_stop.set()
            outbox.wake.set()
            for t in threads:
                t.join(timeout=10)
            outbox.publisher.close(3.0)
            if self.mavlink is not None:
                self.mavlink.close()
            server.should_exit = True
            http.join(timeout=10)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            sock.close()
        log.info("stopped")
        return code
