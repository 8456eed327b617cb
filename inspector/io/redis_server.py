"""A private, throw-away redis-server on a free loopback port (demo, bench --redis, tests).

With `appendonly=True` it keeps an append-only file in its folder, and `restart()` brings it back on the same
port with the same data, as a production Redis with AOF would come back after an outage.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from inspector.errors import SourceError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """Start with `with PrivateRedis() as url:`; the server and its folder are gone afterwards."""

    def __init__(self, port: int | None = None, maxmemory: str = "2gb", appendonly: bool = False,
                 extra: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.appendonly = appendonly
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SourceError("redis-server is not installed: `apt-get install redis-server` (Debian), "
                              "or pass --redis-url to use an existing server")
        if self.dir is None:
            self.dir = tempfile.TemporaryDirectory(prefix="inspector-redis-")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", self.dir.name,
             "--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction",
             "--logfile", str(Path(self.dir.name) / "redis.log"), *self.extra],
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
                    raise SourceError(f"private redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def halt(self) -> None:
        """Stop the server (SIGTERM: Redis flushes its AOF), keeping its folder for restart()."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
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
