"""Keeping the state folder within bounds: a budget for the daemon's own copies, and a floor of free disk.

The daemon keeps a copy of every upload (``STATE/uploads``) and of every kept video frame
(``STATE/frames``) so that ``GET /images/{id}`` can show it. On a Jetson's 32-64 GB eMMC a camera
read at a stride of 15 fills the disk in hours, and then every write fails. So:

* **Budget** (``--keep-inputs-gb``, ``--keep-days``): when the copies take more than the budget, or a
  result is older than the age limit, the copies of finished inputs (done or parked) are deleted,
  oldest result first. A queued or running input is never chosen (it still has to be read), a
  watched photo is never chosen (it is the user's file, not a copy), and nothing outside
  ``STATE/uploads`` and ``STATE/frames`` is ever deleted. Detections stay in the database;
  ``GET /images/{id}`` answers 410 for a removed copy.
* **Floor** (``--min-free-mb``): while the file system of STATE has less free space than this, live
  video frames are skipped, a video file waits, uploads are refused with 507, and the retention
  deletes finished copies (oldest first, whatever the budget) to get back above it. Each change is
  logged once.

What the copies take is kept in the queue database (``items.bytes``, written with each input), so
a sweep costs one indexed query and a ``statvfs``, not a walk of the folders. A sweep runs after
each commit of the worker (at most every ``MIN_GAP_S``) and every ``PERIOD_S`` (for the age limit
and for space that others free or take).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from ..files import fsync_dir
from .store import PhotoQueue

log = logging.getLogger("edgetile.serve")

GIB = 1 << 30
MIB = 1 << 20
PERIOD_S = 10.0  # sweeps without a commit: the age limit and other programs' use of the disk
MIN_GAP_S = 1.0  # at most one sweep a second however fast photos are committed


def human_bytes(n: float) -> str:
    """Bytes for a log line: 512 B, 3.4 MiB, 1.95 GiB."""
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    if abs(n) >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{int(n)} B"


class DiskFloor:
    """The free space under the state folder below which the daemon stops taking in new copies.

    Shared by the video readers, the upload route and the retention (one instance per daemon), so
    that going below the floor and coming back are each logged once.

    Args:
        path: The state folder (its file system is measured).
        min_free_bytes: The floor; 0 turns the guard off.
    """

    def __init__(self, path: Path, min_free_bytes: int) -> None:
        if int(min_free_bytes) < 0:
            raise ValueError(f"min_free_bytes: expected 0 or more bytes, found {min_free_bytes!r}")
        self.path = Path(path)
        self.min_free_bytes = int(min_free_bytes)
        self._lock = threading.Lock()
        self._low = False
        self._skipped = 0

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer can still use on the state folder's file system."""
        return shutil.disk_usage(self.path).free

    def short(self) -> int | None:
        """The free bytes when they are below the floor (None when there is enough, or no floor)."""
        if self.min_free_bytes <= 0:
            return None
        free = self.free_bytes()
        low = free < self.min_free_bytes
        with self._lock:
            changed, self._low = low != self._low, low
            skipped = self._skipped
        if changed and low:
            log.warning(
                "%s has %s free, below --min-free-mb %g: live video frames are skipped, video files wait "
                "and uploads are refused (507) until there is room; finished inputs' copies are removed, "
                "oldest first, to make it",
                self.path,
                human_bytes(free),
                self.min_free_bytes / MIB,
            )
        elif changed:
            log.info(
                "%s has %s free again: video frames are kept and uploads accepted (%d live frame(s) "
                "skipped so far this run)",
                self.path,
                human_bytes(free),
                skipped,
            )
        return free if low else None

    def skip(self) -> None:
        """Count a live video frame not kept for lack of space."""
        with self._lock:
            self._skipped += 1

    @property
    def skipped(self) -> int:
        """Live video frames not kept for lack of space, this run."""
        with self._lock:
            return self._skipped


