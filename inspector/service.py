"""`inspector run`: the worker as a service, with everything around the pipeline an operator relies on.

    metrics + health HTTP server (metrics.address)  -> up before the engine loads, so /readyz can say "not yet"
    engine load and check, Redis wait (redis.startup_wait_s)
    pipeline.run(): READY=1, WATCHDOG=1, STATUS=, STOPPING=1 (systemd), SIGTERM warm stop, SIGHUP engine reload
    teardown on every exit path: engine(s), decode pool, Redis connections, HTTP server, the final report
"""

from __future__ import annotations

import logging

from inspector.config import Config, parse_address
from inspector.errors import ConfigError, InspectorError, SourceRefused, WorkerFailed
from inspector.health import Health, app, serve
from inspector.metrics import Metrics
from inspector.notify import Notifier
from inspector.pipeline import from_config
from inspector.stats import Stats

log = logging.getLogger(__name__)


def run(cfg: Config, burst: bool = False) -> Stats:
    health = Health(cfg.metrics.live_timeout_s)
    metrics = Metrics() if cfg.metrics.address else None
    server = serve(parse_address(cfg.metrics.address), app(health, metrics.wsgi())) \
        if cfg.metrics.address and metrics is not None else None
    notifier = Notifier()
    try:
        pipe = from_config(cfg, health=health, metrics=metrics, notifier=notifier)
        try:
            return pipe.run(burst=burst)
        except (SourceRefused, ConfigError):
            raise  # still the operator's to fix: exit 78, no restart loop
        except InspectorError as exc:  # e.g. an engine that fails mid-run: exit 1, systemd restarts the worker
            raise WorkerFailed(f"the worker stopped after {type(exc).__name__}: {exc}") from exc
        finally:
            pipe.close()
    finally:
        notifier.close()
        if server is not None:
            server.shutdown()
            server.server_close()
