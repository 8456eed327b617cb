"""Least-privilege Redis ACL users, one per role, built from the key functions the code itself uses (README
"Security"), and the worker's start-time check that its own user may run what it needs.

    role(name, config, line) -> Role         the rules of one role on one line: commands and key patterns
    Role.setuser() / Role.aclfile_line()     a ready-to-paste `ACL SETUSER` line, or the `user ...` line of an aclfile
    probe(client, config, consumer, extra)   at worker start: every command of the worker's, once, in a form that
                                             changes nothing; SourceRefused naming the first refused command
    feature_probes(config)                   the probes of what the config turns on (capture's on-demand set,
                                             previews): the `extra` of the worker's check

Roles (a user per role and line, named `<role>-<line>`):
    camera   XADD to its line's frames stream, nothing else (ACL cannot forbid XADD's MAXLEN option: a camera
             that wants to can trim the frames stream; README "Security")
    worker   exactly the commands the worker and its Lua scripts run, on its line's frames, events, dead-letter,
             stats, heartbeat and camera-state keys; DEL on its heartbeat keys only (an ACL selector); SMEMBERS
             of capture's on-demand set (capture.enabled) and SET of its previews (preview.enabled), each in a
             selector of its own and only when the config turns it on
    coils    the line service (inspector/line/store.py and scripts.py): its inputs, its coils stream, its state
    reader   downstream systems: read the events and coils streams, write nothing
    screen   the operator's screen (inspector/screen/view.py): reads previews, events, the line service's state,
             the workers' stats and group, the coils stream; writes only the alarms stream and its active hash,
             from its ALARM script (XADD, HSETNX, HDEL in selectors on those two keys)

Why no ACL DRYRUN at start: DRYRUN is an @admin command, and a worker user allowed to run it would be allowed
more than it needs. `probe` runs each command instead, in a form that fails after Redis' ACL check without a
write (a group no stream has, a type error on the frames stream, an unknown script hash). Tests check the other
roles with DRYRUN as the admin.

Pure functions but `probe`; called from the consumer thread at start (RedisStreams.check_permissions).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from inspector.config import Config, RedisConfig
from inspector.errors import ConfigError, SourceRefused
from inspector.io.keys import LEGACY

ROLES = ("camera", "worker", "coils", "reader", "screen")
NO_GROUP = "~acl-probe"  # a consumer group no stream has: group commands fail NOGROUP after the ACL check

# Every command the worker sends, itself or from its Lua scripts (inspector/io/redis_streams.py, redis_scripts.py)
# and redis-py on its behalf (PING: health checks; SCRIPT LOAD / EXISTS: registered scripts; MULTI / EXEC: the
# stats pipeline; WAIT: redis.min_replicas_acked). XADD and DEL go in selectors of their own: XADD to the events
# and dead-letter streams only (a worker cannot forge frames), DEL of heartbeat keys only.
WORKER_COMMANDS = ("ping", "info", "time", "wait", "multi", "exec", "evalsha", "script|load", "script|exists",
                   "xgroup|create", "xreadgroup", "xpending", "xinfo|consumers", "xinfo|groups", "xlen", "xack",
                   "xclaim", "xtrim", "type", "exists", "set", "hget", "hset", "hincrby", "expire",
                   "zadd", "zrange", "zrem", "zcard")
# inspector/line/store.py and scripts.py; XADD (the coils stream) and DEL (its own state) in selectors
COILS_COMMANDS = ("ping", "info", "time", "multi", "exec", "evalsha", "script|load", "script|exists",
                  "xgroup|create", "xreadgroup", "xpending", "xinfo|consumers", "xinfo|groups", "xinfo|stream",
                  "xack", "xclaim", "xrange", "type", "exists", "get", "set", "strlen", "append", "expire",
                  "hget", "hset", "hdel", "hincrby", "hgetall", "zadd", "zrange", "zrem", "sadd", "srem",
                  "smembers")
CAMERA_COMMANDS = ("ping", "xadd", "client|id", "wait")  # inspector/feed.py (CLIENT ID + WAIT: --wait-replicas)
READER_COMMANDS = ("ping", "xread", "xrange", "xrevrange", "xlen", "xinfo|stream")
# inspector/screen/view.py, each round: GET (previews), SCAN (no camera placement: the preview keys; the heartbeat
# and stats keys: SCAN checks no key patterns), XREAD / XREVRANGE (events, coils, alarms), HGETALL (the line
# service's cameras and coil meta, stats, the active alarms), GETRANGE (the coil's log), XINFO GROUPS (frames);
# EVALSHA + SCRIPT LOAD (its ALARM script, redis-py's Script); PING (health checks). The script's XADD, HSETNX and
# HDEL go in selectors on the alarms keys.
SCREEN_COMMANDS = ("ping", "get", "getrange", "hgetall", "scan", "xread", "xrevrange", "xinfo|groups", "evalsha",
                   "script|load")


@dataclass(frozen=True)
class Role:
    """One ACL user: its name, what it is for, and its rules (after `ACL SETUSER <name> on <password>`)."""

    role: str
    user: str
    what: str
    rules: tuple[str, ...]

    def _head(self, password: str | None) -> list[str]:
        # `#<sha256>`: the server (and the aclfile) never holds the password itself
        secret = [f"#{hashlib.sha256(password.encode()).hexdigest()}"] if password else []
        return [self.user, "reset", "on", *secret]  # reset: no password, keys, channels or commands to start from

    def setuser(self, password: str | None = None) -> str:
        """`ACL SETUSER ...`, ready to paste into redis-cli as an admin. Without a password the user cannot log
        in until one is set (`ACL SETUSER <user> >PASSWORD`)."""
        return " ".join(["ACL", "SETUSER", *self._head(password), *(f'"{r}"' if " " in r else r for r in self.rules)])

    def aclfile_line(self, password: str | None = None) -> str:
        """The same user as a line of an aclfile (redis.conf `aclfile`, then `ACL LOAD`)."""
        return " ".join(["user", *self._head(password), *self.rules])


def _commands(names: tuple[str, ...]) -> list[str]:
    return [f"+{n}" for n in names]


def _db(cfg: Config) -> list[str]:
    """SELECT when redis.url names a database other than 0 (redis-py selects it on every connection)."""
    url = cfg.redis.url or ""
    db = urllib.parse.urlsplit(url).path.strip("/") if url.startswith(("redis://", "rediss://")) else ""
    return ["+select"] if db not in ("", "0") else []


def _cluster(cfg: Config) -> list[str]:
    """What redis-py's cluster client reads to route commands (the slot map, the command table)."""
    return ["+cluster|slots", "+cluster|shards", "+cluster|nodes", "+command"] if cfg.redis.mode == "cluster" else []


