"""Is the worker alive, is it ready: what /healthz, /readyz and the systemd watchdog are told.

Liveness comes from the loops themselves: each worker thread `beat()`s whenever it makes progress or has
waited on Redis, so a hung engine call or a deadlocked thread goes stale within `live_timeout_s`, and then
/healthz fails and the watchdog pings stop (systemd restarts the worker). Readiness is the engine loaded and
the last Redis probe answered with the consumer group present.

The HTTP server serves /metrics (Prometheus text), /healthz and /readyz on one port, from a daemon thread.
"""

from __future__ import annotations

import logging
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)


class Health:
    def __init__(self, live_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.live_timeout_s = live_timeout_s
        self.clock = clock
        self._beats: dict[str, float] = {}
        self._lock = threading.Lock()
        self.engine_loaded = False
        self.redis_ok = False
        self.redis_error: str | None = "not probed yet"

    def beat(self, who: str) -> None:
        with self._lock:
            self._beats[who] = self.clock()

    def forget(self, who: str) -> None:
        with self._lock:
            self._beats.pop(who, None)

    def stale(self) -> list[str]:
        """The loops that have not beaten within live_timeout_s (empty: alive)."""
        now = self.clock()
        with self._lock:
            return sorted(who for who, t in self._beats.items() if now - t > self.live_timeout_s)

    def live(self) -> tuple[bool, str]:
        stale = self.stale()
        if stale:
            return False, f"no progress for over {self.live_timeout_s:g} s in: {', '.join(stale)}"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self.engine_loaded:
            return False, "engine not loaded"
        if not self.redis_ok:
            return False, f"redis: {self.redis_error}"
        return True, "ok"


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def app(health: Health, metrics_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """WSGI: /healthz, /readyz (200 or 503 with the reason as text), anything else /metrics."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/healthz", "/readyz"):
            ok, reason = health.live() if path == "/healthz" else health.ready()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [(reason + "\n").encode()]
        return metrics_app(environ, start_response)

    return serve


def serve(address: tuple[str, int], wsgi: Callable[..., Iterable[bytes]]) -> WSGIServer:
    """Start the HTTP server on a daemon thread; `server.server_port` is the bound port (0 picks a free one)."""
    server = make_server(address[0], address[1], wsgi, server_class=_Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("metrics and health on http://%s:%d (/metrics, /healthz, /readyz)", address[0], server.server_port)
    return server
