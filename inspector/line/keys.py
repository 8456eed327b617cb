"""Every Redis key the line service uses, derived here from the `coils:` config section, or, where it leaves a key
unset, from the line's layout (`inspector/io/keys.py`: `inspect:{<line>}:coils`, `...:coil-ends`, `...:line:*`).

Immutable; built once per service and read by any thread. Per-coil keys are the state prefix plus the coil id, so
a prefix carrying the line's hash tag keeps every key of a line in one Redis Cluster slot (the prefix's `{...}`
comes first, so a coil id with braces in it cannot move its keys).
"""

from __future__ import annotations

from dataclasses import dataclass

from inspector.config import Config


@dataclass(frozen=True)
class LineKeys:
    events: str  # input stream: the worker's events
    coil_ends: str  # input stream: end-of-coil entries
    coils: str  # output stream: one report entry per coil
    prefix: str  # of everything else

    @classmethod
    def from_config(cls, cfg: Config) -> LineKeys:
        c, line = cfg.coils, cfg.redis.keys()
        return cls(c.events_key or line.events, c.coil_ends_key or line.named("coil-ends"),
                   c.coils_key or line.named("coils"), c.state_prefix or line.named("line"))

    @property
    def open(self) -> str:
        """Sorted set: coils not yet reported, scored by their last event's time (ms)."""
        return f"{self.prefix}:open"

    @property
    def cameras(self) -> str:
        """Hash: camera -> '<entry id> <coil>' of its newest event (has it moved on to another coil?)."""
        return f"{self.prefix}:cameras"

    @property
    def unwritten(self) -> str:
        """Set: coils reported whose files are not yet confirmed written."""
        return f"{self.prefix}:unwritten"

    def meta(self, coil: str) -> str:
        """Hash: a coil's counters and status (open, closed, done); kept as a tombstone once done."""
        return f"{self.prefix}:meta:{coil}"

    def log(self, coil: str) -> str:
        """String: a coil's records, appended by the fold script (records.py says the format)."""
        return f"{self.prefix}:log:{coil}"

    def alive(self, consumer: str) -> str:
        return f"{self.prefix}:alive:{consumer}"

    def alive_prefix(self) -> str:
        return f"{self.prefix}:alive:"

    def stats(self, consumer: str) -> str:
        return f"{self.prefix}:stats:{consumer}"
