"""How long a SIGKILLed worker's frames wait before another worker takes them, with the shipped defaults.

    python benchmarks/claim_time.py [--workers 3] [--kills 5] [--fps 6]

A private redis-server, `--workers` worker processes (`inspector run`, the shipped engine, default config) in one
consumer group, a camera thread sending real Severstal JPEGs at `--fps`. For each kill: wait until the victim holds
pending frames, SIGKILL it, then time (a) until none of those frames is pending under the victim's name any more
(another worker claimed them: the heartbeat key expired, `heartbeat_ttl_ms`, and a claim pass ran, `claim_every_s`)
and (b) until each of them has its event. The victim restarts only after that, so it cannot re-read its own
frames. At the end every frame sent must have exactly one event. Writes benchmarks/results/claim_time_cpu.json.
Before the heartbeat design a dead worker's frames waited for `claim_idle_ms` (60 s by default; 62.8 s measured).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.bench import environment  # noqa: E402
from inspector.config import Config  # noqa: E402
from inspector.feed import feed, folder_payloads, messages, redis_adder  # noqa: E402
from inspector.io.redis_server import PrivateRedis  # noqa: E402
from inspector.protocol import EVENT_FIELD, unpack_event  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "severstal-sample"
_KEYS = Config().redis.keys()  # the shipped layout: inspect:{main}:frames, ...
FRAMES, EVENTS, GROUP = _KEYS.frames, _KEYS.events, _KEYS.group


def pending_ids(client: redis.Redis, consumer: str) -> set[str]:
    rows = client.xpending_range(FRAMES, GROUP, min="-", max="+", count=10_000, consumername=consumer)
    return {r["message_id"].decode() for r in rows}


def event_entry_ids(client: redis.Redis) -> list[str]:
    return [unpack_event(f[EVENT_FIELD])["entry_id"] for _, f in client.xrange(EVENTS)]


def wait(condition, timeout: float, what: str, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--fps", type=float, default=6.0)
    ap.add_argument("--engine", default=str(ROOT / "engines" / "current"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "claim_time_cpu.json"))
    args = ap.parse_args()

    defaults = Config().redis
    server = PrivateRedis()
    url = server.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_ARENA_MAX": "2"}
    host = socket.gethostname()

    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "--redis-url", url, "--engine",
                                 args.engine, "--worker-id", str(i), "--threads", "1"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    client = redis.Redis.from_url(url)
    workers = [start(i) for i in range(args.workers)]
    stop = threading.Event()
    sent = [0]

    def camera() -> None:
        sent[0] = feed(redis_adder(client, FRAMES), messages(folder_payloads(REAL / "images"), "claim-cam"),
                       10**9, args.fps, stop.is_set)

    cam = threading.Thread(target=camera, daemon=True)
    kills: list[dict] = []
    try:
        cam.start()
        wait(lambda: client.xlen(EVENTS) >= 3 * args.workers, 300, "first events")
        attempt = 0
        while len(kills) < args.kills:
            i = attempt % args.workers
            attempt += 1
            victim = f"{host}-{i}"
            deadline = time.monotonic() + 120
            while not (held := pending_ids(client, victim)):  # kill it while it holds frames
                if time.monotonic() > deadline:
                    raise SystemExit(f"{victim} never held frames")
                time.sleep(0.005)
            workers[i].send_signal(signal.SIGKILL)
            t_kill = time.monotonic()
            workers[i].wait()
            still = held & pending_ids(client, victim)  # what it held when it died (the rest it had acked)
            if not still:  # it acked them all between our look and the kill: nothing to time
                workers[i] = start(i)
                continue
            wait(lambda victim=victim: not pending_ids(client, victim), 120, f"{victim}'s frames claimed")
            t_claimed = time.monotonic() - t_kill
            wait(lambda still=still: still <= set(event_entry_ids(client)), 120, "their events")
            t_events = time.monotonic() - t_kill
            kills.append({"victim": victim, "frames_held": len(still), "claimed_after_s": round(t_claimed, 3),
                          "events_after_s": round(t_events, 3)})
            print(json.dumps(kills[-1]), flush=True)
            workers[i] = start(i)
            time.sleep(2.0)
        stop.set()
        cam.join(30)
        wait(lambda: len(set(event_entry_ids(client))) >= sent[0]
             and client.xpending(FRAMES, GROUP)["pending"] == 0, 300, "every frame's event", every=0.5)
        ids = event_entry_ids(client)
    finally:
        stop.set()
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.kill()
        server.stop()
    claimed = sorted(k["claimed_after_s"] for k in kills)
    result = {
        "benchmark": "claim_time", "workers": args.workers, "offered_fps": args.fps,
        "heartbeat_ttl_ms": defaults.heartbeat_ttl_ms, "claim_every_s": defaults.claim_every_s,
        "bound_s": defaults.heartbeat_ttl_ms / 1000 + defaults.claim_every_s,
        "kills": kills, "claimed_after_s_max": claimed[-1], "claimed_after_s_median": claimed[len(claimed) // 2],
        "frames_sent": sent[0], "events": len(ids), "events_unique": len(set(ids)),
        "exactly_one_event_per_frame": len(ids) == len(set(ids)) == sent[0],
        **environment(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("kills", "machine", "versions")}, indent=2))


if __name__ == "__main__":
    main()
