"""Soak: the worker (`inspector run`, the shipped engine) under an offered rate of real JPEG frames for 30+ minutes,
with one Redis outage in the middle, sampled every 30 s.

    python benchmarks/soak.py [--minutes 32] [--fps 4] [--outage-at-min 20] [--outage-s 15]

A private redis-server (AOF on, so the outage is a stop and restart that keeps the data); a camera thread sends
real Severstal JPEGs at `--fps` (retrying through the outage, as a camera's buffer would); the worker runs as its
own process with metrics on. Every 30 s: worker RSS, Redis used_memory, frames and events stream lengths, and a
scrape of /metrics (frames, capture-to-event latency quantiles over the interval, consumer-group lag and pending as
the worker reports them, reconnects). Growth per hour of worker RSS and Redis memory comes from a least-squares
line over the samples after the first 5 minutes. Writes benchmarks/results/soak_cpu.json and the plots
docs/soak.png (memory, streams) and docs/metrics.png (what a Grafana panel on /metrics shows: throughput, latency,
lag).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.bench import environment  # noqa: E402
from inspector.config import RedisConfig  # noqa: E402
from inspector.feed import folder_payloads, messages  # noqa: E402
from inspector.io.redis_server import PrivateRedis, free_port  # noqa: E402
from inspector.protocol import FRAME_FIELD  # noqa: E402

KEYS = RedisConfig().keys()  # the shipped layout: inspect:{main}:frames, ...

REAL = ROOT.parent / "shared" / "data" / "severstal-sample"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(port: int) -> dict[str, float]:
    """The sample lines of /metrics as {name{labels}: value}."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
    return out


def quantile(prev: dict[str, float], cur: dict[str, float], q: float) -> float | None:
    """Latency quantile (seconds) over the interval between two scrapes, from the histogram's bucket deltas, as
    Prometheus' histogram_quantile does (linear inside the bucket)."""
    name = "inspector_latency_seconds_bucket"
    buckets = sorted((float(k.split('le="')[1].rstrip('"}')), cur[k] - prev.get(k, 0.0))
                     for k in cur if k.startswith(name) and "+Inf" not in k)
    total = cur.get(name + '{le="+Inf"}', 0.0) - prev.get(name + '{le="+Inf"}', 0.0)
    if total <= 0:
        return None
    rank, low, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            return low + (upper - low) * (rank - below) / max(count - below, 1e-9)
        low, below = upper, count
    return buckets[-1][0] if buckets else None


def growth_per_hour(t_s: list[float], values: list[float], skip_s: float = 300.0) -> float | None:
    pts = [(t, v) for t, v in zip(t_s, values, strict=True) if t >= skip_s and np.isfinite(v)]
    if len(pts) < 3:
        return None
    t, v = np.array(pts).T
    return float(np.polyfit(t / 3600.0, v, 1)[0])


def camera(url: str, fps: float, stop: threading.Event, sent: list[int]) -> None:
    """Real JPEGs at `fps`; an XADD that fails (Redis away) is retried, so no frame is skipped."""
    client = redis.Redis.from_url(url, socket_timeout=2)
    payloads = folder_payloads(REAL / "images") + folder_payloads(REAL / "unlabeled_test_images")
    start = time.monotonic()
    for msg in messages(payloads, "soak-cam"):
        due = start + msg.seq / fps
        while not stop.is_set():
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.5))
                continue
            try:  # captured now: the frame left the camera when it was due
                client.xadd(KEYS.frames, {FRAME_FIELD: dataclasses.replace(msg, ts=time.time()).pack()})
                sent[0] += 1
                break
            except redis.RedisError:
                time.sleep(0.5)
        if stop.is_set():
            return


