"""The daemon: sources record inputs, one worker runs the detector over the queue, uvicorn serves the API.

Threads: one per watched-folder set and per video source (recording inputs), one worker (the only
user of the Detector), one HTTP server. The main thread waits for SIGTERM or SIGINT; then sources
stop, the worker finishes the batch it holds and commits it, the server stops, and the process exits
0. A SIGKILL or power cut at any moment loses nothing: what was not committed runs again at the next
start (see :mod:`.store`).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sqlite3
import threading
import time

from ..images import ImageReadError
from ..options import EXIT_OK, EXIT_WORKER_FAILED
from ..readahead import prefetch, read_ahead_bytes, read_in_turn, read_within
from .config import ConfigError, ServeConfig, advertise_url
from .hooks import ResultHooks
from .retention import GIB, MIB, DiskFloor, Retention, human_bytes
from .sources import FolderWatcher, VideoReader
from .store import Item, Outcome, PhotoQueue
from .telemetry import StageHistograms

log = logging.getLogger("edgetile.serve")

COMMIT_RETRY_S = 5.0  # between tries to commit a batch while the disk is full


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's SQLITE_FULL and the system's ENOSPC/EDQUOT: no fault of the photo's."""
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == 13 or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness or shutdown; nothing happens outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd through %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound now so that a taken port is reported before anything starts."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host: cannot resolve {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there: {exc.strerror or exc}"
        ) from None
    return sock


