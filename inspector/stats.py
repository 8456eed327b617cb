"""Counters and stage timings of one worker, for the shutdown summary, the stats hash and `bench`."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

STAGES = ("read", "decode", "stage", "infer", "postprocess", "publish")


class Stats:
    def __init__(self, latency_window: int = 100_000) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.counters: dict[str, int] = dict.fromkeys(
            ("frames", "ok", "rejected", "dead_lettered", "defects", "batches", "fenced_out", "seq_gaps",
             "reconnects"), 0)
        self.stage_s: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.infer_frames = 0
        self.latencies_ms: deque[float] = deque(maxlen=latency_window)
        self._last_seq: dict[str, int] = {}
        self.first_ts: float | None = None  # earliest capture time of a published frame (unix s)
        self.last_done_ts: float | None = None  # latest publish time (unix s)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                self.counters[key] += value

    def time(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.stage_s[stage] += seconds

    def published(self, capture_ts: float, done_ts: float) -> None:
        """One frame's event is out: capture-to-event latency and the span of the run."""
        self.latencies_ms.append((done_ts - capture_ts) * 1000.0)
        with self._lock:
            self.first_ts = capture_ts if self.first_ts is None else min(self.first_ts, capture_ts)
            self.last_done_ts = done_ts if self.last_done_ts is None else max(self.last_done_ts, done_ts)

    def seq(self, camera: str, seq: int) -> int:
        """Record a camera's sequence number; returns how many frames are missing before it (0 if none)."""
        with self._lock:
            last = self._last_seq.get(camera)
            if last is None or seq > last:
                self._last_seq[camera] = seq
            missing = seq - last - 1 if last is not None and seq > last + 1 else 0
            self.counters["seq_gaps"] += missing
            return missing

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
