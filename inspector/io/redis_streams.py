"""Frames in and events out over Redis Streams, with a consumer group (notes: shared/notes/redis-streams.md).

Reading: on start and after every reconnect this consumer re-reads its own pending list once, with a cursor
(never the same entry twice in one pass, so delivery counts grow by one per restart, not per call); then it
claims the pending frames of consumers whose heartbeat key has expired (`redis_scripts.CLAIM`), then reads new
entries (`>`). Redis counts deliveries: past `max_deliveries - 2` an entry is marked `isolate` (processed alone),
past `max_deliveries` it is marked `poison` (rejected, dead-lettered).

Writing: one `redis_scripts.PUBLISH` call per batch: events, dead letters, acks, seq gaps and the frames-stream
trim, atomically and fenced. Frames acked by every group (or by ours, `frames_trim: own_group`) are removed with
XTRIM MINID (Redis 7.x); on Redis 8.2+ the trim also carries ACKED, so the server checks every group too.

Errors: SourceUnavailable for what a retry may fix (connection lost, LOADING, OOM, READONLY during a failover),
SourceRefused for what it cannot (wrong password, missing ACL permission, a key holding another type). The URL
in every message has its password replaced by ***.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from inspector.config import CameraConfig, RedisConfig
from inspector.errors import SourceError, SourceRefused, SourceUnavailable
from inspector.io.base import Entry, Gap, Outcome, Published, SourceState, redelivered
from inspector.io.redis_scripts import CLAIM, PUBLISH
from inspector.protocol import dead_letter_fields

log = logging.getLogger(__name__)

_TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "OOM", "READONLY", "NOGROUP")
_HINTS = {
    "OOM": "Redis is out of memory (maxmemory): frames stay pending until memory frees",
    "READONLY": "redis.url points at a read-only replica (or a failover is under way)",
    "LOADING": "Redis is loading its data set after a restart",
    "NOGROUP": "the consumer group vanished, Redis restarted empty? it is created again",
}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def classify(exc: redis.RedisError, url: str, doing: str) -> SourceError:
    """A redis-py error as SourceUnavailable (retry) or SourceRefused (stop), in one line naming the fix."""
    text = _first_line(exc)
    head = text.split(" ", 1)[0]
    if isinstance(exc, redis.AuthenticationError) or head in ("WRONGPASS", "NOAUTH", "NOPERM") \
            or "invalid password" in text or "invalid username-password" in text:
        return SourceRefused(f"Redis at {url} refused {doing}: {text}: put the right user and password in "
                             "redis.url (redis://USER:PASSWORD@HOST:PORT/DB) or INSPECTOR_REDIS_URL")
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return SourceUnavailable(f"Redis at {url} unreachable ({doing}): {text}")
    if head in _TRANSIENT:
        return SourceUnavailable(f"Redis at {url} refused {doing} for now: {text}"
                                 + (f" ({_HINTS[head]})" if head in _HINTS else ""))
    if head == "WRONGTYPE":
        return SourceRefused(f"Redis at {url} refused {doing}: {text}: a configured key (redis.frames_key, "
                             "events_key, dead_key) holds another type; point it at a stream key")
    return SourceRefused(f"Redis at {url} refused {doing}: {text}")


class RedisStreams:
    """FrameSource and EventSink over one Redis server."""

    def __init__(self, cfg: RedisConfig, camera: CameraConfig | None = None,
                 client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self.camera = camera or CameraConfig()
        self.name = cfg.consumer_name()
        self.block_ms = cfg.block_ms
        self.heartbeat_every_s = cfg.heartbeat_ttl_ms / 3000.0  # three chances before the key expires
        self.url = cfg.safe_url()
        self.client = client or redis.Redis.from_url(
            cfg.url or "redis://127.0.0.1:6379/0", socket_timeout=cfg.socket_timeout_s,
            socket_connect_timeout=min(cfg.socket_timeout_s, 5.0), health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
        self._publish = self.client.register_script(PUBLISH)
        self._claim_script = self.client.register_script(CLAIM)
        self.heartbeat_key = f"{cfg.stats_key}:alive:{cfg.group}:{self.name}"
        self.camera_prefix = f"{cfg.stats_key}:camera:{cfg.group}:"
        self._recovering = True
        self._cursor = "0"
        self._next_claim = 0.0
        self._group_ready = False
        self._trim_acked = False  # Redis 8.2+: XTRIM ... ACKED

    # -- set-up ------------------------------------------------------------------------------------------
    def _call(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                self._recovering = True  # a lost XREADGROUP reply leaves entries pending that we never saw
            if "NOGROUP" in str(exc):
                self._group_ready = False
            raise classify(exc, self.url, doing) from None

    def ensure_group(self) -> None:
        """Create the group at id 0 with MKSTREAM (never `$`: frames queued before the first start count)."""
        info = self._call("INFO", self.client.info, "server")
        major, minor = (int(x) for x in str(info.get("redis_version", "0.0")).split(".")[:2])
        self._trim_acked = (major, minor) >= (8, 2)
        try:
            self.client.xgroup_create(self.cfg.frames_key, self.cfg.group, id="0", mkstream=True)
            log.info("%s: created consumer group %s on %s", self.name, self.cfg.group, self.cfg.frames_key)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise classify(exc, self.url, "creating the consumer group") from None
        except redis.RedisError as exc:
            raise classify(exc, self.url, "creating the consumer group") from None
        self._group_ready = True

    def wait_ready(self, timeout_s: float) -> None:
        """At start: retry until Redis answers and the group exists, at most `timeout_s`; then raise the last
        error (one line). Refusals (a wrong password) are raised at once."""
        deadline = time.monotonic() + timeout_s
        wait = 0.1
        while True:
            try:
                self.ensure_group()
                return
            except SourceUnavailable as exc:
                if time.monotonic() + wait > deadline:
                    raise SourceUnavailable(f"{exc} (gave up after {timeout_s:g} s, redis.startup_wait_s): "
                                            "start Redis or fix redis.url / INSPECTOR_REDIS_URL") from None
                log.warning("%s: %s; retrying in %.1f s", self.name, exc, wait)
                time.sleep(wait)
                wait = min(wait * 2, 2.0)

    # -- reading -----------------------------------------------------------------------------------------
    def recover(self) -> None:
        self._recovering = True

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        if not self._group_ready:
            self.ensure_group()
            self._recovering, self._cursor = True, "0"
        if self._recovering:
            own = self._xreadgroup(self._cursor, count, None)
            if own:
                self._cursor = own[-1][0]
                return self._with_deliveries(own)
            self._recovering, self._cursor = False, "0"
            log.debug("%s: pending list re-read, reading new entries", self.name)
        if time.monotonic() >= self._next_claim:
            claimed = self._claim(count)
            if claimed:
                return claimed
            self._next_claim = time.monotonic() + self.cfg.claim_every_s
        return [Entry(i, f, 1) for i, f in self._xreadgroup(">", count, block_ms)]

    def _xreadgroup(self, start: str, count: int, block_ms: int | None) -> list[tuple[str, Any]]:
        reply = self._call("reading frames", self.client.xreadgroup, self.cfg.group, self.name,
                           {self.cfg.frames_key: start}, count=count, block=block_ms)
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            entries = next(iter(reply.values()))
            entries = entries[0] if entries and isinstance(entries[0], list) and len(entries) == 1 else entries
        else:
            entries = reply[0][1]
        return [(_text(i), f or None) for i, f in entries]

    def _mark(self, entry_id: str, fields: dict[bytes, bytes] | None, deliveries: int) -> Entry:
        return redelivered(entry_id, fields, deliveries, self.cfg.max_deliveries)

    def _with_deliveries(self, entries: list[tuple[str, Any]]) -> list[Entry]:
        info = self._call("reading delivery counts", self.client.xpending_range, self.cfg.frames_key,
                          self.cfg.group, entries[0][0], entries[-1][0], len(entries) * 2, consumername=self.name)
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in info}
        return [self._mark(i, f, counts.get(i, 1)) for i, f in entries]

    def _claim(self, count: int) -> list[Entry]:
        prefix = self.heartbeat_key[: -len(self.name)]
        reply = self._call("claiming frames of dead workers", self._claim_script, keys=[self.cfg.frames_key],
                           args=[self.cfg.group, self.name, prefix, count])
        if not reply:
            return []
        dead, claimed, deleted = _text(reply[0]), reply[1], int(reply[2])
        entries = []
        for entry_id, flat, deliveries in claimed:
            fields = {flat[j]: flat[j + 1] for j in range(0, len(flat), 2)} if flat else None
            entries.append(self._mark(_text(entry_id), fields, int(deliveries)))
        log.warning("%s: claimed %d frame(s) from %s (no heartbeat for %d ms)%s", self.name, len(entries), dead,
                    self.cfg.heartbeat_ttl_ms, f"; {deleted} were no longer in the stream" if deleted else "")
        return entries

    # -- liveness and state ------------------------------------------------------------------------------
    def heartbeat(self) -> None:
        self._call("writing the heartbeat", self.client.set, self.heartbeat_key, b"1", px=self.cfg.heartbeat_ttl_ms)

    def probe(self) -> SourceState:
        try:
            groups = self.client.xinfo_groups(self.cfg.frames_key)
            length = self.client.xlen(self.cfg.frames_key)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return SourceState(True, False, error="the frames stream does not exist yet")
            return SourceState(False, error=str(classify(exc, self.url, "XINFO GROUPS")))
        except redis.RedisError as exc:
            return SourceState(False, error=str(classify(exc, self.url, "XINFO GROUPS")))
        for g in groups:
            if _text(g["name"]) == self.cfg.group:
                # Redis' lag drifts after an AOF reload (replayed reads do not move entries-read) or is null after
                # deletions; undelivered entries can never outnumber the stream's entries that are not pending
                pending, bound = int(g["pending"]), max(int(length) - int(g["pending"]), 0)
                lag = bound if g.get("lag") is None else min(int(g["lag"]), bound)
                return SourceState(True, True, lag, pending, int(length))
        return SourceState(True, False, length=int(length), error=f"consumer group {self.cfg.group} does not exist")

    # -- writing -----------------------------------------------------------------------------------------
    def publish(self, outcomes: Sequence[Outcome]) -> Published:
        if not outcomes:
            return Published([])
        cfg = self.cfg
        args: list[Any] = [cfg.group, self.name, cfg.events_maxlen, cfg.dead_maxlen, cfg.frames_trim,
                           int(cfg.frames_retention_s * 1000), self.camera_prefix, cfg.camera_state_ttl_s,
                           self.camera.max_seq_jump, int(self._trim_acked), len(outcomes)]
        for out in outcomes:
            dead: list[bytes] = []
            if out.dead_letter_error is not None:
                dead = dead_letter_fields(out.entry.fields, out.dead_letter_error, out.entry.id, self.name,
                                          out.entry.deliveries, self.camera.max_payload_bytes)
            args += [out.entry.id, out.event, out.camera, out.seq, len(dead), *dead]
        reply = self._call(f"publishing {len(outcomes)} events", self._publish,
                           keys=[cfg.frames_key, cfg.events_key, cfg.dead_key], args=args)
        done, flat, _trimmed = reply
        gaps = [Gap(_text(flat[j]), int(flat[j + 1]), int(flat[j + 2]), _text(flat[j + 3]))
                for j in range(0, len(flat), 4)]
        return Published([bool(x) for x in done], gaps)

    def report(self, stats: dict[str, float]) -> None:
        key = f"{self.cfg.stats_key}:{self.name}"
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, mapping={k: str(v) for k, v in stats.items()})
            pipe.expire(key, self.cfg.stats_ttl_s)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("%s: stats not reported: %s", self.name, _first_line(exc))

    def close(self) -> None:
        """Drop the heartbeat (the others may claim at once whatever is still pending) and the connections."""
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self.heartbeat_key)
        self.client.close()