def _camera(cfg: Config) -> tuple[str, list[str]]:
    k = cfg.redis.keys()
    return (f"XADD to {k.frames} only", [*_commands(CAMERA_COMMANDS), *_db(cfg),
                                         *_cluster(cfg), f"~{k.frames}"])


def _worker(cfg: Config) -> tuple[str, list[str]]:
    k = cfg.redis.keys()
    camera_state, _ = k.camera("*")
    keys = [f"~{k.frames}", f"~{k.events}", f"~{k.dead}", f"~{k.stats('*')}", f"~{k.alive('*')}",
            f"~{camera_state}"]
    if cfg.redis.mode == "standalone" and cfg.redis.frames_key is None:
        keys.append(f"%R~{LEGACY['frames_key']}")  # the stream's name before redis.line: read to warn, never written
    selectors = [f"(~{k.events} ~{k.dead} +xadd)",  # XADD to its outputs only: no forged frames
                 f"(~{k.alive('*')} +del)"]  # a warm stop drops its heartbeat; no DEL of anything else
    if cfg.capture.enabled:
        selectors.append(f"(%R~{_on_demand_key(cfg)} +smembers)")  # the capture writer reads the on-demand set
    if cfg.preview.enabled:
        selectors.append(f"(~{_preview_prefix(cfg)}:* +set)")  # SET ... EX: each camera's latest preview
    return (f"consumer group {k.group} on {k.frames}: events to {k.events}, dead letters to {k.dead}",
            [*_commands(WORKER_COMMANDS), *_db(cfg), *_cluster(cfg), *keys, *selectors])


def _coils(cfg: Config) -> tuple[str, list[str]]:
    from inspector.line.keys import LineKeys as CoilKeys

    c = CoilKeys.from_config(cfg)
    return (f"line service: reads {c.events} and {c.coil_ends}, writes {c.coils} and {c.prefix}:*",
            [*_commands(COILS_COMMANDS), *_db(cfg), *_cluster(cfg),
             f"~{c.events}", f"~{c.coil_ends}", f"~{c.coils}", f"~{c.prefix}:*",
             f"(~{c.coils} +xadd)", f"(~{c.prefix}:* +del)"])  # it writes no input, deletes only its own state


