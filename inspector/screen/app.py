"""`inspector screen`: the operator's live page (Starlette on uvicorn) and, with opcua.endpoint set, the OPC UA
server for the PLC, in one asyncio process beside the worker and the coils service (README "The operator's screen").

    poll thread (one, an executor of its own):  LineView.poll() every screen.every_s -> Snapshot (alarms written)
    event loop:  Hub.publish(snapshot) -> every open /events stream gets it (server-sent events, JSON)
                 OpcuaPublisher.update(snapshot) -> variables written, each alarm transition an OPC UA event
                 HTTP: /  /static/*  /events  /state  /preview?camera=  /reports/*  /evidence/*  /healthz

The loop owns the Hub and the OPC UA server; the poll thread owns the LineView (Redis reads and alarm writes);
they meet only through the immutable Snapshot each round returns. Redis away: the page keeps the last picture
with the error on top, and the poll retries every round.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from inspector.config import Config, parse_address
from inspector.screen.view import LineView, Snapshot, empty

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and the browser's connection open


class Hub:
    """The latest snapshot and its JSON, and a condition the open event streams wait on (event loop only)."""

    def __init__(self, line: str) -> None:
        self.snapshot: Snapshot | None = None
        self.json = json.dumps(empty(line))  # before the first round
        self.version = 0
        self.ok_ts: float | None = None
        self._changed = asyncio.Condition()

    async def publish(self, snapshot: Snapshot, ok: bool) -> None:
        async with self._changed:
            self.snapshot, self.version = snapshot, self.version + 1
            self.json = json.dumps(snapshot.data, separators=(",", ":"))
            if ok:
                self.ok_ts = time.time()
            self._changed.notify_all()

    async def newer(self, version: int, timeout_s: float) -> bool:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self.version > version), timeout_s)
            return self.version > version


class Screen:
    def __init__(self, cfg: Config, client: Any = None) -> None:
        from inspector.io import client as clients

        self.cfg = cfg
        self.client = client or clients.connect(cfg.redis)
        self.view = LineView(cfg, self.client)
        self.hub = Hub(cfg.redis.line)
        self.opcua: Any = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="screen-poll")
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._logged = 0.0
        self.app = Starlette(routes=[
            Route("/", self.index), Route("/events", self.events), Route("/state", self.state),
            Route("/preview", self.preview), Route("/healthz", self.healthz),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            Mount("/reports", StaticFiles(directory=cfg.coils.reports_dir, check_dir=False), name="reports"),
            Mount("/evidence", StaticFiles(directory=cfg.screen.evidence_dir or cfg.capture.folder, check_dir=False),
                  name="evidence"),
        ], lifespan=self._lifespan)

    # -- the loop side -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        if self.cfg.opcua.endpoint:
            from inspector.screen.opcua import OpcuaPublisher

            self.opcua = OpcuaPublisher(self.cfg)
            await self.opcua.start()
        task = asyncio.create_task(self._poll_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self.opcua is not None:
                await self.opcua.stop()

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = time.monotonic()
            try:
                snapshot, ok = await loop.run_in_executor(self._executor, self.view.poll), True
            except Exception as exc:  # Redis away, a bug in one round: the last picture stays, with the error
                ok = False
                previous = self.hub.snapshot.data if self.hub.snapshot else empty(self.cfg.redis.line)
                snapshot = Snapshot({**previous, "error": f"{type(exc).__name__}: {str(exc)[:300]}"},
                                    self.hub.snapshot.previews if self.hub.snapshot else {})
                if time.monotonic() - self._logged > 30:
                    self._logged = time.monotonic()
                    log.warning("screen: reading the line failed (%s: %s); retrying every %g s (logged at most "
                                "every 30 s)", type(exc).__name__, exc, self.cfg.screen.every_s)
            await self.hub.publish(snapshot, ok)
            if self.opcua is not None:
                try:
                    await self.opcua.update(snapshot)
                except Exception:  # the PLC's side must not stop the screen
                    log.exception("screen: OPC UA update failed")
            await asyncio.sleep(max(0.0, self.cfg.screen.every_s - (time.monotonic() - started)))

    # -- HTTP --------------------------------------------------------------------------------------------
    async def index(self, _request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def state(self, _request: Request) -> Response:
        return Response(self.hub.json, media_type="application/json", headers={"Cache-Control": "no-store"})

    async def healthz(self, _request: Request) -> Response:
        fresh = self.hub.ok_ts is not None and time.time() - self.hub.ok_ts < max(10.0, 5 * self.cfg.screen.every_s)
        return PlainTextResponse("ok\n" if fresh else "no successful read of the line recently\n",
                                 status_code=200 if fresh else 503)

    async def preview(self, request: Request) -> Response:
        camera = request.query_params.get("camera", "")
        jpeg = self.hub.snapshot.previews.get(camera) if self.hub.snapshot else None
        if jpeg is None:
            return JSONResponse({"error": f"no preview of camera {camera[:64]!r} (yet)"}, status_code=404)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def events(self, request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            seen = -1
            while not await request.is_disconnected():
                if not await self.hub.newer(seen, KEEPALIVE_S):
                    yield ": keep-alive\n\n"
                    continue
                seen = self.hub.version
                yield f"id: {seen}\nevent: state\ndata: {self.hub.json}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # -- serving -----------------------------------------------------------------------------------------
    def _uvicorn(self, host: str, port: int) -> Any:
        import uvicorn

        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="on", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        return self._server

    def serve(self) -> None:
        """In this thread until SIGTERM / SIGINT (uvicorn's own handlers)."""
        host, port = parse_address(self.cfg.screen.address, "screen.address")
        log.info("screen on http://%s:%d/ (line %s)%s", host, port, self.cfg.redis.line,
                 f"; OPC UA on {self.cfg.opcua.endpoint}" if self.cfg.opcua.endpoint else "")
        try:
            self._uvicorn(host, port).run()
        finally:
            self.close()

    def start(self, timeout_s: float = 30.0) -> str:
        """In a thread of its own (the demo, tests); returns the page's address once it listens."""
        host, port = parse_address(self.cfg.screen.address, "screen.address")
        server = self._uvicorn(host, port)
        self._thread = threading.Thread(target=server.run, name="screen", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the screen did not start on {host}:{port} (port in use? screen.address)")
            time.sleep(0.02)
        bound = server.servers[0].sockets[0].getsockname()
        return f"http://{bound[0]}:{bound[1]}/"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.close()

    def close(self) -> None:
        from inspector.io import client as clients

        self._executor.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            clients.close(self.client)


def run(cfg: Config) -> None:
    Screen(cfg).serve()
