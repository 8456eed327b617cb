"""The line service's Redis room: its two consumer groups, the fenced scripts, the coils' state. Nothing else in
inspector/line talks to Redis.

Reading each input (events, coil ends) follows the worker's rules: on start and after every reconnect this
consumer re-reads its own pending entries once, with a cursor, then claims the pending entries of replicas whose
heartbeat key has expired, then reads new ones. Errors come out as SourceUnavailable (retry) or SourceRefused
(stop), classified as the worker's are. Used by the service's loop thread only (the heartbeat thread calls
`heartbeat()`, which uses its own command on the thread-safe connection pool).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from inspector.config import Config
from inspector.errors import SourceUnavailable
from inspector.io import client as clients
from inspector.io.acl import grant_hint
from inspector.io.redis_streams import classify
from inspector.line import scripts
from inspector.line.keys import LineKeys
from inspector.line.records import ACK, Folding

log = logging.getLogger(__name__)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Folded:
    folded: int = 0
    fenced_out: int = 0
    late: int = 0
    dropped: int = 0


@dataclass
class CoilState:
    """What the report is computed from: the coil's meta hash and its log, read at one version."""

    coil: str
    meta: dict[str, str]
    log: bytes = b""

    @property
    def version(self) -> str:
        return self.meta.get("v", "0")

    def number(self, key: str, default: float = 0) -> float:
        return float(self.meta.get(key, default))

    @property
    def cameras(self) -> list[str]:
        return sorted(k[4:] for k in self.meta if k.startswith("cam:"))


@dataclass
class _Reader:
    """One input stream's consumer-group reading position."""

    stream: str
    recovering: bool = True
    cursor: str = "0"
    next_claim: float = 0.0
    ready: bool = False
    claimed: list[tuple[str, dict[bytes, bytes] | None]] = field(default_factory=list)


