"""Frames in and events out over Redis Streams, with a consumer group (notes: shared/notes/redis-streams.md).

Reading: on start and after every reconnect this consumer re-reads its own pending list once, with a cursor
(never the same entry twice in one pass, so delivery counts grow by one per restart, not per call); then it
claims the pending frames of consumers whose heartbeat key has expired (`redis_scripts.CLAIM`), then reads new
entries (`>`). Redis counts deliveries: past `max_deliveries - 2` an entry is marked `isolate` (processed alone),
past `max_deliveries` it is marked `poison` (rejected, dead-lettered).

Writing: one `redis_scripts.PUBLISH` call per batch: events, dead letters, acks, seq gaps and the frames-stream
trim, atomically and fenced. Frames acked by every group (or by ours, `frames_trim: own_group`) are removed with
XTRIM MINID (Redis 7.x); on Redis 8.2+ the trim also carries ACKED, so the server checks every group too.

Keys: every name comes from `cfg.keys()` (inspector/io/keys.py) and every script declares the keys it touches,
all in the line's hash slot; the client comes from `client.connect()` (standalone, Cluster or Sentinel).

Durability: with `min_replicas_acked` N > 0 the publish script and a `WAIT N replica_wait_ms` go out in one
pipeline on the connection of the node that holds the line's slot; when fewer replicas confirm, publish raises
SourceUnavailable and the caller's retry confirms again (a heartbeat write and WAIT on one connection) instead
of running the script twice: the batch counts as published once N replicas hold it (README).

Errors: SourceUnavailable for what a retry may fix (connection lost, LOADING, OOM, READONLY or MOVED during a
failover, TRYAGAIN, CLUSTERDOWN, too few replicas), SourceRefused for what it cannot (wrong password, missing ACL
permission, a key holding another type). The URL in every message has its password replaced by ***.

Threads: the consumer thread reads and publishes, the supervisor heartbeats, reports and probes; redis-py's
connection pools are thread-safe, and the fields here are the consumer thread's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import ClusterError, RedisClusterException, SlotNotCoveredError

from inspector.config import CameraConfig, RedisConfig
from inspector.errors import SourceError, SourceRefused, SourceUnavailable
from inspector.io import client as clients
from inspector.io.acl import grant_hint, refused_command
from inspector.io.acl import probe as probe_permissions
from inspector.io.base import Entry, Gap, Outcome, Published, SourceState, redelivered
from inspector.io.keys import LEGACY
from inspector.io.redis_scripts import CLAIM, PUBLISH
from inspector.protocol import dead_letter_fields

log = logging.getLogger(__name__)

_TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "OOM", "READONLY", "NOGROUP", "MOVED",
              "ASK", "NOREPLICAS")
_HINTS = {
    "OOM": "Redis is out of memory (maxmemory): frames stay pending until memory frees",
    "READONLY": "redis.url points at a read-only replica (or a failover is under way)",
    "LOADING": "Redis is loading its data set after a restart",
    "NOGROUP": "the consumer group vanished, Redis restarted empty? it is created again",
    "MOVED": "the line's hash slot moved to another node (a failover or resharding): following it",
    "ASK": "the line's hash slot is migrating: following it",
    "TRYAGAIN": "the line's hash slot is migrating",
    "CLUSTERDOWN": "the cluster is failing over or lost a slot's master and every replica",
    "NOREPLICAS": "the master refuses writes while fewer replicas than its min-replicas-to-write are in sync",
}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def classify(exc: BaseException, url: str, doing: str, grant: str | None = None) -> SourceError:
    """A redis-py error as SourceUnavailable (retry) or SourceRefused (stop), in one line naming the fix; `grant`
    names the `inspector acl` line for a permission the user lacks."""
    text = _first_line(exc)
    code = getattr(exc, "status_code", None)  # redis-py strips it off the text of READONLY, OOM, MOVED, ...
    if code and not text.startswith(code):
        text = f"{code} {text}"
    head = text.split(" ", 1)[0]
    if isinstance(exc, redis.exceptions.NoPermissionError) and not text.startswith("NOPERM"):
        text, head = f"NOPERM {text}", "NOPERM"
    if head == "NOPERM" and grant:
        return SourceRefused(f"Redis at {url} refused {doing}: the user may not run {refused_command(text)} "
                             f"({text}): grant it with {grant} (paste its ACL SETUSER line as an admin)")
    if isinstance(exc, redis.AuthenticationError) or head in ("WRONGPASS", "NOAUTH", "NOPERM") \
            or "invalid password" in text or "invalid username-password" in text:
        return SourceRefused(f"Redis at {url} refused {doing}: {text}: put the right user and password in "
                             "redis.url (redis://USER:PASSWORD@HOST:PORT/DB) or INSPECTOR_REDIS_URL")
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | ClusterError | SlotNotCoveredError):
        return SourceUnavailable(f"Redis at {url} unreachable ({doing}): {text}")
    if head in _TRANSIENT:
        return SourceUnavailable(f"Redis at {url} refused {doing} for now: {text}"
                                 + (f" ({_HINTS[head]})" if head in _HINTS else ""))
    if head == "WRONGTYPE":
        return SourceRefused(f"Redis at {url} refused {doing}: {text}: a configured key (redis.frames_key, "
                             "events_key, dead_key) holds another type; point it at a stream key")
    if head == "CROSSSLOT" or isinstance(exc, RedisClusterException):
        return SourceRefused(f"Redis at {url} refused {doing}: {text}: every key of a line must carry its hash "
                             "tag (README \"Scaling past one Redis\")")
    return SourceRefused(f"Redis at {url} refused {doing}: {text}")


class RedisStreams:
    """FrameSource and EventSink over one line's streams, on a standalone Redis, a Cluster or a Sentinel set-up."""

    def __init__(self, cfg: RedisConfig, camera: CameraConfig | None = None, client: Any = None,
                 probes: Sequence[tuple[str, list[Any]]] = ()) -> None:
        self.cfg = cfg
        self.probes = tuple(probes)  # the start-time check's probes of the parts beside it (acl.feature_probes)
        self.camera = camera or CameraConfig()
        self.keys = cfg.keys()
        self.name = cfg.consumer_name()
        self.block_ms = cfg.block_ms
        self.heartbeat_every_s = cfg.heartbeat_ttl_ms / 3000.0  # three chances before the key expires
        self.url = clients.where(cfg)
        self.heartbeat_key = self.keys.alive(self.name)
        self._client = client
        self._recovering = True
        self._cursor = "0"
        self._next_claim = 0.0
        self._group_ready = False
        self._trim_acked = False  # Redis 8.2+: XTRIM ... ACKED
        self._unconfirmed: tuple[list[str], Published] | None = None  # published, not yet on enough replicas
        self._registered: tuple[Any, Any] | None = None  # PUBLISH and CLAIM (consumer thread)
        self._connecting = threading.Lock()
        self._stale_map = False  # cluster: re-read the slot map before the next call on the slot's node
        self._permitted = False  # check_permissions passed once (at start)
        self._grant = grant_hint(cfg)  # the `inspector acl` line a NOPERM message names

    @property
    def client(self) -> Any:
        """The client, made on first use by whichever thread comes first (a cluster client reads the slot map
        when made: the cluster may be away)."""
        if self._client is None:
            with self._connecting:
                if self._client is None:
                    self._client = clients.connect(self.cfg)
        return self._client

    # -- set-up ------------------------------------------------------------------------------------------
    def _call(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.RedisError, RedisClusterException) as exc:
            if isinstance(exc, redis.ConnectionError | redis.TimeoutError | ClusterError):
                self._recovering = True  # a lost XREADGROUP reply leaves entries pending that we never saw
            if "NOGROUP" in str(exc):
                self._group_ready = False
            raise classify(exc, self.url, doing, self._grant) from None

    def ensure_group(self) -> None:
        """Create the group at id 0 with MKSTREAM (never `$`: frames queued before the first start count)."""
        frames = self.keys.frames
        info = self._call("INFO", lambda: clients.slot_client(self.client, frames).info("server"))
        major, minor = (int(x) for x in str(info.get("redis_version", "0.0")).split(".")[:2])
        self._trim_acked = (major, minor) >= (8, 2)
        try:
            self.client.xgroup_create(frames, self.cfg.group, id="0", mkstream=True)
            log.info("%s: created consumer group %s on %s", self.name, self.cfg.group, frames)
            self._warn_if_legacy()
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise classify(exc, self.url, "creating the consumer group", self._grant) from None
        except (redis.RedisError, RedisClusterException) as exc:
            raise classify(exc, self.url, "creating the consumer group", self._grant) from None
        self._group_ready = True

    def _warn_if_legacy(self) -> None:
        """A standalone Redis whose cameras still write to the stream's name before `redis.line`: say the fix."""
        if self.cfg.mode != "standalone" or self.cfg.frames_key is not None:
            return
        with contextlib.suppress(redis.RedisError):
            if self.client.type(LEGACY["frames_key"]) == b"stream" and self.client.xlen(LEGACY["frames_key"]):
                log.warning("%s: frames wait on %s, the name before redis.line, and this worker reads %s: set "
                            "redis.frames_key: %s (and events_key, dead_key, stats_key as README \"Scaling past "
                            "one Redis\" lists) to keep the old names, or RENAME the streams", self.name,
                            LEGACY["frames_key"], self.keys.frames, LEGACY["frames_key"])

    def wait_ready(self, timeout_s: float) -> None:
        """At start: retry until Redis answers and the group exists, at most `timeout_s`; then raise the last
        error (one line). Refusals (a wrong password) are raised at once."""
        deadline = time.monotonic() + timeout_s
        wait = 0.1
        while True:
            try:
                self.ensure_group()
                self.check_permissions()
                return
            except SourceUnavailable as exc:
                if time.monotonic() + wait > deadline:
                    raise SourceUnavailable(f"{exc} (gave up after {timeout_s:g} s, redis.startup_wait_s): "
                                            "start Redis or fix redis.url / INSPECTOR_REDIS_URL") from None
                log.warning("%s: %s; retrying in %.1f s", self.name, exc, wait)
                time.sleep(wait)
                wait = min(wait * 2, 2.0)

    def check_permissions(self) -> None:
        """Once, at start: SourceRefused (exit 78) naming the first command this Redis user may not run and the
        `inspector acl` line that grants it, before a half-permitted script could write half a batch."""
        if self._permitted:
            return
        node = clients.slot_client(self.client, self.keys.frames)
        try:
            probe_permissions(node, self.cfg, self.name, self.probes)
        except (redis.RedisError, RedisClusterException) as exc:
            raise classify(exc, self.url, "checking the user's permissions") from None
        self._permitted = True

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
                           {self.keys.frames: start}, count=count, block=block_ms)
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
        info = self._call("reading delivery counts", self.client.xpending_range, self.keys.frames,
                          self.cfg.group, entries[0][0], entries[-1][0], len(entries) * 2, consumername=self.name)
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in info}
        return [self._mark(i, f, counts.get(i, 1)) for i, f in entries]

    def _claim(self, count: int) -> list[Entry]:
        """The frames of a consumer whose heartbeat is gone. The candidates (other consumers holding frames) are
        listed first, so the script is given every heartbeat key it looks at."""
        consumers = self._call("listing the group's consumers", self.client.xinfo_consumers, self.keys.frames,
                               self.cfg.group)
        names = [_text(c["name"]) for c in consumers if int(c["pending"]) > 0 and _text(c["name"]) != self.name]
        if not names:
            return []
        reply = self._call("claiming frames of dead workers", self._scripts()[1],
                           keys=[self.keys.frames, *(self.keys.alive(n) for n in names)],
                           args=[self.cfg.group, self.name, count, *names])
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

    def _scripts(self) -> tuple[Any, Any]:
        """PUBLISH and CLAIM registered on the client (redis-py loads them where they run, again after NOSCRIPT)."""
        if self._registered is None:
            self._registered = (self.client.register_script(PUBLISH), self.client.register_script(CLAIM))
        return self._registered

    # -- liveness and state ------------------------------------------------------------------------------
    def heartbeat(self) -> None:
        self._call("writing the heartbeat", self.client.set, self.heartbeat_key, b"1", px=self.cfg.heartbeat_ttl_ms)

    def probe(self) -> SourceState:
        try:
            groups = self.client.xinfo_groups(self.keys.frames)
            length = self.client.xlen(self.keys.frames)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return SourceState(True, False, error="the frames stream does not exist yet")
            return SourceState(False, error=str(classify(exc, self.url, "XINFO GROUPS")))
        except (redis.RedisError, RedisClusterException, SourceError) as exc:
            return SourceState(False, error=str(exc if isinstance(exc, SourceError)
                                                else classify(exc, self.url, "XINFO GROUPS")))
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
        ids = [o.entry.id for o in outcomes]
        if self._unconfirmed is not None:
            if self._unconfirmed[0] == ids:  # the same batch again: it is in Redis, confirm it, do not redo it
                return self._confirm(self._unconfirmed[1])
            self._unconfirmed = None  # the caller gave up on that batch (a warm stop)
        keys, args = self._publish_call(outcomes)
        doing = f"publishing {len(outcomes)} events"
        if self.cfg.min_replicas_acked == 0:
            reply = self._call(doing, self._scripts()[0], keys=keys, args=args)
            return self._published(reply)
        pipe = self._slot_pipeline(doing)
        self._scripts()[0](keys=keys, args=args, client=pipe)
        pipe.wait(self.cfg.min_replicas_acked, self.cfg.replica_wait_ms)
        reply, acked = self._on_slot(doing, pipe.execute)
        result = self._published(reply)
        if int(acked) < self.cfg.min_replicas_acked:
            self._unconfirmed = (ids, result)
            raise self._too_few(int(acked), len(outcomes))
        return result

    def _publish_call(self, outcomes: Sequence[Outcome]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of one PUBLISH call: the line's streams, then the state keys of the batch's cameras."""
        cfg = self.cfg
        cameras = list(dict.fromkeys(o.camera for o in outcomes if o.camera and o.seq >= 0))
        keys = [self.keys.frames, self.keys.events, self.keys.dead]
        for name in cameras:
            keys += self.keys.camera(name)
        args: list[Any] = [cfg.group, self.name, cfg.events_maxlen, cfg.dead_maxlen, cfg.frames_trim,
                           int(cfg.frames_retention_s * 1000), cfg.camera_state_ttl_s, self.camera.max_seq_jump,
                           int(self._trim_acked), len(cameras), *cameras, len(outcomes)]
        for out in outcomes:
            dead: list[bytes] = []
            if out.dead_letter_error is not None:
                dead = dead_letter_fields(out.entry.fields, out.dead_letter_error, out.entry.id, self.name,
                                          out.entry.deliveries, self.camera.max_payload_bytes)
            args += [out.entry.id, out.event, out.camera, out.seq, len(dead), *dead]
        return keys, args

    @staticmethod
    def _published(reply: Any) -> Published:
        done, flat, _trimmed = reply
        gaps = [Gap(_text(flat[j]), int(flat[j + 1]), int(flat[j + 2]), _text(flat[j + 3]))
                for j in range(0, len(flat), 4)]
        return Published([bool(x) for x in done], gaps)

    def _slot_pipeline(self, doing: str) -> Any:
        """A pipeline on the node that holds the line's slot: a write and its WAIT share one connection."""
        if self._stale_map:  # the last call there failed: the slot map as it is now, not as it was then
            clients.topology_changed(self.client)
            self._stale_map = False
        return self._on_slot(doing, lambda: clients.slot_client(self.client, self.keys.frames).pipeline(False))

    def _on_slot(self, doing: str, fn: Any) -> Any:
        try:
            return self._call(doing, fn)
        except SourceError:
            self._stale_map = True  # that node may be gone or demoted
            raise

    def _confirm(self, result: Published) -> Published:
        """Wait again for the replicas of an already published batch: a write on one connection (the heartbeat)
        and WAIT there cover every write before it."""
        pipe = self._slot_pipeline("confirming a publish on the replicas")
        pipe.set(self.heartbeat_key, b"1", px=self.cfg.heartbeat_ttl_ms)
        pipe.wait(self.cfg.min_replicas_acked, self.cfg.replica_wait_ms)
        _, acked = self._on_slot("confirming a publish on the replicas", pipe.execute)
        if int(acked) < self.cfg.min_replicas_acked:
            raise self._too_few(int(acked), len(result.done))
        self._unconfirmed = None
        return result

    def _too_few(self, acked: int, n: int) -> SourceUnavailable:
        return SourceUnavailable(
            f"Redis at {self.url}: {n} events published, held by {acked} of the {self.cfg.min_replicas_acked} "
            f"replicas redis.min_replicas_acked asks for after {self.cfg.replica_wait_ms} ms: waiting for them (a "
            "replica down or behind: INFO replication; the batch is not published twice)")

    def report(self, stats: dict[str, float]) -> None:
        key = self.keys.stats(self.name)
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, mapping={k: str(v) for k, v in stats.items()})
            pipe.expire(key, self.cfg.stats_ttl_s)
            pipe.execute()
        except (redis.RedisError, RedisClusterException, SourceError) as exc:
            log.debug("%s: stats not reported: %s", self.name, _first_line(exc))

    def close(self) -> None:
        """Drop the heartbeat (the others may claim at once whatever is still pending) and the connections."""
        if self._client is None:
            return
        with contextlib.suppress(redis.RedisError, RedisClusterException):
            self._client.delete(self.heartbeat_key)
        clients.close(self._client)
