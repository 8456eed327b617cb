"""In-memory twin of RedisStreams for unit tests and the offline bench: same contract, no server."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

from inspector.io.base import Entry, Outcome


class MemoryStreams:
    """A frames stream with one consumer group, an events list and a dead-letter list."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self.frames: list[tuple[str, dict[bytes, bytes]]] = []
        self.pending: dict[str, int] = {}  # id -> deliveries
        self.events: list[bytes] = []
        self.dead: list[dict[bytes, bytes]] = []
        self.stats: dict[str, float] = {}
        self._next = 0  # index of the first never-delivered frame
        self._recovering = True

    def add(self, fields: dict[bytes, bytes]) -> str:
        with self._lock:
            entry_id = f"{next(self._ids)}-0"
            self.frames.append((entry_id, fields))
            self._lock.notify_all()
            return entry_id

    def recover(self) -> None:
        with self._lock:
            self._recovering = True

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        with self._lock:
            if self._recovering:
                own = [(i, f) for i, f in self.frames if i in self.pending][:count]
                if own:
                    for entry_id, _ in own:
                        self.pending[entry_id] += 1
                    return [Entry(i, f, self.pending[i]) for i, f in own]
                self._recovering = False
            if self._next >= len(self.frames) and block_ms:
                self._lock.wait(block_ms / 1000.0)
            new = self.frames[self._next:self._next + count]
            self._next += len(new)
            for entry_id, _ in new:
                self.pending[entry_id] = 1
            return [Entry(i, f, 1) for i, f in new]

    def publish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        done = []
        with self._lock:
            for out in outcomes:
                fenced = self.pending.pop(out.entry.id, None) is not None
                if fenced:
                    self.events.append(out.event)
                    if out.dead_letter_error is not None:
                        self.dead.append({**(out.entry.fields or {}), b"error": out.dead_letter_error.encode()})
                done.append(fenced)
        return done

    def report(self, stats: dict[str, float]) -> None:
        self.stats = dict(stats)