def plot(samples: list[dict], outage: tuple[float, float] | None, soak_png: Path, metrics_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]

    def figure(title: str, panels: list[tuple[str, list[tuple[str, str]], bool]], path: Path) -> None:
        """One figure: a panel per (y label, [(sample key, legend)], log scale), the outage shaded."""
        fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3 * len(panels)), sharex=True)
        for ax, (ylabel, lines, log) in zip(axes, panels, strict=True):
            top = 0.0
            for key, label in lines:
                values = [float("nan") if s[key] is None else s[key] for s in samples]
                ax.plot(t, values, label=label)
                top = max([top, *(v for v in values if v == v)])
            if outage:
                ax.axvspan(outage[0] / 60, outage[1] / 60, color="#f4b6b6", alpha=0.5, label="Redis stopped")
            ax.set_ylabel(ylabel)
            if log:
                ax.set_yscale("log")
            else:
                ax.set_ylim(0, max(top * 1.3, 1))  # growth read against the whole, not a zoomed band
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left")
        axes[0].set_title(title)
        axes[-1].set_xlabel("minutes")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)

    figure("Soak: the worker under real JPEG frames, one Redis outage", [
        ("MB", [("worker_rss_mb", "worker RSS (MB)")], False),
        ("MB", [("redis_used_mb", "Redis used_memory (MB)")], False),
        ("entries", [("frames_len", "frames stream length"), ("events_len", "events stream length")], False),
    ], soak_png)
    figure("What the admin sees on /metrics", [
        ("frames/s", [("fps", "events/s (rate of inspector_frames_total)")], False),
        ("seconds", [("latency_p50_s", "p50 capture-to-event latency"), ("latency_p99_s", "p99")], True),
        ("frames", [("lag", "inspector_group_lag"), ("pending", "inspector_group_pending")], False),
    ], metrics_png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replot", action="store_true", help="Only draw the plots again from the results JSON.")
    ap.add_argument("--minutes", type=float, default=32.0)
    ap.add_argument("--fps", type=float, default=4.0)
    ap.add_argument("--every-s", type=float, default=30.0)
    ap.add_argument("--outage-at-min", type=float, default=20.0, help="0: no outage")
    ap.add_argument("--outage-s", type=float, default=15.0)
    ap.add_argument("--engine", default=str(ROOT / "engines" / "current"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak_cpu.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "soak.png"))
    ap.add_argument("--metrics-plot", default=str(ROOT / "docs" / "metrics.png"))
    args = ap.parse_args()
    if args.replot:
        done = json.loads(Path(args.out).read_text())
        plot(done["samples"], tuple(done["outage_s"]) if done["outage_s"] else None, Path(args.plot),
             Path(args.metrics_plot))
        return

    server = PrivateRedis(appendonly=True)
    url = server.start()
    port = free_port()
    cfg = Path(server.dir.name) / "soak.yaml"
    cfg.write_text("redis:\n  events_maxlen: 2000\n")  # a downstream retention reached within minutes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_ARENA_MAX": "2"}
    log_path = Path(server.dir.name) / "worker.log"
    with open(log_path, "w") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "--redis-url", url, "--engine",
                                   args.engine, "--config", str(cfg), "--metrics-address", f"127.0.0.1:{port}"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    client = redis.Redis.from_url(url, socket_timeout=2)
    stop, sent = threading.Event(), [0]
    cam = threading.Thread(target=camera, args=(url, args.fps, stop, sent), daemon=True)
    samples: list[dict] = []
    outage = None
    try:
        while True:
            with contextlib.suppress(OSError):
                scrape(port)
                break
            time.sleep(0.5)
        cam.start()
        t0 = time.monotonic()
        prev: dict[str, float] = {}
        prev_t = t0
        outage_at = args.outage_at_min * 60 if args.outage_at_min > 0 else None
        next_sample = t0 + args.every_s
        while time.monotonic() - t0 < args.minutes * 60:
            now = time.monotonic()
            if outage_at is not None and outage is None and now - t0 >= outage_at:
                server.halt()
                time.sleep(args.outage_s)
                server.start()
                outage = (outage_at, outage_at + args.outage_s)
            if now < next_sample:
                time.sleep(min(1.0, next_sample - now))
                continue
            next_sample += args.every_s
            try:
                cur = scrape(port)
                mem = client.info("memory")["used_memory"] / 2**20
                frames_len, events_len = client.xlen(KEYS.frames), client.xlen(KEYS.events)
            except (OSError, redis.RedisError):
                continue
            dt = now - prev_t
            sample = {
                "t_s": round(now - t0, 1), "worker_rss_mb": round(rss_mb(worker.pid), 1),
                "redis_used_mb": round(mem, 2), "frames_len": frames_len, "events_len": events_len,
                "lag": cur.get("inspector_group_lag"), "pending": cur.get("inspector_group_pending"), "sent": sent[0],
                "frames_total": cur.get("inspector_frames_total", 0.0),
                "fps": round((cur.get("inspector_frames_total", 0.0) - prev.get("inspector_frames_total", 0.0)) / dt,
                             2) if prev else None,
                "latency_p50_s": quantile(prev, cur, 0.5), "latency_p99_s": quantile(prev, cur, 0.99),
                "reconnects": cur.get("inspector_reconnects_total", 0.0),
            }
            samples.append(sample)
            prev, prev_t = cur, now
            print(json.dumps(sample), flush=True)
            assert worker.poll() is None, "the worker exited"
        stop.set()
        cam.join(10)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # let the backlog drain: every frame sent gets its event
            g = {x["name"].decode(): x for x in client.xinfo_groups(KEYS.frames)}["inspectors"]
            if int(g.get("lag") or 0) == 0 and int(g["pending"]) == 0:
                break
            time.sleep(1)
        final = scrape(port)
    finally:
        worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=60)
        log_tail = log_path.read_text()[-3000:]
        server.stop()
    t = [s["t_s"] for s in samples]
    result = {
        "benchmark": "soak", "minutes": args.minutes, "offered_fps": args.fps, "encoding": "jpeg (real Severstal)",
        "outage_s": [round(x, 1) for x in outage] if outage else None, "frames_sent": sent[0],
        "frames_with_events": final.get("inspector_frames_total"),
        "worker_rss_mb_first_last": [samples[0]["worker_rss_mb"], samples[-1]["worker_rss_mb"]],
        "worker_rss_mb_growth_per_hour": growth_per_hour(t, [s["worker_rss_mb"] for s in samples]),
        "redis_used_mb_first_last": [samples[0]["redis_used_mb"], samples[-1]["redis_used_mb"]],
        "redis_used_mb_growth_per_hour": growth_per_hour(t, [s["redis_used_mb"] for s in samples]),
        "frames_len_max": max(s["frames_len"] for s in samples), "events_maxlen": 2000,
        "samples": samples, "worker_env": {"MALLOC_ARENA_MAX": "2"}, "worker_log_tail": log_tail,
        **environment(),
    }
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(samples, outage, Path(args.plot), Path(args.metrics_plot))
    print(f"worker RSS growth {result['worker_rss_mb_growth_per_hour']} MB/h, Redis "
          f"{result['redis_used_mb_growth_per_hour']} MB/h; {sent[0]} frames sent, "
          f"{result['frames_with_events']} events; results in {out}")


if __name__ == "__main__":
    main()
