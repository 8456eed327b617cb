"""Per-thread scratch arrays for the hot path.

Every map the worker post-processes needs a few frame-sized temporaries. Fresh ones cost more than the work:
after inference has freed its own large buffers the allocator hands their pages back to the kernel, and each
new temporary faults its pages in again (a third of the post-processing time on the 2-core VM). A thread
keeps one buffer per name and reuses it while the shape and type stay the same.
"""

from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """This thread's buffer `name`, of exactly `shape` and `dtype`; its contents are whatever was left there.

    Never return one to a caller that outlives the next use of the same name in this thread."""
    buffers: dict[str, np.ndarray] = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = buffers[name] = np.empty(shape, dtype=dtype)
    return buf
