"""Where frames come from and events go: Redis streams, or an in-memory twin with the same interface."""

from inspector.io.base import Entry, EventSink, FrameSource, Gap, Outcome, Published, SourceState

__all__ = ["Entry", "EventSink", "FrameSource", "Gap", "Outcome", "Published", "SourceState"]
