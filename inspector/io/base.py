"""The seams of the worker: a FrameSource hands out entries, an EventSink publishes one outcome per entry.

Both Redis (`redis_streams.RedisStreams`) and the in-memory twin (`memory.MemoryStreams`) implement both.
Contract: an entry read stays pending until `publish` acks it together with its event; publish is fenced, so
an entry that is no longer pending for this consumer (claimed by another, or already acked) is refused and
no second event is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Entry:
    """One frames-stream entry as delivered to this consumer."""

    id: str
    fields: dict[bytes, bytes] | None  # None when the entry was deleted from the stream while pending
    deliveries: int = 1


@dataclass(frozen=True)
class Outcome:
    """What to publish for one entry: its packed event, and the error if it goes to dead letters too."""

    entry: Entry
    event: bytes
    dead_letter_error: str | None = None


class FrameSource(Protocol):
    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """Up to `count` entries: own pending ones first (after start or reconnect), then new ones.

        block_ms None: do not block. Raises SourceError when the source is unreachable."""

    def recover(self) -> None:
        """Re-read this consumer's pending entries before new ones (after a connection loss)."""


class EventSink(Protocol):
    def publish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Publish each event and ack its entry atomically; False where the fence refused it."""

    def report(self, stats: dict[str, float]) -> None:
        """Expose counters to operators (a Redis hash); best effort."""