def _reader(cfg: Config) -> tuple[str, list[str]]:
    from inspector.line.keys import LineKeys as CoilKeys

    k, c = cfg.redis.keys(), CoilKeys.from_config(cfg)
    return (f"reads {k.events} and {c.coils}, writes nothing",
            [*_commands(READER_COMMANDS), *_db(cfg), *_cluster(cfg),
             f"%R~{k.events}", f"%R~{c.coils}"])


def _screen(cfg: Config) -> tuple[str, list[str]]:
    from inspector.line.keys import LineKeys as CoilKeys
    from inspector.screen.view import alarms_key

    k, c, alarms = cfg.redis.keys(), CoilKeys.from_config(cfg), alarms_key(cfg)
    reads = [f"%R~{_preview_prefix(cfg)}:*", f"%R~{k.events}", f"%R~{c.cameras}", f"%R~{c.meta('*')}",
             f"%R~{c.log('*')}", f"%R~{k.stats('*')}", f"%R~{k.frames}", f"%R~{c.coils}"]
    # the alarms keys read and written: EVALSHA declares them, and its key spec asks for both
    return (f"operator's screen: reads the line's state, writes {alarms} and {alarms}:active only",
            [*_commands(SCREEN_COMMANDS), *_db(cfg), *_cluster(cfg), *reads, f"~{alarms}", f"~{alarms}:active",
             f"(~{alarms} +xadd)", f"(~{alarms}:active +hsetnx +hdel)"])


def _on_demand_key(cfg: Config) -> str:
    from inspector.capture import on_demand_key

    return on_demand_key(cfg)


def _preview_prefix(cfg: Config) -> str:
    from inspector.preview import prefix

    return prefix(cfg)


_ROLES: dict[str, Callable[[Config], tuple[str, list[str]]]] = {
    "camera": _camera, "worker": _worker, "coils": _coils, "reader": _reader, "screen": _screen,
}


def role(name: str, cfg: Config, line: str | None = None) -> Role:
    """The ACL user of role `name` on `line` (default redis.line), its keys derived as the code derives them."""
    if name not in _ROLES:
        raise ConfigError(f"unknown ACL role '{name}': use one of {', '.join(_ROLES)}")
    if line is not None and line != cfg.redis.line:
        from inspector import config as configs

        cfg = configs.replace(cfg, redis={"line": line})
    what, rules = _ROLES[name](cfg)
    return Role(name, f"{name}-{cfg.redis.line}", what, tuple(rules))


def grant_hint(redis_cfg: RedisConfig, name: str = "worker") -> str:
    return f"`inspector acl --role {name} --line {redis_cfg.line}`"


# -- the worker's start-time check ---------------------------------------------------------------------------

