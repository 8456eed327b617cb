"""In-memory twin of RedisStreams for unit tests and the offline bench: the same contract, no server.

One frames stream with one consumer group and one consumer: pending re-read once per recovery, delivery counts
with `isolate` / `poison`, fenced publish, dead letters with the same fields as Redis's, seq gaps confirmed by the
same rule as the Lua script (`redis_scripts.PUBLISH`), and acked frames dropped (frames_trim all_groups).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

from inspector.io.base import Entry, Gap, Outcome, Published, SourceState, redelivered
from inspector.io.redis_scripts import MAX_WAITING_SEQS
from inspector.protocol import dead_letter_fields


class SeqTracker:
    """Per-camera seq tracking, the Python twin of the Lua in PUBLISH (see redis_scripts' docstring), with the same
    MAX_WAITING_SEQS; tests/test_contract.py checks the two agree case by case and on seeded random streams."""

    def __init__(self, max_jump: int, max_waiting: int = MAX_WAITING_SEQS) -> None:
        self.max_jump, self.max_waiting = max_jump, max_waiting
        self.w: dict[str, int] = {}
        self.seen: dict[str, list[tuple[int, int]]] = {}  # camera -> [(seq, entry number)]

    def add(self, camera: str, seq: int, number: int) -> None:
        self.seen.setdefault(camera, []).append((seq, number))

    def advance(self, camera: str, first_pending: int | None) -> list[Gap]:
        """Move the camera's watermark as far as the rule allows; the gaps and resets it confirmed."""
        waiting = self.seen.setdefault(camera, [])
        waiting.sort()
        reports = []
        w = self.w.get(camera)

        def settled(n: int) -> bool:
            return first_pending is None or first_pending >= n

        while waiting:
            s, n = waiting[0]
            if w is None:
                if not settled(n):
                    break
                w = s - 1
            if s in (w, w + 1):
                w = max(w, s)
            elif s < w or s - w - 1 > self.max_jump:
                reports.append(Gap(camera, w, s, "reset"))
                w = s
            elif settled(n) or len(waiting) > self.max_waiting:
                reports.append(Gap(camera, w, s, "gap"))
                w = s
            else:
                break
            waiting.pop(0)
        if w is not None:
            self.w[camera] = w
        return reports


class MemoryStreams:
    """A frames stream with one consumer group, an events list and a dead-letter list."""

    name = "memory"
    heartbeat_every_s = 1.0

    def __init__(self, max_deliveries: int = 6, max_payload_bytes: int = 4_000_000, max_seq_jump: int = 100_000,
                 block_ms: int = 50) -> None:
        self.max_deliveries, self.max_payload_bytes = max_deliveries, max_payload_bytes
        self.block_ms = block_ms
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self.frames: dict[str, dict[bytes, bytes]] = {}  # entry id -> fields, in stream order; acked ones leave
        self.pending: dict[str, int] = {}  # id -> deliveries
        self.events: list[bytes] = []
        self.dead: list[dict[bytes, bytes]] = []
        self.stats: dict[str, float] = {}
        self.seq = SeqTracker(max_seq_jump)
        self.gaps: list[Gap] = []
        self._delivered = 0  # entry number of the last delivered entry (ids are "<number>-0")
        self._recovering = True
        self._cursor = 0

    @staticmethod
    def _number(entry_id: str) -> int:
        return int(entry_id.split("-")[0])

    def add(self, fields: dict[bytes, bytes]) -> str:
        with self._lock:
            entry_id = f"{next(self._ids)}-0"
            self.frames[entry_id] = fields
            self._lock.notify_all()
            return entry_id

    def recover(self) -> None:
        with self._lock:
            self._recovering, self._cursor = True, 0

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        with self._lock:
            if self._recovering:
                own = [i for i in self.pending if self._number(i) > self._cursor][:count]
                if own:
                    self._cursor = self._number(own[-1])
                    for entry_id in own:
                        self.pending[entry_id] += 1
                    return [redelivered(i, self.frames.get(i), self.pending[i], self.max_deliveries) for i in own]
                self._recovering, self._cursor = False, 0
            new = self._undelivered(count)
            if not new and block_ms:
                self._lock.wait(block_ms / 1000.0)
                new = self._undelivered(count)
            for entry_id in new:
                self.pending[entry_id] = 1
            if new:
                self._delivered = self._number(new[-1])
            return [Entry(i, self.frames[i], 1) for i in new]

    def _undelivered(self, count: int) -> list[str]:
        return [i for i in self.frames if self._number(i) > self._delivered][:count]

    def publish(self, outcomes: Sequence[Outcome]) -> Published:
        with self._lock:
            done = [out.entry.id in self.pending for out in outcomes]
            for out, ok in zip(outcomes, done, strict=True):
                if not ok:
                    continue
                del self.pending[out.entry.id]
                self.events.append(out.event)
                if out.dead_letter_error is not None:
                    flat = dead_letter_fields(out.entry.fields, out.dead_letter_error, out.entry.id, self.name,
                                              out.entry.deliveries, self.max_payload_bytes)
                    self.dead.append(dict(zip(flat[0::2], flat[1::2], strict=True)))
            first = min((self._number(i) for i in self.pending), default=None)
            cameras = {}
            for out, ok in zip(outcomes, done, strict=True):
                if ok and out.camera and out.seq >= 0:
                    self.seq.add(out.camera, out.seq, self._number(out.entry.id))
                    cameras[out.camera] = None
            gaps = [gap for camera in cameras for gap in self.seq.advance(camera, first)]
            for out, ok in zip(outcomes, done, strict=True):
                if ok:
                    self.frames.pop(out.entry.id, None)  # acked by the only group: trimmed
            self.gaps += gaps
            return Published(done, gaps)

    def heartbeat(self) -> None:
        pass

    def probe(self) -> SourceState:
        with self._lock:
            lag = sum(1 for i in self.frames if self._number(i) > self._delivered)
            return SourceState(True, True, lag, len(self.pending), len(self.frames))

    def report(self, stats: dict[str, float]) -> None:
        self.stats = dict(stats)

    def close(self) -> None:
        pass
