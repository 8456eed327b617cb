"""inspector.accounting without threads: a published batch's outcomes -> Stats counters, latencies and Prometheus
series, and the rate limit on its log lines (a clock of the test's own)."""

from __future__ import annotations

import logging

import pytest

from inspector.accounting import Accounting
from inspector.io import Entry, Gap, Published
from inspector.metrics import Metrics
from inspector.pipeline import FrameRecord
from inspector.protocol import FRAME_FIELD, Defect, FrameMessage
from inspector.stats import Stats

NOW = 1_764_720_000.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def record(i: int, ts: float = NOW - 0.25, error: str | None = None, classes: tuple[int, ...] = ()) -> FrameRecord:
    msg = FrameMessage(f"f{i}", "cam-a", i, ts, 2, 2, "gray8", b"\0" * 4)
    rec = FrameRecord(Entry(f"1-{i}", {FRAME_FIELD: msg.pack()}), None if error else msg, error)
    rec.defects = [Defect(c, "1 2", 2, 0.9, [[0, 0, 1, 2, 2]]) for c in classes]
    return rec


def published(acc: Accounting, records: list[FrameRecord], done: list[bool] | None = None,
              gaps: list[Gap] | None = None) -> None:
    outcomes = [r.outcome("model-x", NOW, 1 << 20) for r in records]
    acc.batch(records, outcomes, Published(done or [True] * len(records), gaps or []), "model-x", NOW)


@pytest.fixture
def acc() -> tuple[Accounting, Metrics, Clock]:
    metrics, clock = Metrics(), Clock()
    return Accounting("w", max_clock_skew_s=60.0, stats=Stats(metrics=metrics), clock=clock), metrics, clock


def test_a_batch_counts_once_in_stats_and_metrics(acc) -> None:
    a, metrics, _ = acc
    records = [record(0, classes=(1, 3)), record(1, classes=(3,)), record(2, error="bad header"), record(3),
               record(4, ts=0.0)]  # a 1970 clock: counted, not in the latency figures
    published(a, records, done=[True, True, True, True, False])  # the last one fenced out
    c = a.stats.counters
    counted = (c["frames"], c["ok"], c["rejected"], c["dead_lettered"], c["batches"], c["fenced_out"])
    assert counted == (4, 3, 1, 1, 1, 1)
    assert c["defects"] == 3 and c["implausible_ts"] == 0 and c["event_bytes"] > 0
    assert a.stats.percentile(50) == pytest.approx(250.0)
    sample = metrics.registry.get_sample_value
    assert sample("inspector_frames_total") == 4 and sample("inspector_fenced_out_total") == 1
    assert sample("inspector_events_total", {"status": "rejected"}) == 1
    assert sample("inspector_defects_total", {"class_id": "3"}) == 2
    assert sample("inspector_engine_frames_total", {"engine": "model-x"}) == 3
    assert sample("inspector_engine_defect_frames_total", {"engine": "model-x", "class_id": "3"}) == 2
    assert sample("inspector_engine_defect_frames_total", {"engine": "model-x", "class_id": "2"}) == 0
    published(a, [record(5, ts=0.0)])
    assert a.stats.counters["implausible_ts"] == 1 and sample("inspector_implausible_ts_total") == 1
    assert len(a.stats.latencies_ms) == 3


def test_gaps_and_resets_are_counted_and_logged_at_most_once_a_second(acc, caplog) -> None:
    a, metrics, clock = acc
    gap, reset = Gap("cam-a", 3, 7), Gap("cam-a", 9, 2, kind="reset")
    with caplog.at_level(logging.WARNING, logger="inspector.accounting"):
        published(a, [record(0)])  # a batch without gaps does not use up the gap line's second
        published(a, [record(1)], gaps=[gap, reset])
        published(a, [record(2)], gaps=[gap])  # same second: counted, not logged
        clock.t += 1.0
        published(a, [record(3)], gaps=[gap])
    assert a.stats.counters["seq_gaps"] == 9 and a.stats.counters["seq_resets"] == 1
    assert metrics.registry.get_sample_value("inspector_seq_gaps_total") == 9
    lines = [r.getMessage() for r in caplog.records]
    assert sum("3 frame(s) missing between seq 3 and 7" in m for m in lines) == 2
    assert sum("seq went from 9 to 2" in m for m in lines) == 1


def test_retries_and_tap_failures_are_counted_every_time_logged_rarely(acc, caplog) -> None:
    a, metrics, clock = acc
    with caplog.at_level(logging.WARNING, logger="inspector.accounting"):
        for n in range(5):
            a.retrying("publish", ConnectionError("refused"), 0.1 * 2 ** n, 5.0, first=n == 0)
            a.tap_failed("CaptureTap", RuntimeError(""))
        clock.t += 30.0
        a.retrying("publish", ConnectionError("refused"), 5.0, 5.0, first=False)
    assert a.stats.counters["reconnects"] == 6 and metrics.registry.get_sample_value("inspector_reconnects_total") == 6
    assert a.stats.counters["tap_errors"] == 5
    lines = [r.getMessage() for r in caplog.records]
    assert sum("publish failed: refused; retrying" in m for m in lines) == 2  # the first, then 30 s later
    assert [m for m in lines if "CaptureTap failed" in m] == [
        "w: CaptureTap failed (RuntimeError: no message); events are unaffected (at most once a second, all counted "
        "in tap_errors)"]


def test_restart_gives_fresh_stats_with_the_metrics_asked_for(acc) -> None:
    a, metrics, _ = acc
    published(a, [record(0)])
    before = a.stats
    other = Metrics()
    fresh = a.restart(other)
    assert a.stats is fresh is not before and fresh.metrics is other and fresh.counters["frames"] == 0
    published(a, [record(1)])
    assert fresh.counters["frames"] == 1 and before.counters["frames"] == 1
    assert other.registry.get_sample_value("inspector_frames_total") == 1
    assert metrics.registry.get_sample_value("inspector_frames_total") == 1
