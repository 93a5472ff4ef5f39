"""``edgetile serve`` on the command line: its options, its registration, and the command itself.

Registration is cheap (argparse only): the ``serve`` subcommand is added to the parser of every
``edgetile`` invocation through the ``edgetile.commands`` entry points, while FastAPI, uvicorn and the
detector load only when the daemon runs. The command merges the command line over the --config file
over the defaults, builds the ServeConfig and the detector, and runs the :class:`.daemon.Daemon`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..argtypes import (
    add_max_pixels_option,
    add_read_ahead_option,
    finite_number,
    int_at_least,
    number_or_word,
)
from ..options import EXIT_USAGE, UsageError
from ..options.detect import add_detect_options, open_detector
from ..options.files import ConfigError, defer_defaults, resolve_options

DEFAULT_PORT = 8765
DEFAULT_STATE = "edgetile-state"


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """The daemon's own options: config file, state, sources, HTTP and queue behaviour."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file whose keys are these long option names (e.g. 'watch: [/data/drop]', "
        "'conf: 0.1'); options given on the command line win over the file",
    )
    p.add_argument(
        "--state",
        metavar="DIR",
        default=DEFAULT_STATE,
        help="folder for the queue database, uploads and video frames; keep it on the device's "
        f"persistent storage (default: ./{DEFAULT_STATE})",
    )
    g = p.add_argument_group("sources")
    g.add_argument(
        "--watch",
        nargs="+",
        action="extend",
        metavar="DIR",
        default=[],
        help="folder(s) searched recursively for new photos, e.g. a camera SD card or FTP drop "
        "folder; a file is read once its size and time stop changing for --settle seconds",
    )
    g.add_argument(
        "--settle",
        metavar="SECONDS",
        type=finite_number("--settle"),
        default=2.0,
        help="seconds a watched file must stay unchanged before it is read; 0 when writers "
        "rename finished files into the folder (default: 2)",
    )
    g.add_argument(
        "--poll",
        metavar="SECONDS",
        type=finite_number("--poll", 0.05),
        default=1.0,
        help="seconds between scans of the watched folders (default: 1)",
    )
    g.add_argument(
        "--video",
        nargs="+",
        action="extend",
        metavar="SRC",
        default=[],
        help="video file, RTSP/HTTP stream URL, V4L2 device (/dev/video0) or camera index (0), "
        "read through OpenCV; streams and cameras reconnect when they drop",
    )
    g.add_argument(
        "--frame-stride",
        metavar="N",
        type=int_at_least("--frame-stride"),
        default=15,
        help="process every Nth video frame; 15 on a 30 fps camera is two photos a second (default: 15)",
    )
    g = p.add_argument_group("HTTP API")
    g.add_argument(
        "--host",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="address to listen on; anything but loopback needs --token (default: 127.0.0.1)",
    )
    g.add_argument(
        "--port",
        metavar="PORT",
        type=int_at_least("--port", 0),
        default=DEFAULT_PORT,
        help=f"TCP port; 0 picks a free one and logs it (default: {DEFAULT_PORT})",
    )
    g.add_argument(
        "--token",
        metavar="SECRET",
        help="require 'Authorization: Bearer SECRET' on every request but /health; visible in the "
        "process list, so prefer --token-file",
    )
    g.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the bearer token from this file (first line), e.g. a systemd credential",
    )
    g.add_argument(
        "--allowed-hosts",
        nargs="+",
        action="extend",
        metavar="NAME",
        default=[],
        help="without a token: further names clients may put in the Host header, e.g. an SSH "
        "tunnel's or a local DNS name of the device; the address connected to, localhost and this "
        "machine's host name are always accepted, other names refused, so that a web page cannot "
        "reach the daemon through a name of its own (DNS rebinding); '*' accepts any. With a "
        "token any name is accepted: a page cannot send the token",
    )
    g.add_argument(
        "--max-upload-mb",
        metavar="MIB",
        type=finite_number("--max-upload-mb", 0.001),
        default=50.0,
        help="largest photo accepted by POST /images, in MiB (default: 50)",
    )
    g.add_argument(
        "--max-connections",
        metavar="N",
        type=int_at_least("--max-connections"),
        default=64,
        help="most open HTTP connections; past it the oldest one without a request in progress is "
        "closed, so a flood of half-sent requests never keeps a health check out (default: 64)",
    )
    g.add_argument(
        "--header-timeout",
        metavar="SECONDS",
        type=finite_number("--header-timeout", 0.0, inclusive=False),
        default=10.0,
        help="close a connection that has not sent a whole request's headers this long after it "
        "opened or after its last answer (slow or stalled clients) (default: 10)",
    )
    g.add_argument("--access-log", action="store_true", help="log every HTTP request")
    g.add_argument(
        "--tiles",
        metavar="DIR",
        help="map tiles downloaded before the flight (an XYZ folder: DIR/Z/X/Y.png or .jpg), shown under "
        "the review page's map; nothing is ever fetched from the internet (default: no background)",
    )
    g = p.add_argument_group("queue")
    g.add_argument(
        "--max-attempts",
        metavar="N",
        type=int_at_least("--max-attempts"),
        default=3,
        help="tries before a failing input is parked (listed by GET /failed) and the queue goes "
        "on; a crash or power cut during an input counts as a try (default: 3)",
    )
    g.add_argument(
        "--retry-after",
        metavar="SECONDS",
        type=finite_number("--retry-after"),
        default=10.0,
        help="seconds before a failed input is tried again (default: 10)",
    )
    g.add_argument(
        "--queue-batch",
        metavar="N",
        type=int_at_least("--queue-batch"),
        default=4,
        help="photos taken from the queue and committed together when a backlog builds up; a "
        "lone photo is committed at once. SIGTERM finishes this batch (default: 4)",
    )
    add_read_ahead_option(g)
    add_max_pixels_option(g)
    g.add_argument(
        "--retry-failed",
        action="store_true",
        help="at start, send every parked input back to the queue with fresh tries",
    )
    g.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="debug logs every photo; info logs start, stop and failures (default: info)",
    )
    g = p.add_argument_group("disk")
    g.add_argument(
        "--keep-inputs-gb",
        metavar="GIB",
        type=number_or_word("--keep-inputs-gb", "unlimited", "a number of GiB"),
        default=2.0,
        help="disk budget for the daemon's own copies of inputs (STATE/uploads and STATE/frames); "
        "past it the copies of finished inputs are deleted, oldest result first (detections "
        "stay; GET /images then answers 410). Watched photos are never deleted. 2 GiB holds "
        "about half an hour of 1080p frames (~0.5 MB each) at --frame-stride 15 from a 30 fps "
        "camera and fits beside JetPack on a 32 GB eMMC; 'unlimited' keeps every copy "
        "(default: 2)",
    )
    g.add_argument(
        "--keep-days",
        metavar="DAYS",
        type=finite_number("--keep-days"),
        default=None,
        help="also delete the copies of results older than this, e.g. 7 where photos of people "
        "may be kept only a week; 0 deletes each copy once its input is finished "
        "(default: no age limit)",
    )
    g.add_argument(
        "--min-free-mb",
        metavar="MIB",
        type=finite_number("--min-free-mb"),
        default=500.0,
        help="free space to keep on the state folder's disk: below it live video frames are "
        "skipped, video files wait, uploads are refused (507) and finished copies are deleted "
        "until it is back, instead of every write failing on a full disk; 0 turns this off "
        "(default: 500)",
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the ``edgetile`` parser; imports nothing heavy.

    Every option's default is replaced by SUPPRESS after it is recorded (:func:`defer_defaults`), so
    that the command can tell options given on the command line (which win) from defaults (which a
    --config file overrides).
    """
    s = subparsers.add_parser(
        "serve",
        help="run the on-device daemon: watch folders, streams and uploads; serve results over HTTP",
        description="Process every photo from watched folders, video streams and HTTP uploads through a durable "
        "queue (STATE/queue.sqlite3) that survives crashes and power cuts, and serve the results "
        "over HTTP: /health, /metrics, /detections, /failed, /images. SIGTERM finishes the current "
        "batch, commits it and exits 0.",
        epilog="Exit codes: 0 stopped by SIGTERM/SIGINT, 1 the worker failed, 2 usage error.\n"
        "Example: edgetile serve --model person.engine --watch /media/sd/DCIM --state /var/lib/edgetile "
        "--tile 1024 --conf 0.2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_detect_options(s)
    add_serve_options(s)
    from ..options.geo import add_serve_geo_options  # --geo, pose overrides, --mqtt, MAVLink

    add_serve_geo_options(s)
    settable = {x.dest: x for x in s._actions if x.dest not in ("help", "config")}
    defer_defaults(s, settable, option="--config", noun="daemon setting", last_spelling_wins=True)
    s.set_defaults(func=serve_command)
    return s


class RepeatedLines(logging.Filter):
    """Lets a line through once per ``window`` seconds; the repeats are counted, and said with the next.

    A failure that repeats many times a second (asyncio's "socket.accept() out of system resource"
    under a flood of connections, with its traceback each time) must not fill the disk with the log.
    Only identical lines (same logger, level and text) are held back: "photo A failed" never hides
    "photo B failed". The daemon's own lines are never held back (each says an event once already,
    e.g. a stream's reconnection); the libraries' are.

    Args:
        window: Seconds during which a line is said once.
        clock: Seconds, monotonic (for tests).
        loggers: Names (and their children) whose lines are held back.
    """

    def __init__(
        self, window: float = 60.0, clock=None, loggers: tuple[str, ...] = ("uvicorn", "asyncio")
    ) -> None:
        super().__init__()
        import threading
        import time

        self.window = float(window)
        self.loggers = tuple(loggers)
        self.clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # line -> (said at, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        if not any(record.name == n or record.name.startswith(n + ".") for n in self.loggers):
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        with self._lock:
            if len(self._seen) > 1000:  # forget lines not seen for a window: memory stays bounded
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
            said_at, held = self._seen.get(key, (None, 0))
            if said_at is not None and now - said_at < self.window:
                self._seen[key] = (said_at, held + 1)
                return False
            self._seen[key] = (now, 0)
        if held:
            record.msg = (
                f"{record.getMessage()} ({held} more like it in the last {self.window:g} s not logged)"
            )
            record.args = None
        return True


def setup_logging(
    level: str, program: str = "serve", main: str = "edgetile.serve", more: tuple[str, ...] = ()
) -> list[tuple[logging.Logger, logging.Handler]]:
    """One stderr handler, repeated lines folded, for a long-running command's loggers (serve, station).

    Returns the (logger, handler) pairs installed, for the caller to remove at its end.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s edgetile {program} %(levelname)s: %(message)s"))
    handler.addFilter(RepeatedLines())
    installed: list[tuple[logging.Logger, logging.Handler]] = []
    # asyncio: e.g. "socket.accept() out of system resource", which would otherwise reach stderr unfiltered
    for name in (main, *more, "edgetile.links.mqtt", "uvicorn", "asyncio"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False
        installed.append((logger, handler))
    logging.getLogger(main).setLevel(level.upper())
    return installed


def serve_command(a: argparse.Namespace) -> int:
    """``edgetile serve``: merge options and config file, open the detector, run the daemon."""
    from .config import ServeConfig
    from .daemon import Daemon

    try:
        options = resolve_options(a)
        config = ServeConfig.from_options(options)
    except ConfigError as exc:
        print(f"edgetile serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(
            f"edgetile serve: error: needs the serve extra (pip install 'edgetile[serve]'): {exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from ..options.geo import serve_geo_config_from_args

    try:  # before the model loads: a missing password file is said at once
        geo_config = serve_geo_config_from_args(options)
    except ValueError as exc:
        print(f"edgetile serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    installed = setup_logging(config.log_level)
    try:
        try:
            detector = open_detector(options)
        except UsageError as exc:
            print(f"edgetile serve: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        with detector:
            from ..options.geo import embedder_threshold
            from .geo_hooks import open_result_hooks

            try:  # again, now that the embedding model (and with it the tracks' default threshold) is known
                geo_config = serve_geo_config_from_args(options, embedder_threshold(detector))
                hooks = open_result_hooks(geo_config, config.state)
            except ValueError as exc:
                print(f"edgetile serve: error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            try:
                return Daemon(config, detector, hooks).run()
            except ConfigError as exc:
                print(f"edgetile serve: error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            finally:
                hooks.close()  # e.g. the MQTT goodbye (retained status 'offline')
    finally:
        for logger, handler in installed:
            logger.removeHandler(handler)
