"""Frames in and events out over Redis Streams, with a consumer group (notes: shared/notes/redis-streams.md).

Reading: on start and after every reconnect this consumer first re-reads its own pending list (id `0`),
then new entries (`>`); every `claim_every_s` it claims entries idle past `claim_idle_ms` from dead
consumers (XAUTOCLAIM). Deliveries are counted by Redis; the pipeline dead-letters entries over the limit.

Writing: one Lua script call per batch publishes each event and acks its frame atomically, fenced on the
frame still being pending for this consumer: no frame acked without its event, no event published twice.
The frames stream is never trimmed; the events stream is trimmed approximately (MAXLEN ~).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis

from inspector.config import RedisConfig
from inspector.errors import SourceError
from inspector.io.base import Entry, Outcome

log = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379/0"

# KEYS: frames, events, dead. ARGV: group, consumer, events_maxlen, then per outcome:
# entry id, event bytes, number of dead-letter field/value items n (0 = no dead letter), n items.
_PUBLISH_LUA = """
local group, consumer, maxlen = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local i = 4
while i <= #ARGV do
  local id, event, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer)
  if #pending == 1 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'e', event)
    if n > 0 then
      redis.call('XADD', KEYS[3], '*', unpack(ARGV, i + 3, i + 2 + n))
    end
    redis.call('XACK', KEYS[1], group, id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  i = i + 3 + n
end
return out
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStreams:
    """FrameSource and EventSink over one Redis server."""

    def __init__(self, cfg: RedisConfig, client: redis.Redis | None = None) -> None:
        self.cfg = cfg
        self.consumer = cfg.consumer_name()
        self.url = cfg.url or DEFAULT_URL
        self.client = client or redis.Redis.from_url(
            self.url, socket_timeout=cfg.socket_timeout_s, socket_connect_timeout=cfg.socket_timeout_s,
            health_check_interval=30)
        self._publish = self.client.register_script(_PUBLISH_LUA)
        self._recovering = True
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._group_ready = False

    # -- reading -----------------------------------------------------------------------------------------
    def ensure_group(self) -> None:
        """Create the group at id 0 with MKSTREAM (never `$`: frames queued before the first start count)."""
        try:
            self.client.xgroup_create(self.cfg.frames_key, self.cfg.group, id="0", mkstream=True)
            log.info("%s: created consumer group %s on %s", self.consumer, self.cfg.group, self.cfg.frames_key)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise SourceError(f"cannot create consumer group {self.cfg.group}: {exc}") from exc
        except redis.RedisError as exc:
            raise SourceError(f"Redis at {self.url} unreachable: {exc}") from exc
        self._group_ready = True

    def recover(self) -> None:
        self._recovering = True

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        try:
            if not self._group_ready:
                self.ensure_group()
            if self._recovering:
                own = self._xreadgroup("0", count, None)
                if own:
                    return self._with_deliveries(own)
                self._recovering = False
                log.debug("%s: pending list drained, reading new entries", self.consumer)
            if time.monotonic() >= self._next_claim:
                claimed = self._claim(count)
                if claimed:
                    return claimed
            return [Entry(i, f, 1) for i, f in self._xreadgroup(">", count, block_ms)]
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis restarted without persistence: recreate, re-read
                log.warning("%s: consumer group vanished (Redis restart?); recreating it", self.consumer)
                self._group_ready = False
                self._recovering = True
                return []
            raise SourceError(f"Redis refused a read: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._recovering = True  # a lost XREADGROUP reply leaves entries pending that we never saw
            raise SourceError(f"Redis at {self.url} unreachable: {exc}") from exc

    def _xreadgroup(self, start: str, count: int, block_ms: int | None) -> list[tuple[str, Any]]:
        reply = self.client.xreadgroup(self.cfg.group, self.consumer, {self.cfg.frames_key: start},
                                       count=count, block=block_ms)
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3 without response callbacks
            entries = next(iter(reply.values()))
            entries = entries[0] if entries and isinstance(entries[0], list) and len(entries) == 1 else entries
        else:
            entries = reply[0][1]
        return [(_text(i), f or None) for i, f in entries]

    def _with_deliveries(self, entries: list[tuple[str, Any]]) -> list[Entry]:
        info = self.client.xpending_range(self.cfg.frames_key, self.cfg.group, entries[0][0], entries[-1][0],
                                          len(entries) * 2, consumername=self.consumer)
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in info}
        return [Entry(i, f, counts.get(i, 1)) for i, f in entries]

    def _claim(self, count: int) -> list[Entry]:
        reply = self.client.xautoclaim(self.cfg.frames_key, self.cfg.group, self.consumer,
                                       self.cfg.claim_idle_ms, self._claim_cursor, count=count)
        cursor, entries = _text(reply[0]), reply[1]
        self._claim_cursor = cursor
        if cursor == "0-0":
            self._next_claim = time.monotonic() + self.cfg.claim_every_s
        entries = [(_text(i), f or None) for i, f in entries]
        if entries:
            log.info("%s: claimed %d entries idle > %d ms from other consumers", self.consumer, len(entries),
                     self.cfg.claim_idle_ms)
            return self._with_deliveries(entries)
        return []

    # -- writing -----------------------------------------------------------------------------------------
    def publish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        args: list[Any] = [self.cfg.group, self.consumer, self.cfg.events_maxlen]
        for out in outcomes:
            args += [out.entry.id, out.event]
            if out.dead_letter_error is None:
                args.append(0)
            else:
                dead: list[Any] = []
                for key, value in (out.entry.fields or {}).items():
                    dead += [key, value]
                dead += [b"error", out.dead_letter_error, b"source_id", out.entry.id, b"consumer", self.consumer,
                         b"deliveries", out.entry.deliveries]
                args += [len(dead), *dead]
        try:
            done = self._publish(keys=[self.cfg.frames_key, self.cfg.events_key, self.cfg.dead_key], args=args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._recovering = True
            raise SourceError(f"publishing {len(outcomes)} events to {self.url} failed: {exc}") from exc
        except redis.RedisError as exc:
            raise SourceError(f"Redis refused the publish script: {exc}") from exc
        return [bool(x) for x in done]

    def report(self, stats: dict[str, float]) -> None:
        try:
            self.client.hset(f"{self.cfg.stats_key}:{self.consumer}", mapping={k: str(v) for k, v in stats.items()})
        except redis.RedisError as exc:
            log.debug("%s: stats not reported: %s", self.consumer, exc)

    def close(self) -> None:
        self.client.close()
