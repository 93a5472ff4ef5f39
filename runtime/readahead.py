"""Reading the next photo on a CPU thread while the current one is detected.

For folders, and for the daemon's queue of photos and video frames: decoding a 4000x3000 JPEG takes
tens of milliseconds, which a GPU pipeline would otherwise wait for between photos. The JPEG decoder
and OpenCV release the GIL, so the overlap is real.

Memory stays bounded: the caller's photo plus ``depth`` photos read ahead, and only photos whose
header says they decode into at most ``budget`` bytes are read ahead. A larger one (a 20000x15000
mosaic takes 858 MB) is read by the caller when its turn comes, after it has let go of the one before,
so a huge photo is never held twice.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

from .images import MAX_PIXELS, read_header, read_image

T = TypeVar("T")
R = TypeVar("R")

READ_AHEAD_MB = 256  # covers 4000x3000 photos (36 MB) and 8K frames (100 MB), not gigapixel mosaics


def decoded_bytes(path: str | os.PathLike) -> int | None:
    """Memory that reading this photo takes at its peak, from the file's header alone.

    JPEG and PNG headers are parsed (a few hundred bytes read); other formats and unreadable headers
    give None: unknown, so never read ahead.
    """
    try:
        header = read_header(path)
    except OSError:
        return None
    if header is None:
        return None
    if header.format == "png":
        # cv2 decodes up to 4 channels of 8 or 16 bits, then converts to 8-bit BGR
        return header.width * header.height * (4 * (2 if header.bit_depth == 16 else 1) + 3)
    return header.width * header.height * 3


def read_ahead_bytes(mb: int | None, infers_on_cpu: bool) -> int:
    """The read-ahead budget in bytes: ``mb`` MiB as asked, or by default READ_AHEAD_MB unless the model
    runs on the CPU.

    On the CPU, ONNX Runtime keeps every core busy and its parallel operators wait for their slowest
    thread, so a decode beside it costs more than it hides (measured in benchmarks/RESULTS.md: 5.7%
    slower on 2 cores). With the model on a GPU the cores are idle while it runs, and the decode is free.
    """
    if mb is None:
        return 0 if infers_on_cpu else READ_AHEAD_MB * 2**20
    if int(mb) < 0:
        raise ValueError(f"read-ahead: expected 0 or more MiB, found {mb}")
    return int(mb) * 2**20


def read_within(
    budget_bytes: int, max_pixels: int | None = MAX_PIXELS
) -> Callable[[str | os.PathLike], tuple[np.ndarray | None, float]]:
    """A loader for :func:`prefetch`: reads a photo when it decodes into at most ``budget_bytes``.

    The loader returns (image, milliseconds spent reading), or (None, 0.0) for a photo that is too
    large, or whose size its header does not tell: the caller reads that one itself, in turn.
    ``max_pixels`` is :func:`..images.read_image`'s limit.
    """
    if int(budget_bytes) < 0:
        raise ValueError(f"budget_bytes: expected 0 or more, found {budget_bytes}")

    def load(path: str | os.PathLike) -> tuple[np.ndarray | None, float]:
        need = decoded_bytes(path) if budget_bytes else None
        if need is None or need > budget_bytes:
            return None, 0.0
        t0 = time.perf_counter()
        image = read_image(path, max_pixels)
        return image, (time.perf_counter() - t0) * 1000

    return load


def read_in_turn(
    path: str | os.PathLike, ahead: tuple[np.ndarray | None, float], max_pixels: int | None = MAX_PIXELS
) -> tuple[np.ndarray, float]:
    """The photo read ahead by a :func:`read_within` loader, or read now when it was left for its turn."""
    image, ms = ahead
    if image is not None:
        return image, ms
    t0 = time.perf_counter()
    image = read_image(path, max_pixels)
    return image, (time.perf_counter() - t0) * 1000


_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(
    items: Iterable[T], load: Callable[[T], R], depth: int = 1
) -> Iterator[tuple[T, R | None, Exception | None]]:
    """Load items on a worker thread, ``depth`` ahead of the caller, and yield them in order.

    At most ``depth + 1`` loaded items exist at once: the one the caller holds and ``depth`` loaded
    (or being loaded) ahead, provided the caller lets go of an item before asking for the next.

    Args:
        items: Paths, queue entries, anything load accepts.
        load: Loads one item, e.g. a :func:`read_within` loader.
        depth: Items loaded ahead of the caller at most.

    Yields:
        (item, loaded, None), or (item, None, error) when load raised an Exception: one bad file is
        reported by the caller and the rest still run. An error while iterating items itself, or a
        BaseException in load, ends the iteration and is raised in the caller.

    Closing the generator early (break, an exception in the caller) stops the worker and joins it.
    """
    if int(depth) < 1:
        raise ValueError(f"depth: expected at least 1, found {depth}")
    slots = threading.Semaphore(int(depth) + 1)  # the caller's item and the ones loaded ahead
    q: queue.Queue = queue.Queue()  # bounded by the slots
    stop = threading.Event()

    def take_slot() -> bool:
        while not stop.is_set():
            if slots.acquire(timeout=0.05):
                return True
        return False

    def work() -> None:
        try:
            for item in items:
                if not take_slot():
                    return
                try:
                    entry: object = (item, load(item), None)
                except Exception as exc:  # reported to the caller with its item, never dropped
                    entry = (item, None, exc)
                q.put(entry)
        except BaseException as exc:  # the iterable itself failed, or load raised a BaseException
            q.put(_Failed(exc))
            return
        q.put(_DONE)

    worker = threading.Thread(target=work, name="edgetile-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            entry = q.get()
            if entry is _DONE:
                return
            if isinstance(entry, _Failed):
                raise entry.exc
            yield entry
            entry = None  # the caller is done with it: hold no reference while the worker loads the next
            slots.release()
    finally:
        stop.set()
        worker.join()
