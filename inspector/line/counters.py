"""Counters of one `inspector coils` process, for its summary line, its stats hash and Prometheus (one registry of
its own). The loop thread counts; the supervisor thread reads snapshots (under the lock) and serves /metrics."""

from __future__ import annotations

import threading
import time

import prometheus_client as prom
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

COUNTERS = ("events", "folded", "fenced_out", "late", "dropped", "bad_events", "unknown_camera", "coil_ends",
            "bad_coil_ends", "late_coil_ends", "reports", "report_errors", "reconnects")
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events = Counter("coils_events", "Events read from the events stream", registry=r)
        self.folded = Counter("coils_folded", "Events folded into a coil's state (with their ack)", registry=r)
        self.fenced_out = Counter("coils_fenced_out",
                                  "Events refused by the fence (claimed by another replica meanwhile)", registry=r)
        self.late = Counter("coils_late_events", "Events of a coil already reported", registry=r)
        self.dropped = Counter("coils_dropped_events", "Events not stored: the coil reached coils.max_coil_bytes",
                               registry=r)
        self.bad_events = Counter("coils_bad_events", "Malformed events (acked, counted, logged)", registry=r)
        self.unknown_camera = Counter("coils_unknown_camera_events", "Events of cameras missing from line.cameras",
                                      ["camera"], registry=r)
        self.coil_ends = Counter("coils_coil_ends", "Coil ends read, by result", ["result"], registry=r)
        self.reports = Counter("coils_reports", "Coil reports published, by what closed the coil", ["closed_by"],
                               registry=r)
        self.report_errors = Counter("coils_report_errors", "Reports that could not be computed or written",
                                     registry=r)
        self.reconnects = Counter("coils_reconnects", "Redis calls retried after an outage", registry=r)
        self.fold_seconds = Histogram("coils_fold_seconds", "Time per fold call (one batch of events)",
                                      buckets=SECONDS_BUCKETS, registry=r)
        self.report_seconds = Histogram("coils_report_seconds", "Time to compute and write one coil's report",
                                        buckets=SECONDS_BUCKETS, registry=r)
        self.open = Gauge("coils_open", "Coils not yet reported", registry=r)
        self.lag = Gauge("coils_events_lag", "Events not yet delivered to the coils group", registry=r)
        self.redis_up = Gauge("coils_redis_up", "1 when the last Redis probe answered", registry=r)

    def wsgi(self):
        return prom.make_wsgi_app(self.registry)


_SERIES = {"events": "events", "folded": "folded", "fenced_out": "fenced_out", "late": "late", "dropped": "dropped",
           "bad_events": "bad_events", "report_errors": "report_errors", "reconnects": "reconnects"}


class LineStats:
    def __init__(self, metrics: LineMetrics | None = None) -> None:
        self.metrics = metrics
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.counters = dict.fromkeys(COUNTERS, 0)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                self.counters[key] += value
        if self.metrics is not None:
            for key, value in counts.items():
                if value and key in _SERIES:
                    getattr(self.metrics, _SERIES[key]).inc(value)

    def unknown(self, camera: str) -> None:
        self.add(unknown_camera=1)
        if self.metrics is not None:
            self.metrics.unknown_camera.labels(camera=camera).inc()

    def ended(self, result: str) -> None:
        self.add(**{{"ended": "coil_ends", "bad": "bad_coil_ends", "late": "late_coil_ends"}[result]: 1})
        if self.metrics is not None:
            self.metrics.coil_ends.labels(result=result).inc()

    def reported(self, closed_by: str, seconds: float) -> None:
        self.add(reports=1)
        if self.metrics is not None:
            self.metrics.reports.labels(closed_by=closed_by).inc()
            self.metrics.report_seconds.observe(seconds)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            elapsed = time.monotonic() - self.started
            return {**self.counters, "uptime_s": round(elapsed, 1),
                    "events_per_s": round(self.counters["folded"] / elapsed, 1) if elapsed else 0.0}

    def line(self) -> str:
        s = self.snapshot()
        return (f"events={s['events']} folded={s['folded']} fenced_out={s['fenced_out']} late={s['late']} "
                f"bad={s['bad_events']} unknown_camera={s['unknown_camera']} coil_ends={s['coil_ends']} "
                f"reports={s['reports']} errors={s['report_errors']}")
