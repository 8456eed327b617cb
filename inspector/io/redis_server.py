"""Private, throw-away Redis set-ups on free loopback ports (demo, bench --redis, tests, benchmarks).

`PrivateRedis`: one redis-server. With `appendonly=True` it keeps an append-only file in its folder, and
`restart()` brings it back on the same port with the same data, as a production Redis with AOF would come back
after an outage. `PrivateCluster`: a Redis Cluster of masters with a replica each (`redis-cli --cluster
create`). `PrivateSentinel`: a master, a replica and three sentinels. Both can kill a node with SIGKILL and bring
it back, which rejoins as a replica of whoever took over.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from inspector.errors import SourceError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int, low: int = 20000, high: int = 45000) -> list[int]:
    """n free loopback ports P whose cluster bus port P + 10000 is free too (so P stays below 55535)."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(low, high)
        if port in ports or not all(_free(p) for p in (port, port + 10000)):
            continue
        ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _exe(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise SourceError(f"{name} is not installed: `apt-get install redis-server` (Debian), "
                          "or pass --redis-url to use an existing server")
    return exe


class PrivateRedis:
    """Start with `with PrivateRedis() as url:`; the server and its folder are gone afterwards."""

    def __init__(self, port: int | None = None, maxmemory: str = "2gb", appendonly: bool = False,
                 extra: tuple[str, ...] = (), folder: str | None = None) -> None:
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.appendonly = appendonly
        self.extra = extra
        self.folder = folder  # None: a temporary folder of its own
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def path(self) -> str:
        if self.folder is not None:
            return self.folder
        if self.dir is None:
            self.dir = tempfile.TemporaryDirectory(prefix="inspector-redis-")
        return self.dir.name

    def start(self) -> str:
        exe = _exe("redis-server")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", self.path,
             "--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction",
             "--logfile", str(Path(self.path) / "redis.log"), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                client.close()
                return self.url
            except redis.AuthenticationError:  # started with --requirepass: it answers
                client.close()
                return self.url
            except (redis.ConnectionError, redis.ResponseError):  # not listening yet, or still LOADING
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise SourceError(f"private redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def halt(self) -> None:
        """Stop the server (SIGTERM: Redis flushes its AOF), keeping its folder for restart()."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: the server dies as a crashed process does, writing nothing more."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> str:
        self.halt()
        return self.start()

    def stop(self) -> None:
        self.halt()
        if self.dir is not None:
            self.dir.cleanup()
            self.dir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise SourceError(f"{what}: not reached within {timeout:g} s")
        time.sleep(0.05)


class PrivateCluster:
    """`masters` masters with one replica each on loopback (`with PrivateCluster() as url:`, url = first node).

    node_timeout_ms is `cluster-node-timeout`: a master silent this long is failed over to its replica."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 1000, maxmemory: str = "1gb") -> None:
        self.masters = masters
        self.dir = tempfile.TemporaryDirectory(prefix="inspector-cluster-")
        args = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-config-file", "nodes.conf", "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0")
        self.nodes: dict[int, PrivateRedis] = {}
        for port in free_ports(2 * masters):
            folder = Path(self.dir.name) / str(port)
            folder.mkdir()
            self.nodes[port] = PrivateRedis(port, maxmemory, extra=args, folder=str(folder))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{next(iter(self.nodes))}/0"

    def start(self) -> str:
        try:
            for node in self.nodes.values():
                node.start()
            subprocess.run([_exe("redis-cli"), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.nodes),
                            "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True,
                           timeout=120)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.url

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)

    def alive(self) -> list[int]:
        return [p for p, n in self.nodes.items() if n.proc is not None and n.proc.poll() is None]

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Every live node says cluster_state:ok, there are `masters` masters and each has a replica in sync."""
        def healthy() -> bool:
            roles = {p: self.client(p).info("replication") for p in self.alive()}
            if not all(self.client(p).cluster("info")["cluster_state"] == "ok" for p in roles):
                return False
            masters = [r for r in roles.values() if r["role"] == "master"]
            synced = [r for r in roles.values() if r["role"] == "slave" and r["master_link_status"] == "up"
                      and r["master_sync_in_progress"] == 0]
            return len(masters) == self.masters and len(synced) == self.masters
        _wait(healthy, f"cluster on ports {list(self.nodes)} healthy", timeout)

    def master_of(self, key: str) -> int:
        """The port of the live master serving `key`'s slot."""
        slot = int(self.client(self.alive()[0]).cluster("keyslot", key))
        for low, high, master, *_ in self.client(self.alive()[0]).execute_command("CLUSTER SLOTS"):
            if low <= slot <= high:
                return int(master[1])
        raise SourceError(f"slot {slot} is not served")

    def kill(self, port: int) -> None:
        self.nodes[port].kill()

    def revive(self, port: int) -> None:
        """Start a killed node again: it rejoins as a replica of the node that took over."""
        self.nodes[port].start()

    def flush(self) -> None:
        for port in self.alive():
            with contextlib.suppress(redis.ResponseError):  # a replica refuses writes
                self.client(port).flushall()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.halt()
        self.dir.cleanup()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PrivateSentinel:
    """A master, one replica and three sentinels (quorum 2) on loopback, monitoring `service`."""

    def __init__(self, service: str = "inspector", down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
                 maxmemory: str = "1gb") -> None:
        self.service = service
        self.dir = tempfile.TemporaryDirectory(prefix="inspector-sentinel-")
        ports = free_ports(5)
        self.servers = {p: PrivateRedis(p, maxmemory, folder=self._folder(p)) for p in ports[:2]}
        master = ports[0]
        self.servers[ports[1]].extra = ("--replicaof", "127.0.0.1", str(master))
        self.sentinel_ports = ports[2:]
        self.sentinels: dict[int, subprocess.Popen[bytes] | None] = {p: None for p in self.sentinel_ports}
        for p in self.sentinel_ports:
            (Path(self._folder(p)) / "sentinel.conf").write_text(
                f"port {p}\nbind 127.0.0.1\ndir {self._folder(p)}\nlogfile {self._folder(p)}/sentinel.log\n"
                f"sentinel monitor {service} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {service} 1\n")

    def _folder(self, port: int) -> str:
        folder = Path(self.dir.name) / str(port)
        folder.mkdir(exist_ok=True)
        return str(folder)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.sentinel_ports]

    def start(self) -> list[str]:
        try:
            for server in self.servers.values():
                server.start()
            for p in self.sentinel_ports:
                self.sentinels[p] = subprocess.Popen(
                    [_exe("redis-server"), str(Path(self._folder(p)) / "sentinel.conf"), "--sentinel"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.addresses

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1, decode_responses=True)

    def master(self) -> int:
        """The port the sentinels name as master now."""
        return int(self.sentinel(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(self.service)[1])

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """All sentinels agree on a live master that has an in-sync replica, and each sees the two others."""
        def healthy() -> bool:
            states = [self.sentinel(p).sentinel_master(self.service) for p in self.sentinel_ports]
            ports = {int(s["port"]) for s in states}
            if len(ports) != 1 or any(s["num-other-sentinels"] < 2 or s["is_sdown"] for s in states):
                return False
            info = redis.Redis(port=ports.pop(), socket_timeout=2).info("replication")
            replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            return info["role"] == "master" and bool(replicas) and all(r["state"] == "online" for r in replicas)
        _wait(healthy, f"sentinels on {self.sentinel_ports} agreeing on a master with a replica", timeout)

    def kill(self, port: int) -> None:
        self.servers[port].kill()

    def revive(self, port: int) -> None:
        """Start a killed server again; the sentinels turn it into a replica of the new master."""
        self.servers[port].start()

    def stop(self) -> None:
        for proc in self.sentinels.values():
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        for server in self.servers.values():
            server.halt()
        self.dir.cleanup()

    def __enter__(self) -> list[str]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
