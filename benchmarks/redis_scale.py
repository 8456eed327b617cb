"""Past one Redis: frames/s through one instance and through a 3-master cluster with 3 lines, the CPU each Redis
process spent, and how long a failover takes (Cluster and Sentinel).

    python benchmarks/redis_scale.py [--frames 6000] [--encodings jpeg,gray8] [--failovers 3]

Throughput: 3 lines, each with a camera process (`inspector feed`'s sender, flat out, 16 frames per round trip)
and a worker process (the real `RedisStreams` read, fenced publish script, acks, seq tracking and trim, with an
instant "engine": a 60-byte event per frame), so the figure is what Redis and the client library carry, not the
model. Run 1: one redis-server holds the three lines. Run 2: the same with a replica (what replication alone
costs the master). Run 3: a Redis Cluster, 3 masters + 3 replicas, one line per master. Each Redis process's CPU
comes from INFO cpu (used_cpu_user + used_cpu_sys) before and after.

Failover: one line on a cluster, a camera at 50 frames/s riding out the failover (`redis_adder` with outage_s) and a
worker; the line's master is SIGKILLed; timed until the replica is promoted, until a frame is accepted again and
until the worker publishes again; the killed node is then restarted (it rejoins as a replica). The same with
Sentinel (a master, a replica, three sentinels, down-after-milliseconds 1000).

On a 2-core VM every process shares two cores: the absolute rates are this machine's (and its Python clients');
the CPU milliseconds each Redis process spent per frame it served say what one core per Redis process (a real
server) would carry: `redis_bound_frames_per_s`, the busiest process's ceiling with the lines at equal rates. Writes
benchmarks/results/redis_scale_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector import config  # noqa: E402
from inspector.bench import environment  # noqa: E402
from inspector.feed import feed, messages, redis_adder, synthetic_payloads  # noqa: E402
from inspector.io.base import Outcome  # noqa: E402
from inspector.io.client import close, connect  # noqa: E402
from inspector.io.keys import line_key  # noqa: E402
from inspector.io.redis_server import PrivateCluster, PrivateRedis, PrivateSentinel  # noqa: E402
from inspector.io.redis_streams import RedisStreams  # noqa: E402
from inspector.protocol import EVENT_FIELD, identity  # noqa: E402

LINES = 3


def camera(redis_settings: dict[str, Any], frames: int, encoding: str, fps: float = 0.0) -> None:
    cfg = config.load(None, **{f"redis__{k}": v for k, v in redis_settings.items()}).redis
    client = connect(cfg)
    feed(redis_adder(client, cfg.keys().frames, outage_s=60.0), messages(synthetic_payloads(0, 16, encoding),
                                                                      f"cam-{cfg.line}"), frames, fps)
    close(client)


def worker(redis_settings: dict[str, Any], frames: int, stop_after_s: float = 600.0) -> None:
    """Read, publish one small event per frame, until `frames` events are out (retrying through failovers)."""
    from inspector.errors import SourceUnavailable

    cfg = config.load(None, **{f"redis__{k}": v for k, v in redis_settings.items()}, redis__block_ms=100).redis
    source = RedisStreams(cfg)
    source.wait_ready(30)
    done, deadline = 0, time.monotonic() + stop_after_s
    while done < frames and time.monotonic() < deadline:
        try:
            entries = source.read(32, 100)
            if not entries:
                continue
            outs = []
            for e in entries:
                frame_id, cam, seq, _ts = identity(e.fields)
                outs.append(Outcome(e, msgpack.packb({"frame_id": frame_id, "done_ts": time.time()}), None, cam, seq))
            done += sum(source.publish(outs).done)
        except SourceUnavailable:
            source.recover()
            time.sleep(0.1)
    source.close()


def cpu_seconds(ports: list[int]) -> dict[int, float]:
    out = {}
    for port in ports:
        info = redis.Redis(port=port).info("cpu")
        out[port] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return out


def throughput(kind: str, frames: int, encoding: str) -> dict[str, Any]:
    """3 lines through one instance or a 3-master cluster, each with its camera and worker process."""
    replica = None
    if kind == "cluster":
        setup: Any = PrivateCluster(3, maxmemory="2gb")
    else:
        setup = PrivateRedis(maxmemory="4gb")
    url = setup.start()
    ports = list(setup.nodes) if kind == "cluster" else [setup.port]
    if kind == "replicated":  # one server and a replica: what replication alone costs the master
        replica = PrivateRedis(maxmemory="4gb", extra=("--replicaof", "127.0.0.1", str(setup.port)))
        replica.start()
        ports.append(replica.port)
        while redis.Redis(port=replica.port).info("replication")["master_link_status"] != "up":
            time.sleep(0.05)
    try:
        if kind != "cluster":
            lines = [f"line{i}" for i in range(LINES)]
        else:
            chosen: dict[int, str] = {}
            for i in range(1000):
                chosen.setdefault(setup.master_of(line_key(f"line{i}", "frames")), f"line{i}")
            lines = sorted(chosen.values())[:LINES]
        mode = "cluster" if kind == "cluster" else "standalone"
        settings = [{"url": url, "mode": mode, "line": line, "consumer": f"w-{line}"} for line in lines]
        for s in settings:  # groups first: frames sent before a worker starts count too
            RedisStreams(config.load(None, **{f"redis__{k}": v for k, v in s.items()}).redis).wait_ready(30)
        before, t0 = cpu_seconds(ports), time.monotonic()
        procs = [mp.Process(target=camera, args=(s, frames, encoding)) for s in settings]
        procs += [mp.Process(target=worker, args=(s, frames)) for s in settings]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        elapsed = time.monotonic() - t0
        after = cpu_seconds(ports)
        roles = {p: redis.Redis(port=p).info("replication")["role"] for p in ports}
        total = frames * LINES
        served = frames * (1 if kind == "cluster" else LINES)  # each cluster master (and replica) serves a line
        per_instance = [{"port": p, "role": roles[p], "frames_served": served, "cpu_s": round(after[p] - before[p], 2),
                         "cpu_share": round((after[p] - before[p]) / elapsed, 3),
                         "cpu_ms_per_frame_served": round((after[p] - before[p]) / served * 1000, 4)} for p in ports]
        # each Redis process on a core of its own, the lines at equal rates: the busiest one sets the ceiling
        busiest = max(r["cpu_ms_per_frame_served"] for r in per_instance)
        return {"kind": kind, "lines": lines, "frames": total, "seconds": round(elapsed, 2),
                "frames_per_s": round(total / elapsed, 1), "per_instance": per_instance,
                "redis_bound_frames_per_s": round(1000 / busiest * (total / served), 0)}
    finally:
        if replica is not None:
            replica.stop()
        setup.stop()


def timeline(client: Any, events_key: str, kill_wall: float) -> float | None:
    """Seconds after the kill of the first event published after it (its done_ts)."""
    for _, f in client.xrange(events_key):
        done = msgpack.unpackb(f[EVENT_FIELD])["done_ts"]
        if done > kill_wall:
            return done - kill_wall
    return None


def failover(kind: str, rounds: int) -> list[dict[str, float | None]]:
    """Kill the line's master `rounds` times under a 50 frames/s camera and a worker; time what follows."""
    setup: Any = PrivateCluster(3) if kind == "cluster" else PrivateSentinel("inspector", 1000, 3000)
    started = setup.start()
    settings = ({"url": started, "mode": "cluster"} if kind == "cluster" else
                {"mode": "sentinel", "sentinels": started, "sentinel_service": "inspector"})
    cfg = config.load(None, **{f"redis__{k}": v for k, v in settings.items()}).redis
    client, keys, results = connect(cfg), cfg.keys(), []
    try:
        RedisStreams(cfg).wait_ready(30)
        n = 50 * 30 * rounds
        accepted: list[float] = []
        add, stop = redis_adder(client, keys.frames, outage_s=60.0), threading.Event()
        cam = threading.Thread(target=feed, args=(lambda b: (add(b), accepted.append(time.time())),
                                                  messages(synthetic_payloads(0, 4, "jpeg"), "cam"), n, 50.0,
                                                  stop.is_set), daemon=True)
        work = mp.Process(target=worker, args=(settings, n))
        cam.start()
        work.start()
        for _ in range(rounds):
            time.sleep(5)
            master = setup.master_of(keys.frames) if kind == "cluster" else setup.master()
            setup.kill(master)
            kill_mono, kill_wall = time.monotonic(), time.time()
            while (setup.master_of(keys.frames) if kind == "cluster" else setup.master()) == master:
                time.sleep(0.02)
            promoted = time.monotonic() - kill_mono
            while not any(t > kill_wall + 0.001 for t in accepted[-5:]):
                time.sleep(0.02)
            frame_ok = min(t for t in accepted if t > kill_wall) - kill_wall
            while (event_ok := timeline(client, keys.events, kill_wall)) is None:
                time.sleep(0.05)
            setup.revive(master)
            setup.wait_healthy(120)
            results.append({"promoted_s": round(promoted, 2), "frames_accepted_again_s": round(frame_ok, 2),
                            "worker_publishes_again_s": round(event_ok, 2)})
            print(kind, results[-1], flush=True)
        stop.set()
        cam.join()
        work.terminate()
        work.join()
    finally:
        close(client)
        setup.stop()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=6000, help="frames per line (gray8: a quarter of it)")
    ap.add_argument("--encodings", default="jpeg,gray8")
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "redis_scale_cpu.json"))
    args = ap.parse_args()
    load = os.getloadavg()
    runs = []
    for encoding in args.encodings.split(","):
        frames = args.frames if encoding == "jpeg" else max(args.frames // 4, 1)
        for kind in ("standalone", "replicated", "cluster"):
            run = throughput(kind, frames, encoding)
            runs.append({"encoding": encoding, "payload_bytes": len(synthetic_payloads(0, 1, encoding)[0][0]),
                         **run})
            print(json.dumps(runs[-1]), flush=True)
    result = {"benchmark": "redis_scale", "load_average_before": load, "throughput": runs,
              "failover": {"cluster_node_timeout_ms": 1000, "sentinel_down_after_ms": 1000,
                           "cluster": failover("cluster", args.failovers),
                           "sentinel": failover("sentinel", args.failovers)},
              "environment": environment()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
