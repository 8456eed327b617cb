"""The one way every tool reaches Redis (worker, `inspector feed`, `bench --redis`, `demo`, benchmarks):
`connect(cfg.redis)` gives a client for `redis.mode`, made the way redis-py's authors intend.

- standalone: `Redis.from_url(url)`.
- cluster: `RedisCluster.from_url(url)`: the URL names any node; redis-py reads the slot map, routes each
  command by its keys' slot, follows MOVED / ASK, waits out TRYAGAIN and re-reads the map on CLUSTERDOWN or a
  lost node (a failover). Registered scripts are loaded on every master and reloaded on NOSCRIPT.
- sentinel: `Sentinel(sentinels).master_for(service)`: every new connection asks the sentinels for the master,
  and a READONLY reply (the old master, demoted) drops the connection so the next one finds the new master.

redis-py retries a command twice on its own (within half a second); past that the error reaches our callers,
which retry visibly with their own backoff, count it and log it, as for any outage.

`WAIT` counts the writes of one connection, and Cluster routes a key-less WAIT to an arbitrary node, so
`slot_client()` gives the plain client of the node that holds a key's slot: a pipeline there runs a write and its
WAIT on one connection. After an error on it, `topology_changed()` makes the cluster client re-read the map.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from inspector.config import DEFAULT_URL, RedisConfig, parse_host_port
from inspector.errors import SourceUnavailable

Client = Any  # redis.Redis (standalone, sentinel's master) or redis.cluster.RedisCluster


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)


def connect(cfg: RedisConfig, socket_timeout_s: float | None = None) -> Client:
    """A client for `cfg.mode`. Cluster reads the slot map at once: SourceUnavailable when no node answers."""
    timeout = socket_timeout_s or cfg.socket_timeout_s
    common: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": min(timeout, 5.0),
                              "health_check_interval": 30}
    url = cfg.url or DEFAULT_URL
    if cfg.mode == "cluster":
        try:
            return RedisCluster.from_url(url, retry=_retry(), **common)
        except (redis.RedisError, RedisClusterException) as exc:
            raise SourceUnavailable(f"Redis Cluster at {cfg.safe_url()} unreachable (reading the slot map): "
                                    f"{_first_line(exc)}") from None
    if cfg.mode == "sentinel":
        parts = urllib.parse.urlsplit(url)
        db = parts.path.strip("/")
        sentinel = Sentinel([parse_host_port(a, "redis.sentinels") for a in cfg.sentinels],
                            sentinel_kwargs={"socket_timeout": min(timeout, 2.0),
                                             "socket_connect_timeout": min(timeout, 2.0)})
        return sentinel.master_for(cfg.sentinel_service, username=_unquote(parts.username),
                                   password=_unquote(parts.password), db=int(db) if db else 0, retry=_retry(),
                                   **common)
    return redis.Redis.from_url(url, retry=_retry(), **common)


def settings(cfg: RedisConfig) -> dict[str, Any]:
    """The redis settings another process needs to reach the same Redis and line (a `redis:` YAML section)."""
    out = {"url": cfg.url, "mode": cfg.mode, "line": cfg.line, "socket_timeout_s": cfg.socket_timeout_s}
    if cfg.mode == "sentinel":
        out |= {"sentinels": list(cfg.sentinels), "sentinel_service": cfg.sentinel_service}
    return out


def where(cfg: RedisConfig) -> str:
    """The Redis named in messages: the URL (password redacted), or the sentinels and service."""
    if cfg.mode == "sentinel":
        return f"sentinel service {cfg.sentinel_service} at {','.join(cfg.sentinels)}"
    return cfg.safe_url() + (" (cluster)" if cfg.mode == "cluster" else "")


def slot_client(client: Client, key: str) -> redis.Redis:
    """The plain client that serves `key`: the cluster node holding its slot, else `client` itself."""
    if isinstance(client, RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(key))
    return client


def topology_changed(client: Client) -> None:
    """After an error from a `slot_client`: re-read the slot map (a no-op for standalone and sentinel)."""
    if isinstance(client, RedisCluster):
        with contextlib.suppress(redis.RedisError, RedisClusterException):
            client.nodes_manager.initialize()


def close(client: Client) -> None:
    """Close the client's connections (and, for a sentinel master client, those to the sentinels)."""
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    client.close()
    if manager is not None:
        with contextlib.suppress(redis.RedisError):
            manager.close()


def _unquote(value: str | None) -> str | None:
    return urllib.parse.unquote(value) if value else None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