class Retention:
    """Deletes the copies of finished inputs past the budget, the age limit or the disk floor.

    Args:
        folders: The only folders whose files may be deleted (STATE/uploads, STATE/frames).
        budget_bytes: Most bytes the copies may take; None for no budget.
        keep_days: Copies of results older than this many days are deleted; None for no age limit.
        floor: The disk floor; while below it, finished copies are deleted to climb back above it.
    """

    def __init__(
        self, folders: tuple[Path, ...], budget_bytes: int | None, keep_days: float | None, floor: DiskFloor
    ) -> None:
        if budget_bytes is not None and int(budget_bytes) < 0:
            raise ValueError(f"budget_bytes: expected 0 or more bytes or None, found {budget_bytes!r}")
        if keep_days is not None and not keep_days >= 0:
            raise ValueError(f"keep_days: expected 0 or more days or None, found {keep_days!r}")
        self.folders = tuple(Path(f) for f in folders)
        self.budget_bytes = None if budget_bytes is None else int(budget_bytes)
        self.keep_days = keep_days
        self.floor = floor
        self.wake = threading.Event()
        self._warned_outside = False

    def sweep(self, queue: PhotoQueue, now: float) -> tuple[int, int]:
        """Delete what the budget, the age limit and the floor ask for; returns (files, bytes) removed."""
        held_files, held_bytes = queue.held_copies()
        excess, reasons = 0, []
        if self.budget_bytes is not None and held_bytes > self.budget_bytes:
            excess = held_bytes - self.budget_bytes
            reasons.append(f"--keep-inputs-gb {self.budget_bytes / GIB:g}")
        free = self.floor.short()
        if free is not None:
            excess = max(excess, self.floor.min_free_bytes - free)
            reasons.append(f"--min-free-mb {self.floor.min_free_bytes / MIB:g}")
        before = None if self.keep_days is None else now - self.keep_days * 86400.0
        if excess <= 0 and before is None:
            return 0, 0
        files = freed = 0
        while True:
            f, b = queue.remove_copies(excess - freed, before, self._remove)
            files, freed = files + f, freed + b
            if f == 0:
                break
        if files:
            if before is not None:
                reasons.append(f"--keep-days {self.keep_days:g}")
            log.info(
                "retention: removed the copies of %d finished input(s), %s (%s); copies kept: %d file(s), %s",
                files,
                human_bytes(freed),
                ", ".join(reasons),
                held_files - files,
                human_bytes(held_bytes - freed),
            )
        return files, freed

    def _remove(self, paths: list[Path]) -> list[bool]:
        gone, touched = [], set()
        outside = 0
        for p in paths:
            if p.parent not in self.folders:  # e.g. a state folder moved since: never delete elsewhere
                outside += 1
                gone.append(False)
                continue
            try:
                p.unlink()
                touched.add(p.parent)
                gone.append(True)
            except FileNotFoundError:
                gone.append(True)  # already gone: stop counting it
            except OSError as exc:
                log.warning("retention: cannot delete %s: %s", p, exc.strerror or exc)
                gone.append(False)
        if outside and not self._warned_outside:
            self._warned_outside = True
            log.warning(
                "retention: %d recorded copy(ies) are not in %s (was the state folder moved?); they are "
                "not deleted and stay counted (said once)",
                outside,
                " or ".join(map(str, self.folders)),
            )
        for d in touched:  # the deletions are on disk before the queue says so
            fsync_dir(d)
        return gone

    def run(self, queue_path: Path, stop: threading.Event) -> None:
        """Sweep after each wake-up (the worker's commits) and every PERIOD_S, until ``stop``."""
        with PhotoQueue(queue_path) as queue:
            while not stop.is_set():
                try:
                    self.sweep(queue, time.time())
                except Exception:  # noqa: BLE001 - e.g. a busy or full disk: logged whole, tried again later
                    log.exception("retention: the sweep failed; trying again in %.0f s", PERIOD_S)
                if stop.wait(MIN_GAP_S):
                    break
                self.wake.wait(PERIOD_S - MIN_GAP_S)
                self.wake.clear()
