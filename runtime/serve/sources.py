"""Where photos come from: watched folders and video sources (files, RTSP streams, V4L2 cameras).

Each source runs in its own thread with its own queue connection and only *records* inputs (content
hash, name, where the bytes are); the worker processes them. A source that fails logs why and, for
live streams and cameras, reconnects; it never stops the daemon.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..files import sha256_file, write_atomic
from ..images import IMAGE_EXTENSIONS
from .config import video_kind
from .retention import DiskFloor
from .store import PhotoQueue, iso_utc

log = logging.getLogger("edgetile.serve")

# Names that file copiers, browsers and FTP servers give to files still being written.
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".download", ".!sync")
RECORD_BATCH = 64


def _walk_images(folder: Path, exclude: Path | None) -> Iterator[tuple[str, os.stat_result]]:
    stack = [str(folder)]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:  # a folder removed or unreadable mid-scan: report it and go on
            log.warning("cannot list %s: %s", current, exc.strerror or exc)
            continue
        for e in entries:
            if e.name.startswith("."):
                continue  # hidden files: editors', rsync's and our own temporary names
            if e.is_symlink():
                # never followed: a link named leak.jpg could point at any file the daemon may read
                log.debug("%s is a symbolic link; links in watched folders are not followed", e.path)
                continue
            if e.is_dir(follow_symlinks=False):
                if exclude is None or Path(e.path) != exclude:
                    stack.append(e.path)
            elif e.name.lower().endswith(PARTIAL_SUFFIXES):
                continue
            elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                try:
                    yield e.path, e.stat()
                except FileNotFoundError:
                    continue  # renamed away between listing and stat


class FolderWatcher:
    """Records photos that appear in folders, each once it is complete.

    A file is complete when its size and modification time did not change for ``settle`` seconds
    (between two scans), or at once with ``settle=0`` when writers rename finished files into the
    folder. Files already recorded (same path, size and time) are skipped without being read again,
    so a restart over a full SD card costs one folder listing.

    Args:
        folders: Folders searched recursively.
        settle: Seconds a file must stay unchanged.
        exclude: A folder never entered (the daemon's own state folder, if inside a watched one).
        on_new: Called after new inputs were recorded (wakes the worker).
    """

    def __init__(
        self,
        folders: Sequence[Path],
        settle: float,
        exclude: Path | None = None,
        on_new: Callable[[], None] | None = None,
    ) -> None:
        self.folders = [Path(f) for f in folders]
        self.settle = float(settle)
        self.exclude = exclude
        self.on_new = on_new or (lambda: None)
        self._pending: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, unchanged since)
        self._recorded: dict[str, tuple[int, int]] = {}
        self._missing: set[Path] = set()
        self.failing: str | None = None  # why the last scan failed, until one succeeds

    def problems(self) -> list[str]:
        """What keeps photos from being found now, one line each (for /health); empty when all is well."""
        out = [f"watched folder {f} is not there (card removed or unmounted?)" for f in sorted(self._missing)]
        failing = self.failing
        if failing is not None:
            out.append(failing)
        return out

    def scan(self, queue: PhotoQueue, now: float) -> int:  # noqa: C901 - one pass: a folder's state, then each file's settle and record steps, in order
        """One pass over the folders; returns how many new inputs were recorded.

        Complete files are recorded RECORD_BATCH at a time, one transaction each: a card full of
        photos costs a few disk syncs, and the worker sees them together.
        """
        added = 0
        pending: dict[str, tuple[int, int, float]] = {}
        recorded: dict[str, tuple[int, int]] = {}
        batch: list[tuple[str, str, str, str, tuple[int, int]]] = []

        def record() -> int:
            new = 0
            for (_sha, _src, _name, path, _stat), (_item_id, created) in zip(batch, queue.add_many(batch)):
                new += created
                log.debug(
                    "queued %s"
                    if created
                    else "%s: same content as an input already queued; not queued again",
                    path,
                )
            batch.clear()
            if new:
                self.on_new()
            return new

        for folder in self.folders:
            if not folder.is_dir():  # an SD card pulled out: say so once, and wait for it
                if folder not in self._missing:
                    log.warning(
                        "watched folder %s is not there (card removed or unmounted?); waiting for it", folder
                    )
                    self._missing.add(folder)
                continue
            if folder in self._missing:
                log.info("watched folder %s is back", folder)
                self._missing.discard(folder)
            for path, st in _walk_images(folder, self.exclude):
                key = (st.st_size, st.st_mtime_ns)
                if self._recorded.get(path) == key:
                    recorded[path] = key
                    continue
                if queue.known_file(path, *key):
                    recorded[path] = key
                    continue
                size, mtime, since = self._pending.get(path, (-1, -1, now))
                if (size, mtime) != key:
                    since = now
                if (
                    st.st_size > 0
                    and now - since >= self.settle
                    and (self.settle == 0 or path in self._pending)
                ):
                    try:
                        digest = sha256_file(path)
                    except OSError as exc:
                        log.warning("cannot read %s: %s; trying again next scan", path, exc.strerror or exc)
                        pending[path] = (*key, since)
                        continue
                    batch.append((digest, "watch", path, path, key))
                    recorded[path] = key
                    if len(batch) >= RECORD_BATCH:
                        added += record()
                else:
                    pending[path] = (*key, since)
        if batch:
            added += record()
        # Only what is in the folders now is remembered: memory stays bounded by the folders' contents.
        self._pending, self._recorded = pending, recorded
        return added

    def run(self, queue_path: Path, stop: threading.Event, poll: float, clock: Callable[[], float]) -> None:
        """Scan every ``poll`` seconds until ``stop`` is set."""
        with PhotoQueue(queue_path) as queue:
            while not stop.is_set():
                try:
                    self.scan(queue, clock())
                    self.failing = None
                except Exception as exc:  # noqa: BLE001 - e.g. a full disk: logged whole, and the next scan tries again
                    said = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(
                        ": "
                    )
                    self.failing = f"scanning {', '.join(map(str, self.folders))} fails: {said}"
                    log.exception(
                        "scanning %s failed; trying again in %.0f s",
                        ", ".join(map(str, self.folders)),
                        max(poll, 10.0),
                    )
                    stop.wait(max(poll, 10.0))
                stop.wait(poll)


class VideoReader:
    """Records every ``stride``-th frame of a video file, stream or camera as a JPEG under ``frames_dir``.

    Frames of a file are named ``SOURCE#frame=N`` (N counts from 0); frames of a stream or camera
    ``SOURCE#t=TIME`` (UTC, when read), because a live source restarts its count on every reconnect.
    A frame whose content was seen before is not queued again. A video file is read once: how far it
    was read is kept in the queue, so a restart goes on where it stopped; while more than
    ``max_pending`` inputs wait, reading a file pauses (a file can wait, a live stream cannot, so
    streams and cameras are always read at their own pace and must be given a stride the device
    keeps up with). Streams and cameras reconnect with a growing pause (1 s to 30 s) when they drop.

    With ``telemetry``, what it returns right after a kept frame is grabbed (the vehicle's pose
    then) is recorded with the frame in the same transaction, so the frame is georeferenced from
    where the camera was when it saw it, however long it waits in the queue.

    With ``floor``, while the state folder's disk is below its floor a stream's or camera's frames
    are not kept (counted as skipped) and a file waits; a frame whose content is already in the
    queue is not written again (its copy may have been removed by the retention on purpose).

    Args:
        source: File path, URL, /dev/videoN or a camera index.
        stride: Keep every Nth frame.
        frames_dir: Where frames are stored (one file per distinct frame, named by its hash).
        tmp_dir: Same file system as frames_dir, for atomic writes.
        max_pending: Queue depth above which reading a file pauses.
        on_new: Called after each recorded frame (wakes the worker).
        telemetry: Called at each kept frame's grab; returns a JSON object to record with it.
        floor: The disk floor (a retention.DiskFloor), or None.
    """

    def __init__(
        self,
        source: str,
        stride: int,
        frames_dir: Path,
        tmp_dir: Path,
        max_pending: int = 32,
        on_new: Callable[[], None] | None = None,
        telemetry: Callable[[], dict] | None = None,
        floor: DiskFloor | None = None,
    ) -> None:
        if int(stride) < 1:
            raise ValueError(f"stride: expected an integer >= 1, found {stride!r}")
        self.source = source
        self.kind = video_kind(source)
        self.stride = int(stride)
        self.frames_dir, self.tmp_dir = frames_dir, tmp_dir
        self.max_pending = max_pending
        self.on_new = on_new or (lambda: None)
        self.telemetry = telemetry
        self.floor = floor

    def _open(self):
        import cv2

        if self.kind == "camera":
            target = int(self.source) if self.source.isdigit() else self.source
            backend = getattr(cv2, "CAP_V4L2", cv2.CAP_ANY) if os.name == "posix" else cv2.CAP_ANY
            return cv2.VideoCapture(target, backend)
        return cv2.VideoCapture(self.source)

    def run(self, queue_path: Path, stop: threading.Event) -> None:
        """Read frames until the file ends, or until ``stop`` for streams and cameras."""
        backoff = 1.0
        with PhotoQueue(queue_path) as queue:
            while not stop.is_set():
                cap = self._open()
                try:
                    if not cap.isOpened():
                        log.warning(
                            "video %s: cannot be opened%s",
                            self.source,
                            "" if self.kind == "file" else f"; trying again in {backoff:.0f} s",
                        )
                        if self.kind == "file":
                            return
                    else:
                        try:
                            frames = self._read(cap, queue, stop)
                        except Exception:  # noqa: BLE001 - e.g. a full disk: logged whole, then read again
                            log.exception(
                                "video %s: reading failed; trying again in %.0f s", self.source, backoff
                            )
                            stop.wait(backoff)
                            backoff = min(backoff * 2, 30.0)
                            continue
                        if self.kind == "file":
                            log.info("video %s: finished, %d frame(s) read", self.source, frames)
                            return
                        if frames:
                            backoff = 1.0
                        log.warning(
                            "video %s: stream ended or dropped; reconnecting in %.0f s", self.source, backoff
                        )
                finally:
                    cap.release()
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _read(self, cap, queue: PhotoQueue, stop: threading.Event) -> int:  # noqa: C901 - the frame loop: a file waits for room, a live source skips; both in one loop so they stay alike
        import cv2

        index = 0
        if self.kind == "file":
            done = queue.video_frames_read(self.source)
            while index < done and cap.grab():  # skip what an earlier run already queued
                index += 1
        read = 0
        while not stop.is_set():
            keep = index % self.stride == 0
            if self.kind == "file":
                while queue.depth() >= self.max_pending and not stop.is_set():
                    stop.wait(0.2)
                while (
                    keep and self.floor is not None and self.floor.short() is not None and not stop.is_set()
                ):
                    stop.wait(1.0)  # a file can wait for room; the floor logs the wait once
                if stop.is_set():
                    break
            if not cap.grab():
                break
            read += 1
            if keep and self.kind != "file" and self.floor is not None and self.floor.short() is not None:
                self.floor.skip()  # a live source cannot wait: this frame is not kept
                keep = False
            if keep:
                grabbed = (
                    self.telemetry() if self.telemetry is not None else None
                )  # before decoding: grab time
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
                if not ok:
                    log.warning("video %s: frame %d could not be decoded; skipped", self.source, index)
                else:
                    data = jpeg.tobytes()
                    digest = hashlib.sha256(data).hexdigest()
                    if not queue.known(digest):  # a repeated frame is the same input: nothing to write
                        self._record(queue, data, digest, index, grabbed)
            index += 1
            if self.kind == "file" and index % self.stride == 0:
                queue.set_video_frames_read(self.source, index)
        if self.kind == "file":
            queue.set_video_frames_read(self.source, index)
        return read

    def _record(self, queue: PhotoQueue, data: bytes, digest: str, index: int, grabbed: dict | None) -> None:
        path = self.frames_dir / f"{digest}.jpg"
        if not path.exists():
            write_atomic(path, data, self.tmp_dir, mode=0o600)  # the daemon's own copy, as uploads are
        name = (
            f"{self.source}#frame={index}"
            if self.kind == "file"
            else f"{self.source}#t={iso_utc(time.time())}"
        )
        _item_id, created = queue.add(digest, "video", name, path, telemetry=grabbed, size=len(data))
        if created:
            self.on_new()
        elif not queue.holds_copy(digest, path):  # the same content arrived another way meanwhile
            path.unlink(missing_ok=True)
