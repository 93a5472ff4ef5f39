"""The daemon's configuration, checked before start.

The options come merged (command line over the --config file over the defaults) by
:func:`edgetile.runtime.options.files.resolve_options`; :meth:`ServeConfig.from_options` checks what
they describe and builds the configuration.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from ..images import IMAGE_EXTENSIONS, MAX_PIXELS
from ..options.files import ConfigError

log = logging.getLogger("edgetile.serve")


def is_loopback(host: str) -> bool:
    """True when every address the host name resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host: cannot resolve {host!r}: {exc.strerror}") from None
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


@dataclass(frozen=True)
class ServeConfig:
    """Everything the daemon needs besides the detector.

    Attributes:
        state: Folder of the queue database, uploads and frames.
        watch: Folders searched recursively for new photos.
        video: Video files, stream URLs, V4L2 devices or camera indices.
        frame_stride: Process every Nth frame of a video source.
        settle: Seconds a watched file must stay unchanged before it is read.
        poll: Seconds between scans of the watched folders.
        host: Address to listen on.
        port: TCP port (0: any free one).
        token: Bearer token required on every request but /health, or None.
        max_upload_bytes: Largest accepted upload.
        allowed_hosts: Host header names accepted besides the address connected to, localhost and
            the machine's own name ('*': any).
        max_connections: Most open HTTP connections (the oldest idle one is closed past it).
        header_timeout: Seconds a connection may take to send a request's headers.
        access_log: Log every HTTP request.
        max_attempts: Tries before a failing input is parked.
        retry_after: Seconds before a failed input is tried again.
        queue_batch: Photos claimed and committed together.
        retry_failed: Requeue parked inputs at start.
        keep_inputs_bytes: Most bytes the daemon's own copies of inputs (uploads, video frames) may
            take before the oldest finished ones are deleted; None for no budget.
        keep_days: Copies of results older than this many days are deleted; None for no age limit.
        min_free_bytes: Free space under the state folder below which new frames are not kept and
            uploads are refused; 0 for no floor.
        max_pixels: Most pixels of a photo (from its header, before decoding), in the queue, uploads
            and image routes alike; None for no limit.
        read_ahead_mb: Largest photo (decoded, MiB) read on a thread while the one before is detected;
            None: the default of :func:`..readahead.read_ahead_bytes` for the detector's backend.
        log_level: Logging level name.
        tiles: An XYZ folder of map tiles (Z/X/Y.png or .jpg) shown under the review map, or None.
        sysfs: Where sysfs is mounted (sensors for /metrics).
    """

    state: Path
    watch: tuple[Path, ...] = ()
    video: tuple[str, ...] = ()
    frame_stride: int = 15
    settle: float = 2.0
    poll: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_upload_bytes: int = 50 * 1024 * 1024
    allowed_hosts: tuple[str, ...] = ()
    max_connections: int = 64
    header_timeout: float = 10.0
    access_log: bool = False
    max_attempts: int = 3
    retry_after: float = 10.0
    queue_batch: int = 4
    retry_failed: bool = False
    keep_inputs_bytes: int | None = 2 << 30
    keep_days: float | None = None
    min_free_bytes: int = 500 << 20
    max_pixels: int | None = MAX_PIXELS
    read_ahead_mb: int | None = None
    log_level: str = "info"
    tiles: Path | None = None
    sysfs: Path = Path("/sys")

    @property
    def db_path(self) -> Path:
        return self.state / "queue.sqlite3"

    @property
    def uploads_dir(self) -> Path:
        return self.state / "uploads"

    @property
    def frames_dir(self) -> Path:
        return self.state / "frames"

    @property
    def tmp_dir(self) -> Path:
        return self.state / "tmp"

    @classmethod
    def from_options(cls, a: argparse.Namespace) -> ServeConfig:
        """Check the merged options and build the configuration; every problem is a ConfigError."""
        if a.token and a.token_file:
            raise ConfigError("--token and --token-file: expected one of them, found both")
        token = a.token
        if a.token_file:
            try:
                lines = Path(a.token_file).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"--token-file: cannot read {a.token_file}: {exc.strerror or exc}"
                ) from None
            token = lines[0].strip() if lines else ""
            if not token:
                raise ConfigError(
                    f"--token-file: expected a token on the first line of {a.token_file}, found none"
                )
        if token is not None and (not token or any(c.isspace() for c in token)):
            raise ConfigError("--token: expected a non-empty token without spaces")
        if not is_loopback(a.host) and not token:
            raise ConfigError(
                f"--host {a.host}: listening beyond this machine needs --token or --token-file "
                "(requests then need 'Authorization: Bearer TOKEN')"
            )
        if a.port > 65535:
            raise ConfigError(f"--port: expected 0..65535, found {a.port}")
        watch = []
        for w in a.watch:
            p = Path(w)
            if not p.is_dir():
                raise ConfigError(
                    f"--watch: expected an existing folder, found {'a file' if p.exists() else 'nothing'} at {w}"
                )
            watch.append(p.resolve())
        state = Path(a.state)
        if state.exists() and not state.is_dir():
            raise ConfigError(f"--state: expected a folder, found a file at {a.state}")
        tiles = getattr(a, "tiles", None)
        if tiles is not None and not Path(tiles).is_dir():
            raise ConfigError(
                f"--tiles: expected a folder of map tiles (Z/X/Y.png), found "
                f"{'a file' if Path(tiles).exists() else 'nothing'} at {tiles}"
            )
        for v in a.video:
            if video_kind(v) == "file" and not Path(v).is_file():
                raise ConfigError(
                    f"--video: expected a video file, stream URL, /dev/video device or camera index, "
                    f"found no file at {v}"
                )
        return cls(
            state=state.resolve(),
            watch=tuple(watch),
            video=tuple(a.video),
            frame_stride=a.frame_stride,
            settle=a.settle,
            poll=a.poll,
            host=a.host,
            port=a.port,
            token=token,
            max_upload_bytes=int(a.max_upload_mb * 1024 * 1024),
            allowed_hosts=tuple(a.allowed_hosts),
            max_connections=a.max_connections,
            header_timeout=a.header_timeout,
            access_log=a.access_log,
            max_attempts=a.max_attempts,
            retry_after=a.retry_after,
            queue_batch=a.queue_batch,
            retry_failed=a.retry_failed,
            read_ahead_mb=a.read_ahead,
            max_pixels=a.max_pixels,
            log_level=a.log_level,
            keep_inputs_bytes=None if a.keep_inputs_gb is None else int(a.keep_inputs_gb * (1 << 30)),
            keep_days=a.keep_days,
            min_free_bytes=int(a.min_free_mb * (1 << 20)),
            tiles=None if tiles is None else Path(tiles).resolve(),
        )


def advertise_url(host: str, port: int) -> str:
    """Where a ground station reaches an API listening on host:port: the host itself, or for a wildcard
    address (0.0.0.0, ::) this machine's first non-loopback address (the one its default route uses)."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # kept when nothing better is found: --advertise-url then says where
        for found in _own_addresses():
            if not ipaddress.ip_address(found).is_loopback:
                host = found
                break
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _own_addresses() -> list[str]:
    """This machine's address on its default route, then its host name's; those that can be found."""
    out = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # a UDP "connection" sends nothing: it only picks the route
            out.append(s.getsockname()[0])
    except OSError as exc:  # no route at all: a drone on its own
        log.debug("no default route (%s): trying the host name's address", exc)
    try:
        out.append(socket.gethostbyname(socket.gethostname()))
    except OSError as exc:
        log.debug("the host name has no address (%s)", exc)
    return out


def video_kind(source: str) -> str:
    """ "stream" (a URL), "camera" (an index or /dev/video*), or "file"."""
    if "://" in source:
        return "stream"
    if source.isdigit() or source.startswith("/dev/video"):
        return "camera"
    return "file"


def is_image_name(name: str) -> bool:
    """True when the name has one of the image extensions read_image is used on."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS
