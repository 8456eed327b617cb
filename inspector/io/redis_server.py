"""A private, throw-away redis-server on a free loopback port (demo, bench --redis, tests)."""

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

    def __init__(self, port: int | None = None, maxmemory: str = "2gb") -> None:
        self.port = port or free_port()
        self.maxmemory = maxmemory
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
        self.dir = tempfile.TemporaryDirectory(prefix="inspector-redis-")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir.name, "--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction",
             "--logfile", str(Path(self.dir.name) / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                client.close()
                return self.url
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SourceError(f"private redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.dir is not None:
            self.dir.cleanup()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
