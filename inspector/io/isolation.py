"""Keys of their own for the tools (`inspector bench --redis`, `inspector demo`), so that pointed at a plant's
Redis they never read, trim, delete or join the production stream and group: every key and the group carry a
per-run prefix, and cleaning up deletes only keys under it."""

from __future__ import annotations

import os
import uuid

import redis

from inspector import config as config_mod
from inspector.config import Config


def private_keys(cfg: Config, tool: str) -> Config:
    """`cfg` with every Redis key, the group and the consumer under `<tool>:<pid>-<random>:`."""
    run = f"{tool}:{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return config_mod.replace(cfg, redis={"frames_key": f"{run}:frames", "events_key": f"{run}:events",
                                          "dead_key": f"{run}:dead", "stats_key": f"{run}:stats", "group": run,
                                          "consumer": f"{run}-worker"})


def remove_keys(client: redis.Redis, cfg: Config) -> int:
    """Delete the run's streams and the worker's keys under its stats prefix; nothing else."""
    r = cfg.redis
    pattern = "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in r.stats_key) + ":*"
    keys = [r.frames_key, r.events_key, r.dead_key, *client.scan_iter(match=pattern, count=1000)]
    return int(client.delete(*keys))
