"""The seams of the worker: a FrameSource hands out entries, an EventSink publishes one outcome per entry.

Both Redis (`redis_streams.RedisStreams`) and the in-memory twin (`memory.MemoryStreams`) implement both, and
one contract test runs the same cases against the two. Contract:
- an entry read stays pending until `publish` acks it together with its event; publish is fenced, so an entry
  that is no longer pending for this consumer (claimed by another, or already acked) is refused and no second
  event is written;
- the source decides what a redelivered entry means: past its delivery limit it carries `poison` (publish it as a
  rejected event and dead letter), just before that it carries `isolate` (process it alone, so a frame that
  crashes the worker cannot take good frames down with it);
- publish also reports the sequence gaps it confirmed, exactly once across every worker of the group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Entry:
    """One frames-stream entry as delivered to this consumer."""

    id: str
    fields: dict[bytes, bytes] | None  # None when the entry was deleted from the stream while pending
    deliveries: int = 1
    isolate: bool = False  # redelivered often: process it in a batch of its own
    poison: str | None = None  # past the delivery limit: reject it with this error, do not process it


def redelivered(entry_id: str, fields: dict[bytes, bytes] | None, deliveries: int, limit: int) -> Entry:
    """An entry as the delivery count makes it: its last two tries before `limit` alone, then poison."""
    poison = None
    if deliveries > limit:
        poison = (f"delivered {deliveries} times without an event (redis.max_deliveries {limit}): it crashed or "
                  "stalled the worker each time, the last tries alone; moved to dead letters")
    return Entry(entry_id, fields, deliveries, isolate=deliveries > 1 and deliveries > limit - 2, poison=poison)


@dataclass(frozen=True)
class Outcome:
    """What to publish for one entry: its packed event, the dead-letter error if any, and the camera and seq it
    carried (for gap tracking; camera "" when unknown)."""

    entry: Entry
    event: bytes
    dead_letter_error: str | None = None
    camera: str = ""
    seq: int = -1


@dataclass(frozen=True)
class Gap:
    """Frames of `camera` that never reached the stream: seq `after` was followed by seq `before`."""

    camera: str
    after: int
    before: int
    kind: str = "gap"  # gap | reset (seq went back, or jumped further than camera.max_seq_jump)

    @property
    def missing(self) -> int:
        return self.before - self.after - 1 if self.kind == "gap" else 0


@dataclass
class Published:
    """The answer to one publish: which outcomes were written (False: fenced out) and the gaps confirmed."""

    done: list[bool]
    gaps: list[Gap] = field(default_factory=list)


@dataclass(frozen=True)
class SourceState:
    """What the supervisor samples for metrics and /readyz."""

    reachable: bool
    group_exists: bool = False
    lag: int | None = None  # entries not yet delivered to the group (Redis 7: XINFO GROUPS lag)
    pending: int | None = None  # delivered to the group, not yet acked
    length: int | None = None  # entries in the frames stream
    error: str | None = None


class FrameSource(Protocol):
    name: str  # this consumer's name, for logs
    block_ms: int  # how long an idle read waits for a frame
    heartbeat_every_s: float  # how often `heartbeat()` must be called

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """Up to `count` entries: own pending ones first (once per start or reconnect), then dead consumers'
        claimed ones, then new ones. block_ms None: do not block. Raises SourceUnavailable while the source is
        unreachable, SourceRefused when it refuses for good (wrong password, wrong key type)."""

    def recover(self) -> None:
        """Re-read this consumer's pending entries before new ones (after a connection loss)."""

    def heartbeat(self) -> None:
        """Say this consumer is alive; one that stops saying so has its frames claimed by the others."""

    def probe(self) -> SourceState:
        """Reachability, group, lag and pending count; never raises."""

    def close(self) -> None: ...


class EventSink(Protocol):
    def publish(self, outcomes: Sequence[Outcome]) -> Published:
        """Publish each event and ack its entry atomically, all of a batch or none of it."""

    def report(self, stats: dict[str, float]) -> None:
        """Expose counters to operators (a Redis hash that expires when the worker is gone); best effort."""