class ChangeSignal:
    """A counter that grows at each commit the review's live stream must see (results, decisions).

    Readers (the live streams, on the event loop) compare ``version`` with the one they saw.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def bump(self) -> None:
        with self._lock:
            self._version += 1


class Daemon:
    """One running daemon: configuration, detector, measurements and the stop signal.

    Args:
        config: What to watch, where to keep state, how to serve.
        detector: An open Detector (or anything with ``detect(image, timings)`` and ``names``); used by
            the worker thread only.
        hooks: What is done with results beyond the pixels (ground coordinates, MQTT, MAVLink; see
            :mod:`.hooks`); by default nothing.
    """

    def __init__(self, config: ServeConfig, detector, hooks: ResultHooks | None = None) -> None:
        self.config = config
        self.detector = detector
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.changes = ChangeSignal()  # the review's live stream wakes on each commit
        self.histograms = StageHistograms()
        self.started_at = time.time()
        self._retries = 0
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self.watcher: FolderWatcher | None = None
        self.worker_error: BaseException | None = None
        self.hooks = ResultHooks() if hooks is None else hooks
        self.outbox = None  # with MQTT: results go to the broker through the queue database
        if self.hooks.publisher is not None:
            from ..embedder import announcement
            from .outbox import MqttOutbox

            self.outbox = MqttOutbox(
                self.hooks.publisher, embedder=announcement(getattr(detector, "embedder", None))
            )
        self._outbox_stop = threading.Event()  # set once the worker has committed its last batch
        self.floor = DiskFloor(config.state, config.min_free_bytes)
        self.retention = Retention(
            (config.uploads_dir, config.frames_dir), config.keep_inputs_bytes, config.keep_days, self.floor
        )

    @property
    def retries(self) -> int:
        """Failed attempts queued again for a later try, this run."""
        with self._lock:
            return self._retries

    def problems(self) -> list[str]:
        """What fails now without stopping the daemon (folder scans, missing folders), one line each."""
        return self.watcher.problems() if self.watcher is not None else []

    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def request_stop(self, *_signal_args: object) -> None:
        """Stop taking new work; the worker finishes and commits its batch."""
        self.stop.set()
        self.wake.set()
        self.retention.wake.set()

    # ---- the worker -------------------------------------------------------------------------

    def process(self, item: Item, ahead: tuple | None = None, read_error: Exception | None = None) -> Outcome:
        """Run the detector on one input; any failure becomes the outcome's one-line error.

        Args:
            item: The queue's input.
            ahead: What the read-ahead thread made of it (see :func:`..readahead.read_within`), or None
                to read it here.
            read_error: The read-ahead thread's failure to read it.
        """
        t0 = time.perf_counter()
        try:
            if read_error is not None:
                raise read_error
            image, read_ms = read_in_turn(item.path, ahead or (None, 0.0), self.config.max_pixels)
            ahead = None
            timings = {"read": read_ms}
            dets = self.detector.detect(image, timings)
            log.debug("%s: %d detection(s)", item.name, len(dets))
            # e.g. coordinates and thumbnails, committed with them
            dets = self.hooks.annotate(item, image, dets)
            records = dets.to_records(self.detector.names)
            place = self.hooks.photo_geo(item)  # e.g. the footprint for the review map
            timings["total"] = (
                time.perf_counter() - t0
            ) * 1000  # this thread's time: a read ahead is not in it
            return Outcome(
                item,
                width=int(image.shape[1]),
                height=int(image.shape[0]),
                detections=records,
                timings_ms={k: round(v, 2) for k, v in timings.items()},
                photo_geo=place,
            )
        except (ImageReadError, OSError, ValueError, MemoryError) as exc:
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning(
                "%s: attempt %d of %d failed: %s", item.name, item.attempts, self.config.max_attempts, error
            )
        except Exception as exc:  # noqa: BLE001 - a backend failure on one input is recorded with it, and logged whole
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
            log.exception("%s: attempt %d of %d failed", item.name, item.attempts, self.config.max_attempts)
        return Outcome(item, error=error)

    def work(self) -> None:
        """Claim, process and commit batches until stopped."""
        cfg = self.config
        # the next photo of a batch is read on a thread (by default only when the model is on a GPU)
        load = read_within(
            read_ahead_bytes(cfg.read_ahead_mb, getattr(self.detector, "infers_on_cpu", True)), cfg.max_pixels
        )
        try:
            with PhotoQueue(cfg.db_path, cfg.max_attempts, cfg.retry_after) as q:
                while not self.stop.is_set():
                    self.wake.clear()
                    items = q.claim(cfg.queue_batch)
                    if not items:
                        self.wake.wait(0.5)
                        continue
                    log.debug("claimed %d input(s)", len(items))
                    outcomes = []  # a stop request waits for the whole batch
                    for item, ahead, read_error in prefetch(items, lambda it: load(it.path)):
                        outcomes.append(self.process(item, ahead, read_error))
                        ahead = None  # let go before the next photo is read
                    t0 = time.perf_counter()
                    parked = self._commit(q, items, outcomes)
                    if parked is None:  # stopped while the disk was full: given back uncounted
                        break
                    log.debug("committed %d outcome(s)", len(outcomes))
                    self.changes.bump()
                    if self.outbox is not None:  # MQTT hears what was committed, from the outbox
                        self.outbox.wake.set()
                    self.hooks.publish(outcomes)  # e.g. MAVLink hears what was committed
                    self.histograms.observe("commit", time.perf_counter() - t0)
                    self.retention.wake.set()  # finished inputs' copies may now go
                    for o in outcomes:
                        if o.ok:
                            self.histograms.observe_ms(o.timings_ms or {})
                        elif o.item.attempts >= cfg.max_attempts:
                            log.warning(
                                "%s: parked after %d attempt(s): %s", o.item.name, o.item.attempts, o.error
                            )
                    with self._lock:
                        self._retries += sum(1 for o in outcomes if not o.ok) - parked
        except BaseException as exc:  # noqa: BLE001 - kept and logged whole; the main thread then exits 1
            self.worker_error = exc
            log.exception("the worker stopped; what it had not committed runs again at the next start")

    def _commit(self, q: PhotoQueue, items: list[Item], outcomes: list[Outcome]) -> int | None:
        """Commit a batch; while the disk is full, keep the results and try again.

        A full disk is no fault of the photos: their attempts must not be counted against them (a
        crash here would count them at the next start, and park a good photo on its last attempt).
        Returns how many were parked, or None when stopped before the commit could be written (the
        items are then given back to the queue uncounted, when even that can be written).
        """
        said = False
        while True:
            try:
                return q.finish(outcomes, outbox_limit=None if self.outbox is None else self.outbox.limit)
            except (sqlite3.OperationalError, OSError) as exc:
                if not is_disk_full(exc):
                    raise
                if not said:
                    log.warning(
                        "cannot commit the results of %d input(s): %s; they wait and are committed once "
                        "there is room (trying every %g s; their attempts are not counted)",
                        len(outcomes),
                        exc,
                        COMMIT_RETRY_S,
                    )
                    said = True
                self.retention.wake.set()  # below the floor it removes finished copies to make room
            if self.stop.wait(COMMIT_RETRY_S):
                try:
                    q.release(items)
                except (sqlite3.OperationalError, OSError) as exc:
                    log.warning("cannot give %d input(s) back to the queue either: %s", len(items), exc)
                return None

    def _read_video(self, reader: VideoReader) -> None:
        """A video source's thread: first wait (briefly) for what the hooks record with each frame."""
        self.hooks.wait_for_telemetry(self.stop)
        reader.run(self.config.db_path, self.stop)

    # ---- lifecycle --------------------------------------------------------------------------

    def _prepare_state(self) -> None:
        """Create the state folders and drop partial uploads; only while holding the state lock."""
        cfg = self.config
        for d in (cfg.uploads_dir, cfg.frames_dir, cfg.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in cfg.tmp_dir.iterdir():  # uploads cut off by a crash: never answered, never queued
            if leftover.is_file():
                leftover.unlink()

    def _lock_state(self):
        if os.name != "posix":
            return None
        import fcntl

        self.config.state.mkdir(parents=True, exist_ok=True)
        f = open(self.config.state / "lock", "a+")  # noqa: SIM115 - held open for the daemon's life
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise ConfigError(
                f"--state {self.config.state}: another edgetile serve is using this folder"
            ) from None
        return f

    def run(self) -> int:  # noqa: C901 - start-up, wait and ordered shutdown share the threads and signal handlers they install
        """Start everything, wait for SIGTERM/SIGINT, shut down in order; returns the exit code."""
        import uvicorn

        from .app import create_app
        from .guard import guarded_h11_protocol

        cfg = self.config
        try:
            lock = self._lock_state()
        except OSError as exc:
            raise ConfigError(
                f"--state {cfg.state}: cannot write there ({exc.strerror or exc}); expected a folder "
                "the daemon may create files in"
            ) from None
        try:
            try:
                self._prepare_state()
            except OSError as exc:
                raise ConfigError(
                    f"--state {cfg.state}: cannot write there ({exc.strerror or exc}); expected a folder "
                    "the daemon may create files in"
                ) from None
            try:
                with PhotoQueue(cfg.db_path, cfg.max_attempts, cfg.retry_after) as q:
                    q.check()
                    requeued, parked = q.recover()
                    retried = q.retry_parked() if cfg.retry_failed else 0
                    not_retried = q.parked_without_copy() if cfg.retry_failed else 0
                    counts = q.counts()
                    copies = q.copies()
            except sqlite3.DatabaseError as exc:  # a restart would meet the same file: usage error, exit 2
                db = cfg.db_path
                raise ConfigError(
                    f"the queue database {db} cannot be used ({exc}); move it aside with its -wal and "
                    f"-shm files (mv {db} {db}.damaged) to start with an empty queue; its results may "
                    f"be recovered with 'sqlite3 {db}.damaged .recover'"
                ) from None
            if requeued or parked:
                log.warning(
                    "the last run stopped without finishing %d input(s): %d queued again (each tried "
                    "alone), %d parked (interrupted on their last allowed attempt)",
                    requeued + parked,
                    requeued,
                    parked,
                )
            if retried or not_retried:
                log.info(
                    "--retry-failed: %d parked input(s) queued again%s",
                    retried,
                    f"; {not_retried} not, their copies were removed by the retention" if not_retried else "",
                )
            sock = bind_socket(cfg.host, cfg.port)
            pub = self.hooks.publisher
            if pub is not None and pub.api is None:  # --advertise-url not given: known once the port is
                pub.advertise(advertise_url(cfg.host, sock.getsockname()[1]))
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(self),
                    # h11 always (its 16 KiB limit on a request's headers), with a header-read
                    # timeout and a connection cap of our own: see guard.guarded_h11_protocol
                    http=guarded_h11_protocol(cfg.max_connections, cfg.header_timeout),
                    timeout_graceful_shutdown=5,  # a slow client cannot hold the stop
                    log_config=None,
                    log_level="warning",
                    access_log=cfg.access_log,
                    lifespan="off",
                )
            )
            if cfg.access_log:
                logging.getLogger("uvicorn.access").setLevel(logging.INFO)
            threads: list[threading.Thread] = []
            if cfg.watch:
                self.watcher = FolderWatcher(cfg.watch, cfg.settle, exclude=cfg.state, on_new=self.wake.set)
                threads.append(
                    threading.Thread(
                        target=self.watcher.run,
                        name="watch",
                        daemon=True,
                        args=(cfg.db_path, self.stop, cfg.poll, time.time),
                    )
                )
            # e.g. with --mavlink-in each kept frame is recorded with the vehicle's pose at its grab
            frame_telemetry = self.hooks.frame_telemetry
            for src in cfg.video:
                reader = VideoReader(
                    src,
                    cfg.frame_stride,
                    cfg.frames_dir,
                    cfg.tmp_dir,
                    max_pending=max(32, 4 * cfg.queue_batch),
                    on_new=self.wake.set,
                    telemetry=frame_telemetry,
                    floor=self.floor,
                )
                if frame_telemetry is not None and reader.kind == "file":
                    log.info(
                        "video %s: a file's frames get the vehicle's pose when they are read, not when they "
                        "were recorded: right only for a file replayed in step with its telemetry",
                        src,
                    )
                threads.append(
                    threading.Thread(
                        target=self._read_video, name=f"video {src}", daemon=True, args=(reader,)
                    )
                )
            threads.append(
                threading.Thread(
                    target=self.retention.run, name="retention", daemon=True, args=(cfg.db_path, self.stop)
                )
            )
            if self.outbox is not None:  # stopped after the worker, so that its last batch is sent too
                threads.append(
                    threading.Thread(
                        target=self.outbox.run,
                        name="mqtt outbox",
                        daemon=True,
                        args=(cfg.db_path, self._outbox_stop),
                    )
                )
            self._worker = threading.Thread(target=self.work, name="worker")
            http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
            previous = {}
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    previous[sig] = signal.signal(sig, self.request_stop)
            try:
                self._worker.start()
                for t in threads:
                    t.start()
                http.start()
                host, port = sock.getsockname()[:2]
                url_host = f"[{host}]" if ":" in host else host
                log.info(
                    "listening on http://%s:%d  state %s  queue: %d waiting, %d done, %d parked%s",
                    url_host,
                    port,
                    cfg.state,
                    counts["queued"],
                    counts["done"],
                    counts["parked"],
                    "  (token required)" if cfg.token else "",
                )
                log.info(
                    "disk: the copies of inputs take %s in %d file(s) (--keep-inputs-gb %s%s); %s free "
                    "(--min-free-mb %g)",
                    human_bytes(copies["held_bytes"]),
                    copies["held_files"],
                    "unlimited" if cfg.keep_inputs_bytes is None else f"{cfg.keep_inputs_bytes / GIB:g}",
                    "" if cfg.keep_days is None else f", --keep-days {cfg.keep_days:g}",
                    human_bytes(self.floor.free_bytes()),
                    cfg.min_free_bytes / MIB,
                )
                sd_notify("READY=1")
                code = EXIT_OK
                while not self.stop.wait(0.5):
                    if not self._worker.is_alive():
                        code = EXIT_WORKER_FAILED
                        break
                    if not http.is_alive():
                        log.error("the HTTP server stopped")
                        code = EXIT_WORKER_FAILED
                        break
                sd_notify("STOPPING=1")
                log.info("stopping: finishing the current batch")
                self.request_stop()
                self._worker.join()
                self._outbox_stop.set()
                if self.outbox is not None:
                    self.outbox.wake.set()
                for t in threads:
                    t.join(timeout=10)
                server.should_exit = True
                http.join(timeout=10)
                with PhotoQueue(cfg.db_path) as q:
                    left = q.depth()
                if self.worker_error is not None:
                    code = EXIT_WORKER_FAILED
                log.info("stopped; %d input(s) wait for the next start", left)
                return code
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                sock.close()
        finally:
            if lock is not None:
                lock.close()
