"""Size-or-deadline batching: up to `size` entries, or whatever arrived `max_wait_ms` after the first one.

No torch and no Redis here: `read(count, block_ms)` is injected (a FrameSource.read), and so is the clock,
so tests drive it deterministically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from inspector.io.base import Entry

T = TypeVar("T")


class Batcher:
    def __init__(self, size: int, max_wait_ms: float, idle_block_ms: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.max_wait_s = max_wait_ms / 1000.0
        self.idle_block_ms = idle_block_ms
        self.clock = clock

    def collect(self, read: Callable[[int, int | None], list[T]]) -> list[T]:
        """One batch; empty when nothing arrived within `idle_block_ms` (the source is idle).

        The first read blocks up to idle_block_ms; once a frame is in hand the batch closes at `size` or when
        the deadline passes, so a lone frame waits at most max_wait_ms.
        """
        batch = read(self.size, self.idle_block_ms)
        if not batch:
            return batch
        deadline = self.clock() + self.max_wait_s
        while len(batch) < self.size:
            remaining_ms = int((deadline - self.clock()) * 1000)
            if remaining_ms < 1:
                break
            more = read(self.size - len(batch), remaining_ms)
            if not more:  # the blocking read waited out the deadline
                break
            batch.extend(more)
        return batch


def split_isolated(entries: list[Entry]) -> list[list[Entry]]:
    """The batch as the engine sees it: entries marked `isolate` each alone, the rest together, in order."""
    groups: list[list[Entry]] = []
    rest: list[Entry] = []
    for entry in entries:
        if entry.isolate and entry.poison is None:
            groups.append([entry])
        else:
            rest.append(entry)
    return ([rest] if rest else []) + groups