class LineStore:
    def __init__(self, cfg: Config, consumer: str, client: redis.Redis | None = None) -> None:
        self.cfg, self.c = cfg, cfg.coils
        self.keys = LineKeys.from_config(cfg)
        self.name = consumer
        self.url = cfg.redis.safe_url()
        self._grant = grant_hint(cfg.redis, "coils")  # the `inspector acl` line a NOPERM message names
        self.client = client or clients.connect(cfg.redis)
        self._fold = self.client.register_script(scripts.FOLD)
        self._end = self.client.register_script(scripts.END)
        self._close = self.client.register_script(scripts.CLOSE)
        self._finish = self.client.register_script(scripts.FINISH)
        self._claim = self.client.register_script(scripts.CLAIM)
        self.events = _Reader(self.keys.events)
        self.ends = _Reader(self.keys.coil_ends)

    def _call(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                self.events.recovering = self.ends.recovering = True
                self.events.cursor = self.ends.cursor = "0"
            if "NOGROUP" in str(exc):
                self.events.ready = self.ends.ready = False
            raise classify(exc, self.url, doing, self._grant) from None

    # -- reading -----------------------------------------------------------------------------------------
    def _ensure(self, reader: _Reader) -> None:
        try:
            self.client.xgroup_create(reader.stream, self.c.group, id="0", mkstream=True)
            log.info("%s: created consumer group %s on %s", self.name, self.c.group, reader.stream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise classify(exc, self.url, "creating the consumer group", self._grant) from None
        except redis.RedisError as exc:
            raise classify(exc, self.url, "creating the consumer group", self._grant) from None
        reader.ready = True

    def wait_ready(self, timeout_s: float) -> None:
        """At start: retry until Redis answers and both groups exist, at most `timeout_s`; then raise the last
        error (one line). Refusals (a wrong password) are raised at once."""
        deadline = time.monotonic() + timeout_s
        wait = 0.1
        while True:
            try:
                self._ensure(self.events)
                self._ensure(self.ends)
                return
            except SourceUnavailable as exc:
                if time.monotonic() + wait > deadline:
                    raise SourceUnavailable(f"{exc} (gave up after {timeout_s:g} s, redis.startup_wait_s): "
                                            "start Redis or fix redis.url / INSPECTOR_REDIS_URL") from None
                log.warning("%s: %s; retrying in %.1f s", self.name, exc, wait)
                time.sleep(wait)
                wait = min(wait * 2, 2.0)

    def read_events(self, count: int, block_ms: int | None) -> list[tuple[str, dict[bytes, bytes] | None]]:
        return self._read(self.events, count, block_ms)

    def read_ends(self, count: int) -> list[tuple[str, dict[bytes, bytes] | None]]:
        return self._read(self.ends, count, None)

    def _read(self, r: _Reader, count: int, block_ms: int | None) -> list[tuple[str, dict[bytes, bytes] | None]]:
        if not r.ready:
            self._ensure(r)
        if r.recovering:
            got = self._xread(r, r.cursor, count, None)
            if got:
                r.cursor = got[-1][0]
                return got
            r.recovering, r.cursor = False, "0"
        now = time.monotonic()
        if now >= r.next_claim:
            r.next_claim = now + self.c.claim_every_s
            claimed = self._claim_dead(r, count)
            if claimed:
                return claimed
        return self._xread(r, ">", count, block_ms)

    def _xread(self, r: _Reader, start: str, count: int, block_ms: int | None) -> list[tuple[str, Any]]:
        reply = self._call(f"reading {r.stream}", self.client.xreadgroup, self.c.group, self.name,
                           {r.stream: start}, count=count, block=block_ms)
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            entries = next(iter(reply.values()))
            entries = entries[0] if entries and isinstance(entries[0], list) and len(entries) == 1 else entries
        else:
            entries = reply[0][1]
        return [(_text(i), f or None) for i, f in entries]

    def _claim_dead(self, r: _Reader, count: int) -> list[tuple[str, Any]]:
        consumers = self._call("listing consumers", self.client.xinfo_consumers, r.stream, self.c.group)
        for info in consumers:
            owner = _text(info["name"])
            if owner == self.name or int(info["pending"]) == 0:
                continue
            reply = self._call("claiming entries of a stopped replica", self._claim,
                               keys=[r.stream, self.keys.alive(owner)], args=[self.c.group, self.name, owner, count])
            if reply:
                out = []
                for entry_id, flat in reply:
                    fields = {flat[j]: flat[j + 1] for j in range(0, len(flat), 2)} if flat else None
                    out.append((_text(entry_id), fields))
                log.warning("%s: claimed %d entr(ies) of %s from %s (no heartbeat for %d ms)", self.name, len(out),
                            r.stream, owner, self.c.heartbeat_ttl_ms)
                return out
        return []

    # -- folding -----------------------------------------------------------------------------------------
    def fold(self, items: Sequence[Folding]) -> Folded:
        """Fold a batch of events into their coils and ack them, in one fenced script call."""
        if not items:
            return Folded()
        by_coil: dict[str, list[Folding]] = defaultdict(list)
        acks: list[str] = []
        for it in items:
            if it.kind == ACK or it.coil is None:
                acks.append(it.entry_id)
            else:
                by_coil[it.coil].append(it)
        keys = [self.keys.events, self.keys.open, self.keys.cameras]
        args: list[Any] = [self.c.group, self.name, self.c.max_coil_bytes, len(by_coil), len(acks)]
        for coil, its in by_coil.items():
            keys += [self.keys.meta(coil), self.keys.log(coil)]
            args += [coil, len(its)]
            for it in its:
                args += [it.entry_id, it.ms, it.camera, it.kind, it.record]
        args += acks
        reply = self._call(f"folding {len(items)} events", self._fold, keys=keys, args=args)
        return Folded(*(int(x) for x in reply))

    def end(self, entry_id: str, ms: int, coil: str, length_mm: float | None) -> int:
        """Fold one coil end: 0 fenced out, 1 ended, 2 the coil was reported already."""
        return int(self._call("folding a coil end", self._end,
                              keys=[self.keys.coil_ends, self.keys.open, self.keys.meta(coil)],
                              args=[self.c.group, self.name, entry_id, ms, "" if length_mm is None else
                                    repr(float(length_mm)), coil]))

    def ack_end(self, entry_id: str) -> None:
        """A malformed coil end: acked alone (nothing to fold, nothing to lose)."""
        self._call("acking a coil end", self.client.xack, self.keys.coil_ends, self.c.group, entry_id)

    # -- closing -----------------------------------------------------------------------------------------
    def open_coils(self) -> list[str]:
        return [_text(c) for c in self._call("listing open coils", self.client.zrange, self.keys.open, 0, -1)]

    def metas(self, coils: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for coil in coils:
            pipe.hgetall(self.keys.meta(coil))
        return [{_text(k): _text(v) for k, v in m.items()} for m in self._call("reading coils", pipe.execute)]

    def cameras(self) -> dict[str, str]:
        """camera -> the coil of its newest event."""
        raw = self._call("reading cameras", self.client.hgetall, self.keys.cameras)
        return {_text(k): _text(v).split(" ", 1)[1] for k, v in raw.items()}

    def state(self, coil: str) -> CoilState:
        """The coil's meta and log, read in one transaction (so at one version)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.keys.meta(coil))
        pipe.get(self.keys.log(coil))
        meta, blob = self._call(f"reading coil {coil}", pipe.execute)
        return CoilState(coil, {_text(k): _text(v) for k, v in meta.items()}, blob or b"")

    def close(self, state: CoilState, entry: bytes, deadline_ms: int | None, closed_ts: float,
              by: str) -> str | int:
        """XADD the report entry if the coil is still open at `state`'s version: its id, or 0 (stale), -1 (not
        yet: events published before the deadline are still unfolded)."""
        reply = self._call(f"closing coil {state.coil}", self._close,
                           keys=[self.keys.events, self.keys.coils, self.keys.open, self.keys.unwritten,
                                 self.keys.meta(state.coil)],
                           args=[self.c.group, state.coil, state.version,
                                 "" if deadline_ms is None else deadline_ms, entry, self.c.coils_maxlen,
                                 repr(closed_ts), by])
        return _text(reply[1]) if int(reply[0]) == 1 else int(reply[0])

    def unwritten(self) -> list[str]:
        return sorted(_text(c) for c in self._call("listing unwritten reports", self.client.smembers,
                                                   self.keys.unwritten))

    def report_entry(self, report_id: str) -> bytes | None:
        got = self._call("reading a report entry", self.client.xrange, self.keys.coils, report_id, report_id)
        return got[0][1][b"c"] if got else None

    def finish(self, coil: str) -> None:
        self._call(f"freeing coil {coil}", self._finish, keys=[self.keys.meta(coil), self.keys.log(coil),
                                                               self.keys.unwritten],
                   args=[coil, self.c.tombstone_ttl_s])

    # -- liveness and state ------------------------------------------------------------------------------
    def heartbeat(self) -> None:
        self._call("writing the heartbeat", self.client.set, self.keys.alive(self.name), b"1",
                   px=self.c.heartbeat_ttl_ms)

    def probe(self) -> tuple[bool, str | None, int | None]:
        """(reachable, error, events not yet delivered to the group)."""
        try:
            groups = self.client.xinfo_groups(self.keys.events)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return True, None, 0
            return False, str(classify(exc, self.url, "XINFO GROUPS")), None
        except redis.RedisError as exc:
            return False, str(classify(exc, self.url, "XINFO GROUPS")), None
        for g in groups:
            if _text(g["name"]) == self.c.group:
                return True, None, None if g.get("lag") is None else int(g["lag"])
        return True, None, None

    def report(self, stats: dict[str, float]) -> None:
        key = self.keys.stats(self.name)
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, mapping={k: str(v) for k, v in stats.items()})
            pipe.expire(key, self.cfg.redis.stats_ttl_s)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("%s: stats not reported: %s", self.name, exc)

    def close_connections(self) -> None:
        """Drop the heartbeat (the others may claim at once what is still pending) and the connections."""
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self.keys.alive(self.name))
        clients.close(self.client)
