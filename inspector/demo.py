"""`inspector demo`: the whole loop on one machine with no other step.

A private redis-server (unless one is configured), a synthetic line of two cameras pushing frames of coils
(ids, positions, one roll mark) at a set rate each, the engine in engines/current, the worker, the coils service
(`inspector.line.demo`), the operator's screen (`inspector.screen`, its address printed first), a live summary read
back from the events stream, the way a downstream system would see it, and one line per coil report. Pointed at
an existing Redis, the demo works under keys and a group of its own and deletes them when it ends: the production
stream is never read, trimmed or joined.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from inspector import config as config_mod
from inspector.config import Config
from inspector.feed import corrupt, feed, redis_adder
from inspector.io import client as clients
from inspector.io.isolation import private_keys, remove_keys
from inspector.io.redis_server import PrivateRedis
from inspector.line.demo import LineDemo
from inspector.pipeline import from_config
from inspector.protocol import EVENT_FIELD, unpack_event
from inspector.screen.app import Screen


class Summary:
    """Tallies the events stream and prints one line every `every_s` seconds."""

    def __init__(self, client: Any, cfg: Config, fed: Callable[[], int], out: Callable[[str], None]) -> None:
        self.client, self.cfg, self.fed, self.out = client, cfg, fed, out
        self.last_id = "0-0"
        self.status: collections.Counter[str] = collections.Counter()
        self.classes: collections.Counter[int] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=2000)
        self.started = time.monotonic()
        self.last_line = ""

    def poll(self) -> None:
        reply = self.client.xread({self.cfg.redis.keys().events: self.last_id}, count=10_000)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                event = unpack_event(fields[EVENT_FIELD])
                self.status[event["status"]] += 1
                if event["status"] == "ok" and event["ts"] > 0:  # a rejected frame may have no capture time
                    self.latencies.append((event["done_ts"] - event["ts"]) * 1000)
                for defect in event["defects"]:
                    self.classes[defect["class_id"]] += 1

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        events = sum(self.status.values())
        lat = sorted(self.latencies)
        p50 = f"{lat[len(lat) // 2]:.0f}" if lat else "-"
        p99 = f"{lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.0f}" if lat else "-"
        defects = " ".join(f"{c}:{self.classes[c]}" for c in range(1, 5))
        return (f"[{elapsed:5.0f}s] fed {self.fed()} | events {events} (ok {self.status['ok']}, rejected "
                f"{self.status['rejected']}) | {events / max(elapsed, 1e-9):.1f} frames/s | latency p50 {p50} ms "
                f"p99 {p99} ms | defects by class {defects}")

    def loop(self, stop: threading.Event, every_s: float) -> None:
        while not stop.wait(every_s):
            self.poll()
            self.last_line = self.line()
            self.out(self.last_line)


def with_capture(cfg: Config, folder: str) -> Config:
    """The demo's capture: every policy on (1 in 20 at random, a band of 0.05, classes 1 and 4 rare, camera
    top-2 on demand through the Redis set) and evidence crops, into `folder`, with a small size cap."""
    return config_mod.replace(cfg, capture={"enabled": True, "folder": folder, "sample_every": 20,
                                            "uncertain_band": 0.05, "rare_classes": (1, 4), "evidence": True,
                                            "max_bytes": 200_000_000, "evidence_max_bytes": 50_000_000})


def capture_lines(pipe: Any) -> list[str]:
    """Per policy: frames it matched and kept; then what became of the captures and the crops."""
    taps = [tap for tap in pipe.taps if hasattr(tap, "snapshot")]
    if not taps:
        return []
    counts = taps[0].snapshot()
    policies = ", ".join(f"{p} {counts.get('chosen:' + p, 0)} kept of {counts.get('matched:' + p, 0)} matched"
                         for p in ("on_demand", "rare", "uncertain", "random"))

    def results(kind: str) -> str:
        return ", ".join(f"{r} {counts[f'{kind}:{r}']}" for r in ("written", "queue_full", "over_cap", "error")
                         if counts.get(f"{kind}:{r}")) or "none"

    return [f"capture in {pipe.cfg.capture.folder}: {policies}",
            f"captures: {results('captures')}; evidence crops: {results('evidence')}"]


def run(cfg: Config, fps: float, seconds: float | None, bad_every: int = 0, seed: int = 0,
        out: Callable[[str], None] = print, every_s: float = 2.0) -> Summary:
    server = None
    if cfg.redis.url is None and cfg.redis.mode == "standalone":
        server = PrivateRedis()
        cfg = config_mod.replace(cfg, redis={"url": server.start()})
        out(f"started a private redis-server at {cfg.redis.url}")
    cfg = private_keys(cfg, "demo")
    if cfg.capture.enabled:  # the on-demand set under the run's prefix too: removed with its other keys
        cfg = config_mod.replace(cfg, capture={"on_demand_key": f"{cfg.redis.group}:{{{cfg.redis.line}}}:capture"})
    stop = threading.Event()
    client = clients.connect(cfg.redis)
    keys = cfg.redis.keys()
    pipe = line = screen = None
    try:
        if cfg.capture.enabled:  # camera top-2 on demand, as an operator would ask for it
            client.sadd(cfg.capture.on_demand_key, "camera:top-2")
        pipe = from_config(cfg)
        b = pipe.engine.backend
        out(f"engine {b.model_id} ({b.name} on {b.device}: {b.why}); camera: synthetic frames at {fps:g}/s into "
            f"{keys.frames}; events on {keys.events}")
        add = redis_adder(client, keys.frames)
        sent = [0]
        kinds = ("truncated", "wrong_size", "unknown_encoding", "not_msgpack")

        def add_counted(batch: list[dict[bytes, bytes]]) -> None:
            entries = []
            for fields in batch:  # malformed frames come in addition, so the camera's seq stays unbroken
                entries.append(fields)
                if bad_every and (sent[0] + len(entries)) % bad_every == 0:
                    entries.append(corrupt(kinds[(sent[0] + len(entries)) // bad_every % 4]))
            add(entries)
            sent[0] += len(entries)

        line = LineDemo(cfg, client, out)  # coils with ids and positions, two cameras, one roll mark
        screen, address = _screen(line.cfg, out)
        out(f"operator's screen on {address} (previews, strip map, alarms; Ctrl-C ends the demo)")
        frames = line.frames(seed)
        feeder = threading.Thread(target=feed, args=(add_counted, frames, 10**12, fps * line.cameras, stop.is_set),
                                  daemon=True)
        summary = Summary(client, cfg, lambda: sent[0], out)
        reporter = threading.Thread(target=summary.loop, args=(stop, every_s), daemon=True)
        if seconds:
            threading.Timer(seconds, pipe.stop).start()
        feeder.start()
        reporter.start()
        line.start(stop)
        pipe.run()
        stop.set()
        time.sleep(0.1)
        summary.poll()
        line.finish()
        out("final: " + summary.line() + f" | coils reported {line.coils_done}")
        for text in capture_lines(pipe):
            out(text)
        return summary
    finally:
        stop.set()
        if pipe is not None:
            pipe.close()
        if screen is not None:
            screen.stop()
        if line is not None:
            line.cleanup()
        if server is None:
            with contextlib.suppress(redis.RedisError):
                remove_keys(client, cfg)
        clients.close(client)
        if server is not None:
            server.stop()


def _screen(cfg: Config, out: Callable[[str], None]) -> tuple[Screen, str]:
    """The screen on screen.address, or, that port taken (a demo is not a service), on a free port of that host."""
    screen = Screen(cfg)
    try:
        return screen, screen.start()
    except RuntimeError:
        screen.close()
    host = cfg.screen.address.rpartition(":")[0]
    out(f"screen.address {cfg.screen.address} is in use: the screen takes a free port instead")
    screen = Screen(config_mod.replace(cfg, screen={"address": f"{host}:0"}))
    return screen, screen.start()
