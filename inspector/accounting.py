"""What the worker counts and says about its batches: outcomes -> `Stats` (and through it the Prometheus series)
and the log lines that go with them, rate-limited so a broken camera or a long outage cannot flood the journal.

One owner, one lock. `Accounting` holds the run's `Stats` and the table of when each kind of rate-limited line was
last written (`_logged`); both are read and written under `_lock`, so every thread may call it:

    producer    timed("read" / "decode" / "stage"), inferred (CPU engines), retrying("read", ...)
    consumer    inferred (CUDA engines), timed("postprocess" / "publish"), batch, tap_failed, retrying("publish")
    loader      engine_refused;  producer (run) or caller (step): engine_swapped
    supervisor  stats.snapshot() / line() for the report (Stats has its own lock for its counters)

`restart()` gives the worker a fresh `Stats` between runs (bench times its runs from zero); it is the only way the
object is replaced, and the worker refuses it while running.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from inspector.io import Outcome, Published
from inspector.metrics import Metrics
from inspector.stats import Stats

if TYPE_CHECKING:
    from inspector.pipeline import FrameRecord
    from inspector.serving import ActiveEngine

log = logging.getLogger(__name__)

RETRY_LOG_EVERY_S = 30.0  # while Redis stays away: the first failure, then one line per this many seconds


class Accounting:
    def __init__(self, name: str, max_clock_skew_s: float, stats: Stats | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.max_clock_skew_s = max_clock_skew_s
        self._lock = threading.Lock()
        self._stats = stats or Stats()
        self._logged: dict[str, float] = {}  # kind of log line -> when it was last written (clock)
        self._clock = clock

    @property
    def stats(self) -> Stats:
        with self._lock:
            return self._stats

    @property
    def metrics(self) -> Metrics | None:
        return self.stats.metrics

    def restart(self, metrics: Metrics | None = None) -> Stats:
        """A fresh Stats (counters, timings, latencies from zero) with `metrics`; returns it."""
        stats = Stats(metrics=metrics)
        with self._lock:
            self._stats = stats
        return stats

    def due(self, kind: str, every_s: float = 1.0) -> bool:
        """True at most once every `every_s` per kind of log line."""
        with self._lock:
            now = self._clock()
            if now - self._logged.get(kind, -every_s) < every_s:
                return False
            self._logged[kind] = now
            return True

    # -- stage timings -----------------------------------------------------------------------------------
    def timed(self, stage: str, seconds: float) -> None:
        self.stats.time(stage, seconds)

    def inferred(self, frames: int, seconds: float) -> None:
        self.stats.inferred(frames, seconds)

    # -- a published batch -------------------------------------------------------------------------------
    def batch(self, records: Sequence[FrameRecord], outcomes: Sequence[Outcome], result: Published, model_id: str,
              now: float) -> None:
        """One published batch: counts, defects, per-engine rates, latencies, seq gaps and resets, fenced-out
        events; `result.done[i]` says whether outcome i (of record i) went out."""
        stats = self.stats
        done = result.done
        records = [r for r, ok in zip(records, done, strict=True) if ok]
        rejected = [r for r in records if r.error is not None]
        for r in rejected:
            log.debug("%s: frame %s rejected: %s", self.name, r.entry.id, r.error)
        stats.add(frames=len(records), ok=len(records) - len(rejected), rejected=len(rejected),
                  dead_lettered=len(rejected), batches=1, fenced_out=len(done) - len(records),
                  event_bytes=sum(len(o.event) for o, ok in zip(outcomes, done, strict=True) if ok))
        stats.defects([d.class_id for r in records for d in r.defects])
        ok = [r for r in records if r.error is None]
        stats.inspected(model_id, len(ok), collections.Counter(c for r in ok for c in {d.class_id for d in r.defects}))
        skew = self.max_clock_skew_s
        implausible = 0
        for r in records:
            if r.error is None and r.message is not None:
                if abs(now - r.message.ts) <= skew:
                    stats.published(r.message.ts, now)
                else:
                    implausible += 1
        if implausible:
            stats.add(implausible_ts=implausible)
            log.debug("%s: %d frame(s) with a capture time over %g s from this clock: not in latency figures",
                      self.name, implausible, skew)
        gaps = [g for g in result.gaps if g.kind == "gap"]
        resets = [g for g in result.gaps if g.kind == "reset"]
        stats.add(seq_gaps=sum(g.missing for g in gaps), seq_resets=len(resets))
        for g in gaps[:1] if gaps and self.due("gap") else []:  # a broken camera must not flood the journal
            log.warning("%s: camera %s: %d frame(s) missing between seq %d and %d (never reached the stream; "
                        "more lines like this at most once a second, all counted in seq_gaps)", self.name, g.camera,
                        g.missing, g.after, g.before)
        for g in resets[:1] if resets and self.due("reset") else []:
            log.warning("%s: camera %s: seq went from %d to %d (camera restart or implausible jump): not a gap "
                        "(at most once a second, all counted in seq_resets)", self.name, g.camera, g.after, g.before)
        if len(records) < len(done):
            log.info("%s: %d event(s) refused by the fence (their frames were claimed by another worker after "
                     "this one stopped heartbeating)", self.name, len(done) - len(records))

    def tap_failed(self, tap: str, exc: Exception) -> None:
        self.stats.add(tap_errors=1)
        if self.due(f"tap-{tap}"):
            log.warning("%s: %s failed (%s: %s); events are unaffected (at most once a second, all counted in "
                        "tap_errors)", self.name, tap, type(exc).__name__, str(exc) or "no message")

    def retrying(self, what: str, exc: Exception, wait_s: float, cap_s: float, first: bool) -> None:
        """A Redis call failed and will be tried again after `wait_s`: counted; logged on the first failure of
        an outage, then every RETRY_LOG_EVERY_S."""
        self.stats.add(reconnects=1)
        if self.due(what, RETRY_LOG_EVERY_S) or first:
            log.warning("%s: %s failed: %s; retrying (backoff now %.1f s, at most %g s; counted in reconnects)",
                        self.name, what, exc, wait_s, cap_s)

    # -- engines -----------------------------------------------------------------------------------------
    def engine_in_service(self, engine: ActiveEngine) -> None:
        """The engine info series names the engine now serving."""
        m = self.metrics
        if m is not None:
            b = engine.backend
            m.engine(b.model_id, b.name, str(b.device), b.manifest.versions)

    def engine_swapped(self, engine: ActiveEngine) -> None:
        self.stats.add(engine_swaps=1)
        self.engine_in_service(engine)

    def engine_refused(self) -> None:
        self.stats.add(engine_swaps_refused=1)


__all__ = ["Accounting"]
