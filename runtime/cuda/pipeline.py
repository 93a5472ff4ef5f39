"""Keeping the GPU busy: batches two deep.

The function touches no CUDA; the TensorRT backend supplies the steps. It is plain Python so that its
ordering can be tested anywhere. The next photo is read on a CPU thread by
:func:`edgetile.runtime.readahead.prefetch`, which detect and the daemon use on every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


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
