"""What Prometheus metrics cost per frame: the worker's accounting for one batch (the same Stats calls the
pipeline makes: counters, per-class defects, stage timings, latency), with metrics off and on, plus one /metrics
scrape. The end-to-end bench (`inspector bench --metrics`) cannot resolve it above this VM's run-to-run noise;
this can.

    python benchmarks/metrics_cost.py [--batches 20000]

Writes benchmarks/results/metrics_cost_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.bench import environment  # noqa: E402
from inspector.metrics import Metrics  # noqa: E402
from inspector.stats import STAGES, Stats  # noqa: E402

BATCH = 8


def account(stats: Stats, now: float) -> None:
    """One batch of 8 frames, 2 defects each, as Accounting.batch and the stage timers record it."""
    for stage in STAGES:
        stats.time(stage, 0.001)
    stats.inferred(BATCH, 0.05)
    stats.add(frames=BATCH, ok=BATCH, rejected=0, dead_lettered=0, batches=1, fenced_out=0, event_bytes=BATCH * 2000)
    stats.defects([3, 4] * BATCH)
    for _ in range(BATCH):
        stats.published(now - 0.1, now)
    stats.add(seq_gaps=0, seq_resets=0)


def per_frame_us(stats: Stats, batches: int) -> float:
    now = time.time()
    t0 = time.perf_counter()
    for _ in range(batches):
        account(stats, now)
    return (time.perf_counter() - t0) / (batches * BATCH) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=20000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "metrics_cost_cpu.json"))
    args = ap.parse_args()
    off, on = [], []
    for _ in range(3):  # interleaved rounds
        off.append(per_frame_us(Stats(), args.batches))
        on.append(per_frame_us(Stats(metrics=Metrics()), args.batches))
    metrics = Metrics()
    account(Stats(metrics=metrics), time.time())
    import prometheus_client

    t0 = time.perf_counter()
    for _ in range(100):
        text = prometheus_client.generate_latest(metrics.registry)
    scrape_ms = (time.perf_counter() - t0) / 100 * 1000
    result = {"benchmark": "metrics_cost", "batch": BATCH, "us_per_frame_metrics_off": round(min(off), 2),
              "us_per_frame_metrics_on": round(min(on), 2), "added_us_per_frame": round(min(on) - min(off), 2),
              "scrape_ms": round(scrape_ms, 3), "scrape_bytes": len(text), **environment()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "versions")}))


if __name__ == "__main__":
    main()
