"""Every Redis key name, derived from the config in this one place (README "Scaling past one Redis").

Layout: each key of one line carries the line's hash tag, `inspect:{<line>}:...`. Redis Cluster hashes only the
part inside the braces, so one line's keys share one hash slot (every script's keys sit in one slot, as Cluster
requires) while several lines spread over the shards.

    inspect:{main}:frames                     frames stream             redis.frames_key overrides
    inspect:{main}:events                     events stream             redis.events_key
    inspect:{main}:frames:dead                dead letters              redis.dead_key
    inspect:{main}:stats:<consumer>           a worker's stats hash     redis.stats_key is the prefix
    <frames>:alive:<group>:<consumer>         a worker's heartbeat      (claiming reads it)
    <frames>:camera:<group>:<camera>[:seen]   a camera's seq tracking   (the publish script keeps it)
    <frames>:preview:<camera>                 a camera's latest preview (inspector/preview.py; preview.key_prefix)

Heartbeats and camera state hang off the frames stream and group they belong to: every worker that shares a
group shares them by construction, whatever else its config says, and they carry the stream's hash tag.

Another service adds its keys here: `LineKeys.named(name)` (or `line_key(line, name)`) for a key it derives,
e.g. `keys.named("coils")` -> `inspect:{main}:coils`; `resolve()` + `check()` for one its config section lets an
operator rename. Pure functions: nothing here talks to
Redis; config.py checks the layout with `check()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from inspector.errors import ConfigError

PREFIX = "inspect"
LINE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# redis.<field> -> the name after `inspect:{<line>}:` when the field is left unset
CONFIGURED = {
    "frames_key": "frames",
    "events_key": "events",
    "dead_key": "frames:dead",
    "stats_key": "stats",
}

# the names before the line layout (standalone only, config/inspector.yaml before redis.line): README's table
LEGACY = {"frames_key": "inspect:frames", "events_key": "inspect:events", "dead_key": "inspect:frames:dead",
          "stats_key": "inspect:stats"}


def hash_tag(key: str) -> str | None:
    """What Redis Cluster hashes in `key`: the text between the first `{` and the next `}`, if not empty."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    return key[start + 1:end] if end > start + 1 else None


def line_key(line: str, name: str) -> str:
    """`inspect:{<line>}:<name>`: a key of this line, in its hash slot."""
    return f"{PREFIX}:{{{line}}}:{name}"


def resolve(line: str, configured: str | None, name: str) -> str:
    """A configurable key: as configured, else `inspect:{<line>}:<name>`."""
    return configured if configured is not None else line_key(line, name)


def check(section: str, line: str, cluster: bool, values: dict[str, Any]) -> None:
    """ConfigError naming the first configured key that would leave the line's slot: a hash tag other than the
    line's (any mode: a copy-paste slip), or none at all in cluster mode."""
    if not LINE_NAME.fullmatch(line):
        raise ConfigError(f"config key '{section}.line' is {line!r}: use 1-64 letters, digits, '.', '_' or '-' "
                          "(it becomes the hash tag of every key of the line)")
    for field, value in values.items():
        if value is None:
            continue
        tag = hash_tag(value)
        example = line_key(line, CONFIGURED.get(field, field))
        if tag is not None and tag != line:
            raise ConfigError(f"config key '{section}.{field}' is '{value}': its hash tag {{{tag}}} is not the "
                              f"line's {{{line}}} ({section}.line): write e.g. {example}, or leave it unset")
        if tag is None and cluster:
            raise ConfigError(f"config key '{section}.{field}' is '{value}': in cluster mode every key must carry "
                              f"the line's hash tag {{{line}}}: write e.g. {example}, or leave it unset")


@dataclass(frozen=True)
class LineKeys:
    """The resolved key names of one line and consumer group (`RedisConfig.keys()`)."""

    line: str
    group: str
    frames: str
    events: str
    dead: str
    stats_prefix: str

    @classmethod
    def of(cls, redis_cfg: Any) -> LineKeys:
        """From a RedisConfig: each key of `CONFIGURED` as configured, else derived from `line`."""
        r = {f: resolve(redis_cfg.line, getattr(redis_cfg, f), name) for f, name in CONFIGURED.items()}
        return cls(redis_cfg.line, redis_cfg.group, r["frames_key"], r["events_key"], r["dead_key"], r["stats_key"])

    def stats(self, consumer: str) -> str:
        """The stats hash of one worker."""
        return f"{self.stats_prefix}:{consumer}"

    def alive(self, consumer: str) -> str:
        """The heartbeat of one consumer of the group: present while it lives, claimed from once gone."""
        return f"{self.frames}:alive:{self.group}:{consumer}"

    def camera(self, camera: str) -> tuple[str, str]:
        """A camera's seq tracking state: the hash (`w`, gaps, gap_runs, resets) and the waiting-seqs sorted set."""
        state = f"{self.frames}:camera:{self.group}:{camera}"
        return state, f"{state}:seen"

    def named(self, name: str) -> str:
        """Any other key of this line (another service's), in the line's slot."""
        return line_key(self.line, name)

    def pattern(self) -> str:
        """A SCAN / ACL pattern covering every derived key of the line (`inspect:{<line>}:*`)."""
        return line_key(self.line, "*")
