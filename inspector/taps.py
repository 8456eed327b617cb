"""Taps: what watches finished frames beside the event path (capture for retraining, evidence crops, operator
previews) without being part of it.

The pipeline owns its list of taps. `Tap.finished` is called from the consumer thread once a batch's events are
published and acked, with the records whose events went out, so a tap can never delay, change or lose an event: it
must return within microseconds (copy what it needs and hand it to a thread of its own through a bounded queue,
dropping and counting when that queue is full). An exception from a tap is logged (rate-limited) and counted in
`tap_errors`, never raised into the pipeline. `close` is called once, from the thread that closes the pipeline.

A tap that sets `wants_scores` gets, on each staged record, `scores`: per class, the presence probability (or the
frame's max pixel probability where the engine has no presence head) and the max pixel probability, computed on
the engine's device in the post-processing stage (one reduction per batch, a few microseconds per frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from inspector.pipeline import FrameRecord
    from inspector.serving import ActiveEngine


class Tap(Protocol):
    wants_scores: bool

    def finished(self, records: Sequence[FrameRecord], engine: ActiveEngine) -> None:
        """The records of one batch whose events were published (rejected ones included: `record.error` is set)."""

    def close(self) -> None:
        """Flush what is queued within a bounded time and stop the tap's own thread."""
