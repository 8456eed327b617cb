"""The post-processing pool: the threads that clean maps on the host (OpenCV and NumPy release the GIL).

Sized from the cores the worker leaves free: the producer thread and `batching.decode_threads` decode, the
consumer thread post-processes and works as one of the pool's threads (`parallel.each`). Until a worker sizes it
(`size_for`), it takes up to 4 threads, as a library call from the trainer or a benchmark would want.

Threads: any thread may call `on_pool`; `size_for` is called once per worker start, from the thread that builds the
pipeline. A pool replaced by `size_for` finishes the work it was given.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from inspector.parallel import each

T = TypeVar("T")

_lock = threading.Lock()
_workers = 0
_pool: ThreadPoolExecutor | None = None


def cores() -> int:
    """CPU cores this process may run on (the affinity mask, as a container or `taskset` sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def workers_after_decode(decode_threads: int, available: int | None = None) -> int:
    """Threads for post-processing, the consumer included: the cores left once the producer and the decode threads
    have one each (at least 1)."""
    return max(1, (cores() if available is None else available) - 1 - decode_threads)


def _resize(workers: int) -> None:
    global _workers, _pool
    with _lock:
        if workers == _workers:
            return
        # The old pool is dropped, not shut down: a call that took it a moment ago may still submit to it; its
        # idle threads exit once it is garbage-collected (ThreadPoolExecutor's own weakref callback).
        _pool = ThreadPoolExecutor(max_workers=max(workers - 1, 1), thread_name_prefix="postprocess")
        _workers = workers


def size_for(decode_threads: int) -> int:
    """Size the pool for a worker with `decode_threads` decode threads; returns the thread count."""
    workers = workers_after_decode(decode_threads)
    _resize(workers)
    return workers


def workers() -> int:
    if not _workers:
        _resize(min(4, cores()))
    return _workers


def on_pool(fn: Callable[[Any], T], items: list[Any], threads: int | None = None) -> list[T]:
    """fn(item) for every item, results in order, on the post-processing pool: up to `threads` threads (default:
    the pool's size), the caller included. `fn` must not use the pool with more than one thread itself."""
    size = workers()
    return each(fn, items, _pool, min(size, size if threads is None else threads))


def for_each_map(fn: Callable[[int, int], T], n: int, c: int, threads: int | None = None) -> list[T]:
    """fn(frame, class) for every map, results in (frame, class) order (see on_pool)."""
    return on_pool(lambda m: fn(*m), [(i, k) for i in range(n) for k in range(c)], threads)
