"""Keys of their own for the tools (`inspector bench --redis`, `inspector demo`), so that pointed at a plant's
Redis they never read, trim, delete or join the production stream and group: every key and the group carry a
per-run prefix, and cleaning up deletes only keys under it. The keys keep the line's hash tag, so a tool works
on a Redis Cluster too, on the node that serves the line."""

from __future__ import annotations

import os
import uuid
from typing import Any

from inspector import config as config_mod
from inspector.config import Config


def private_keys(cfg: Config, tool: str) -> Config:
    """`cfg` with every Redis key, the group and the consumer under `<tool>:<pid>-<random>:`."""
    run = f"{tool}:{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tagged = f"{run}:{{{cfg.redis.line}}}"
    return config_mod.replace(cfg, redis={"frames_key": f"{tagged}:frames", "events_key": f"{tagged}:events",
                                          "dead_key": f"{tagged}:dead", "stats_key": f"{tagged}:stats", "group": run,
                                          "consumer": f"{run}-worker"})


def remove_keys(client: Any, cfg: Config) -> int:
    """Delete the run's streams and the worker's keys (all under the run's prefix, the group name); nothing else."""
    keys = cfg.redis.keys()
    pattern = "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in cfg.redis.group) + ":*"
    names = {keys.frames, keys.events, keys.dead, *client.scan_iter(match=pattern, count=1000)}
    return sum(int(client.delete(name)) for name in names)
