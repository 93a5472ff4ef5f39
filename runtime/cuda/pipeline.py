"""Keeping the GPU busy: batches two deep, and the next frame read on a CPU thread.

Neither function touches CUDA; the TensorRT backend supplies the steps. They are plain Python so that
their ordering can be tested anywhere.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def pipelined(count: int, enqueue: Callable[[int], None], collect: Callable[[int], T]) -> Iterator[T]:
    """Run count steps two deep: step k + 1 is enqueued before step k is collected.

    With ``enqueue`` putting a batch's preprocessing and inference on GPU streams (returning at once)
    and ``collect`` waiting for that batch's candidates, the GPU preprocesses batch k + 1 while it
    infers batch k, and infers batch k + 1 while the host decodes batch k. Two buffers suffice: step
    k + 2 reuses step k's, and is enqueued only after step k was collected.

    Order of calls: enqueue(0), enqueue(1), collect(0), enqueue(2), collect(1), ..., collect(count - 1).
    """
    if count <= 0:
        return
    enqueue(0)
    for k in range(count):
        if k + 1 < count:
            enqueue(k + 1)
        yield collect(k)


_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterable[T], load: Callable[[T], R], depth: int = 1) -> Iterator[tuple[T, R | None, Exception | None]]:
    """Load items on a worker thread, ``depth`` ahead of the caller, and yield them in order.

    For folders and video: while the caller detects on frame k, the worker decodes frame k + 1 (the
    JPEG decoder and OpenCV release the GIL, so this overlaps for real).

    Args:
        items: Paths, frame numbers, anything load accepts.
        load: Reads one item (e.g. edgetile.runtime.images.read_image).
        depth: Loaded items waiting at most; memory is (depth + 1) decoded frames.

    Yields:
        (item, loaded, None), or (item, None, error) when load raised an Exception: one bad file is
        reported by the caller and the rest still run. An error while iterating items itself, or a
        BaseException in load, ends the iteration and is raised in the caller.

    Closing the generator early (break, an exception in the caller) stops the worker and joins it.
    """
    if int(depth) < 1:
        raise ValueError(f"depth: expected at least 1, found {depth}")
    q: queue.Queue = queue.Queue(maxsize=int(depth))
    stop = threading.Event()

    def put(entry: object) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                try:
                    entry: object = (item, load(item), None)
                except Exception as exc:  # reported to the caller with its item, never dropped
                    entry = (item, None, exc)
                if not put(entry):
                    return
        except BaseException as exc:  # the iterable itself failed, or load raised a BaseException
            put(_Failed(exc))
            return
        put(_DONE)

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
    finally:
        stop.set()
        while worker.is_alive():
            try:
                q.get(timeout=0.05)  # unblock a worker waiting to put
            except queue.Empty:
                pass
            worker.join(timeout=0.05)