def _probes(cfg: RedisConfig, consumer: str) -> list[tuple[str, list[Any]]]:
    """(command, arguments) for every command of WORKER_COMMANDS and DEL, each harmless: it fails after the ACL
    check (a type error on the frames stream, an id no entry has, an unknown script) or changes nothing."""
    k, g = cfg.keys(), cfg.group
    f = k.frames  # exists (the group is created first) and is a stream: hash / zset commands on it fail WRONGTYPE
    state, seen = k.camera("~probe")
    return [
        ("ping", ["PING"]), ("info", ["INFO", "server"]), ("time", ["TIME"]), ("wait", ["WAIT", 0, 1]),
        ("evalsha", ["EVALSHA", "0" * 40, 1, f]), ("script|exists", ["SCRIPT", "EXISTS", "0" * 40]),
        ("script|load", ["SCRIPT", "LOAD", "return 1"]),
        ("xgroup|create", ["XGROUP", "CREATE", f, g, "0"]),  # BUSYGROUP: it exists
        ("xreadgroup", ["XREADGROUP", "GROUP", NO_GROUP, consumer, "COUNT", 1, "STREAMS", f, "0"]),
        ("xpending", ["XPENDING", f, g, "-", "+", 1, consumer]), ("xinfo|consumers", ["XINFO", "CONSUMERS", f, g]),
        ("xinfo|groups", ["XINFO", "GROUPS", f]), ("xlen", ["XLEN", f]), ("xack", ["XACK", f, NO_GROUP, "0-1"]),
        ("xadd", ["XADD", k.events, "NOMKSTREAM", "0-0", "probe", ""]),  # refused: the id must be above 0-0
        ("xadd", ["XADD", k.dead, "NOMKSTREAM", "0-0", "probe", ""]),
        ("xclaim", ["XCLAIM", f, NO_GROUP, consumer, 0, "0-1"]), ("xtrim", ["XTRIM", f, "MINID", 0]),
        ("type", ["TYPE", state]), ("exists", ["EXISTS", seen]), ("hget", ["HGET", state, "w"]),
        ("hset", ["HSET", f, "probe", ""]), ("hincrby", ["HINCRBY", f, "probe", 0]),
        ("expire", ["EXPIRE", state, 1]), ("zadd", ["ZADD", f, 0, "probe"]), ("zrange", ["ZRANGE", seen, 0, 0]),
        ("zrem", ["ZREM", f, "probe"]), ("zcard", ["ZCARD", seen]),
        ("set", ["SET", f, "", "NX", "GET"]),  # exists: NX writes nothing, GET of a stream is WRONGTYPE
        ("del", ["DEL", k.alive("~probe")]),  # in the heartbeat selector; no consumer has this name
    ]


def feature_probes(cfg: Config) -> list[tuple[str, list[Any]]]:
    """The probes of the worker's optional parts the config turns on, each harmless like `_probes`: SMEMBERS reads;
    SET with `EX 0` fails its argument check after the ACL check, whether or not the key exists."""
    out: list[tuple[str, list[Any]]] = []
    if cfg.capture.enabled:
        out.append(("smembers", ["SMEMBERS", _on_demand_key(cfg)]))
    if cfg.preview.enabled:
        out.append(("set", ["SET", f"{_preview_prefix(cfg)}:~probe", "probe", "EX", 0]))
    return out


def refused_command(text: str) -> str | None:
    """The command a NOPERM reply names (`... to run the 'xack' command` -> XACK), `a command on one of its keys`
    for a key refusal; None when `text` is no NOPERM (an EXECABORT carries the NOPERM of the EXEC it aborted)."""
    if "NOPERM" not in text:
        return None
    found = re.search(r"run the '([^']+)' command", text)
    return found.group(1).upper() if found else "a command on one of its keys"


def probe(client: redis.Redis, cfg: RedisConfig, consumer: str,
          extra: Sequence[tuple[str, list[Any]]] = ()) -> None:
    """SourceRefused in one line naming the first command (and key) the worker's user may not run, and the
    `inspector acl` line that grants it; nothing if all pass. Other errors (the ones each probe provokes) pass;
    connection errors reach the caller (a retry may help). One connection, raw replies (no reply parsing).
    `extra`: more probes of the same kind (`feature_probes`), run after the worker's own."""
    user = urllib.parse.unquote(urllib.parse.urlsplit(cfg.url or "").username or "") or "default"
    probes = [*_probes(cfg, consumer), *extra, ("multi", ["MULTI"]), ("ping", ["PING"]), ("exec", ["EXEC"])]
    conn = client.connection_pool.get_connection()
    try:
        for command, args in probes:
            try:
                conn.send_command(*args)
                conn.read_response()
            except redis.exceptions.ResponseError as exc:
                text = str(exc).strip()
                named = refused_command(f"NOPERM {text}" if isinstance(exc, redis.exceptions.NoPermissionError)
                                        else text)
                if named is None:
                    continue  # the error the probe provokes, after the ACL check passed
                if "run the '" not in text:  # a key refused: name the command and the key
                    named = f"{command.split('|')[0].upper()} on {args[1] if len(args) > 1 else 'one of its keys'}"
                if command == "multi":
                    conn.send_command("DISCARD")  # nothing queued; leave the connection as it was
                    with contextlib.suppress(redis.exceptions.ResponseError):
                        conn.read_response()
                raise SourceRefused(
                    f"Redis user {user} may not run {named} ({' '.join(map(str, args[:3]))}), which the worker "
                    f"needs ({text or 'NOPERM'}): grant it with {grant_hint(cfg)} (paste its ACL SETUSER line as "
                    "an admin)") from None
    finally:
        client.connection_pool.release(conn)
