"""Counters and stage timings of one worker, for the summary line, the stats hash, `bench` and Prometheus.

Every count goes through here once; with `metrics` set the same call updates the Prometheus series, so the
numbers an operator reads in the log, in Redis and on /metrics are the same numbers.

Threads: the worker's producer, consumer, engine loader and supervisor all write or read one `Stats` at once;
counters, stage times and the run's span are under `_lock`, the latency window is a deque (appends are atomic).
Its owner is `accounting.Accounting`, the only one that makes a new one for a running worker.
"""

from __future__ import annotations

import collections
import threading
import time
from collections import deque

import numpy as np

from inspector.metrics import Metrics

STAGES = ("read", "decode", "stage", "infer", "postprocess", "publish")
COUNTERS = ("frames", "ok", "rejected", "dead_lettered", "defects", "batches", "fenced_out", "seq_gaps",
            "seq_resets", "reconnects", "implausible_ts", "engine_swaps", "engine_swaps_refused", "event_bytes",
            "tap_errors")


class Stats:
    def __init__(self, latency_window: int = 100_000, metrics: Metrics | None = None) -> None:
        self._lock = threading.Lock()
        self.metrics = metrics
        self.started = time.monotonic()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.stage_s: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.infer_frames = 0
        self.latencies_ms: deque[float] = deque(maxlen=latency_window)
        self.first_ts: float | None = None  # earliest capture time of a published frame (unix s)
        self.last_done_ts: float | None = None  # latest publish time (unix s)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                self.counters[key] += value
        m = self.metrics
        if m is None:
            return
        for key, value in counts.items():
            if not value:
                continue
            if key in _SERIES:
                getattr(m, _SERIES[key]).inc(value)
            elif key in ("ok", "rejected"):
                m.by_status[key].inc(value)
            elif key in ("engine_swaps", "engine_swaps_refused"):
                m.by_result["done" if key == "engine_swaps" else "refused"].inc(value)

    def defects(self, class_ids: list[int]) -> None:
        self.add(defects=len(class_ids))
        if self.metrics is not None:
            for class_id, n in collections.Counter(class_ids).items():
                child = self.metrics.by_class.get(class_id) or self.metrics.defects.labels(class_id=str(class_id))
                child.inc(n)

    def inspected(self, engine: str, frames: int, with_class: dict[int, int]) -> None:
        """Per-engine defect rates (metrics only: the counters above already hold the totals)."""
        if self.metrics is not None and frames:
            self.metrics.inspected(engine, frames, with_class)

    def time(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.stage_s[stage] += seconds
        if self.metrics is not None:
            self.metrics.stage_seconds(stage).observe(seconds)

    def inferred(self, frames: int, seconds: float) -> None:
        """One engine batch: its size and how long the engine took."""
        self.time("infer", seconds)
        with self._lock:
            self.infer_frames += frames
        if self.metrics is not None:
            self.metrics.batch_size.observe(frames)
            if seconds > 0:
                self.metrics.engine_fps.set(frames / seconds)

    def published(self, capture_ts: float, done_ts: float) -> None:
        """One ok frame's event is out: capture-to-event latency and the span of the run."""
        self.latencies_ms.append((done_ts - capture_ts) * 1000.0)
        with self._lock:
            self.first_ts = capture_ts if self.first_ts is None else min(self.first_ts, capture_ts)
            self.last_done_ts = done_ts if self.last_done_ts is None else max(self.last_done_ts, done_ts)
        if self.metrics is not None:
            self.metrics.latency.observe(max(done_ts - capture_ts, 0.0))

    def percentile(self, q: float) -> float | None:
        values = list(self.latencies_ms)
        return float(np.percentile(values, q)) if values else None

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            elapsed = time.monotonic() - self.started
            out: dict[str, float] = {**self.counters, "uptime_s": round(elapsed, 1),
                                     "fps": round(self.counters["frames"] / elapsed, 2) if elapsed else 0.0}
            out.update({f"{k}_s": round(v, 4) for k, v in self.stage_s.items()})
        for q in (50, 99):
            value = self.percentile(q)
            if value is not None:
                out[f"latency_ms_p{q}"] = round(value, 2)
        return out

    def line(self) -> str:
        s = self.snapshot()
        return (f"frames={s['frames']} ok={s['ok']} rejected={s['rejected']} dead={s['dead_lettered']} "
                f"defects={s['defects']} gaps={s['seq_gaps']} fps={s['fps']} "
                f"p50={s.get('latency_ms_p50', '-')}ms p99={s.get('latency_ms_p99', '-')}ms")


_SERIES = {"frames": "frames", "event_bytes": "event_bytes", "dead_lettered": "dead_letters",
           "fenced_out": "fenced_out", "seq_gaps": "seq_gaps", "seq_resets": "seq_resets", "reconnects": "reconnects",
           "implausible_ts": "implausible_ts"}
