"""Work shared by the calling thread and a pool, item by item: OpenCV and NumPy release the GIL, so decoding
frames and cleaning maps scale with cores.

The calling thread works too, and every thread takes the next item when it is free: a pool thread that wakes
late (a halted vCPU after inference) costs no idle time. Handing out one share per thread instead left the
caller waiting for the slowest share.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def each(fn: Callable[[T], R], items: Sequence[T], pool: ThreadPoolExecutor | None, workers: int) -> list[R]:
    """[fn(item) for item in items] on up to `workers` threads (the caller and workers - 1 from `pool`).

    An exception from any item is raised here, after every thread has stopped. `fn` must not call `each` on
    the same pool itself: nested waits on a full pool could deadlock."""
    workers = max(1, min(len(items), workers))
    if workers == 1 or pool is None:
        return [fn(item) for item in items]
    results: list[R] = [None] * len(items)  # type: ignore[list-item]
    order = iter(range(len(items)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                j = next(order, None)
            if j is None:
                return
            results[j] = fn(items[j])

    futures = [pool.submit(work) for _ in range(workers - 1)]
    try:
        work()
    finally:
        wait(futures)
    for future in futures:
        future.result()  # an item that failed on the pool raises here
    return results
