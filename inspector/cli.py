"""Command line: `inspector run | coils | screen | feed | bench | demo`. Parses options, calls library code."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from inspector.backends import BACKENDS, DEVICES
from inspector.errors import ConfigError, EngineError, InspectorError, SourceRefused, SourceUnavailable

EX_UNAVAILABLE, EX_CONFIG = 69, 78  # sysexits.h; the systemd unit does not restart on EX_CONFIG


class Failed(click.ClickException):
    """One line on stderr and an exit code that says whether a restart can help."""

    def __init__(self, exc: InspectorError) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.exit_code = EX_CONFIG if isinstance(exc, ConfigError | SourceRefused | EngineError) else (
            EX_UNAVAILABLE if isinstance(exc, SourceUnavailable) else 1)


def shared_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--config, --redis-url (INSPECTOR_REDIS_URL), --verbose on every command that talks to Redis."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="YAML config (see config/inspector.yaml); built-in defaults without it.")
    @click.option("--redis-url", envvar="INSPECTOR_REDIS_URL", default=None,
                  help="Redis URL, e.g. redis://127.0.0.1:6379/0 (env INSPECTOR_REDIS_URL).")
    @click.option("-v", "--verbose", count=True, help="-v for debug logging.")
    @functools.wraps(fn)
    def wrapper(*args: Any, verbose: int = 0, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return fn(*args, **kwargs)
        except InspectorError as exc:
            raise Failed(exc) from None

    return wrapper


def engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--engine", default=None, help="Engine folder (default engines/current)."),
        click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default=None),
        click.option("--device", type=click.Choice(["auto", *DEVICES]), default=None),
        click.option("--batch-size", type=int, default=None),
        click.option("--max-wait-ms", type=float, default=None),
        click.option("--threads", type=int, default=None, help="CPU threads for the engine (0 = library default)."),
    ]):
        fn = opt(fn)
    return fn


def _load(config_path: str | None, redis_url: str | None, engine: str | None = None, backend: str | None = None,
          device: str | None = None, batch_size: int | None = None, max_wait_ms: float | None = None,
          threads: int | None = None, **more: Any) -> Any:
    from inspector import config

    return config.load(config_path, redis_url, engine__path=engine, engine__backend=backend, engine__device=device,
                       engine__threads=threads, batching__batch_size=batch_size, batching__max_wait_ms=max_wait_ms,
                       **more)


@click.group()
@click.version_option(package_name="steel-inspector")
def main() -> None:
    """Steel-surface inspection worker: Redis frames in, defect events out."""


@main.command()
@shared_options
@engine_options
@click.option("--burst", is_flag=True, help="Process until the stream has nothing new, then exit.")
@click.option("--metrics-address", default=None, help="HOST:PORT for /metrics, /healthz, /readyz (metrics.address).")
@click.option("--worker-id", type=int, default=None,
              help="redis.worker_id: the consumer is <hostname>-<id> (one per unit of inspector@.service).")
@click.option("--line", default=None, help="redis.line: the line to serve (its streams carry the hash tag {LINE}).")
@click.option("--instance", default=None, metavar="LINE-N",
              help="Line and worker id in one word, as config/inspector@.service passes its %i (hot-strip-1).")
def run(config_path: str | None, redis_url: str | None, burst: bool, metrics_address: str | None,
        worker_id: int | None, line: str | None, instance: str | None, **engine: Any) -> None:
    """The service: read frames, publish one event per frame, until SIGTERM (SIGHUP: load the engine anew)."""
    from inspector import service

    if instance is not None:
        line, worker_id = _instance(instance, line, worker_id)
    cfg = _load(config_path, redis_url, metrics__address=metrics_address, redis__worker_id=worker_id,
                redis__line=line, **engine)
    stats = service.run(cfg, burst=burst)
    click.echo(json.dumps(stats.snapshot()))


def _instance(instance: str, line: str | None, worker_id: int | None) -> tuple[str, int]:
    """`LINE-N` -> (LINE, N): the template unit's instance name."""
    name, _, number = instance.rpartition("-")
    if not name or not number.isdigit() or line is not None or worker_id is not None:
        raise click.BadParameter(f"{instance!r}: write LINE-N (e.g. hot-strip-1), without --line or --worker-id",
                                 param_hint="--instance")
    return name, int(number)


@main.command()
@shared_options
@click.option("--burst", is_flag=True, help="Fold what is there, close every open coil, then exit.")
@click.option("--metrics-address", default=None,
              help="HOST:PORT for /metrics, /healthz, /readyz (coils.metrics_address).")
@click.option("--worker-id", type=int, default=None,
              help="redis.worker_id: the consumer is <hostname>-coils-<id> (one per replica on a machine).")
def coils(config_path: str | None, redis_url: str | None, burst: bool, metrics_address: str | None,
          worker_id: int | None) -> None:
    """The line service: events -> one report per coil (inspect:{main}:coils, reports/<coil>.json/.png/.html)."""
    from inspector.line import service

    cfg = _load(config_path, redis_url, coils__metrics_address=metrics_address, redis__worker_id=worker_id)
    stats = service.run(cfg, burst=burst)
    click.echo(json.dumps(stats.snapshot()))


@main.command()
@shared_options
@click.option("--address", default=None, help="HOST:PORT of the page (screen.address, default 127.0.0.1:8090).")
@click.option("--opcua-endpoint", default=None,
              help="opc.tcp://HOST:PORT/PATH: also serve the line's state over OPC UA (opcua.endpoint).")
@click.option("--line", default=None, help="redis.line: the line to show.")
def screen(config_path: str | None, redis_url: str | None, address: str | None, opcua_endpoint: str | None,
           line: str | None) -> None:
    """The operator's live screen (previews, strip map, defects, alarms, workers) and the alarm rules; with
    opcua.endpoint, the OPC UA server for the PLC. Until SIGTERM."""
    from inspector.screen import app

    cfg = _load(config_path, redis_url, screen__address=address, opcua__endpoint=opcua_endpoint, redis__line=line)
    app.run(cfg)


@main.command()
@shared_options
@click.option("--folder", type=click.Path(exists=True, file_okay=False), default=None,
              help="Images to send (cycled); the synthetic camera without it.")
@click.option("--encoding", type=click.Choice(["original", "gray8", "jpeg", "png"]), default="original",
              help="original: the files' own bytes (synthetic frames: gray8).")
@click.option("--fps", type=float, default=0.0, help="Offered rate; 0 = as fast as possible.")
@click.option("--count", type=int, default=100, help="Frames to send.")
@click.option("--camera", default="cam-0")
@click.option("--seed", type=int, default=0, help="Synthetic camera seed.")
@click.option("--frames-key", default=None, help="Frames stream (default from config: the line's).")
@click.option("--line", default=None, help="redis.line: feed this line's frames stream.")
@click.option("--start-seq", type=int, default=0, help="First seq number of the camera.")
@click.option("--wait-replicas", type=int, default=None,
              help="WAIT until this many replicas hold each batch (default redis.min_replicas_acked).")
def feed(config_path: str | None, redis_url: str | None, folder: str | None, encoding: str, fps: float,
         count: int, camera: str, seed: int, frames_key: str | None, line: str | None, start_seq: int,
         wait_replicas: int | None) -> None:
    """Push frames into the frames stream (a stand-in for the cameras); rides out failovers for
    redis.startup_wait_s, sending a batch again (a frame may arrive twice, never zero times)."""
    from inspector import feed as feeding
    from inspector.io import client as clients

    cfg = _load(config_path, redis_url, redis__line=line, redis__min_replicas_acked=wait_replicas)
    payloads = (feeding.folder_payloads(folder, encoding) if folder
                else feeding.synthetic_payloads(seed, 32, encoding))
    client = clients.connect(cfg.redis)
    key = frames_key or cfg.redis.keys().frames
    add = feeding.redis_adder(client, key, cfg.redis.min_replicas_acked, cfg.redis.replica_wait_ms,
                              cfg.redis.startup_wait_s, clients.where(cfg.redis))
    try:
        sent = feeding.feed(add, feeding.messages(payloads, camera, start_seq), count, fps)
    finally:
        clients.close(client)
    click.echo(f"sent {sent} frames to {key}", err=True)


@main.command()
@shared_options
@engine_options
@click.option("--redis", "use_redis", is_flag=True, help="Real Redis stream and a feeder process (else in-memory).")
@click.option("--frames", type=int, default=64, help="Frames to time (after one warm-up batch).")
@click.option("--rate", type=float, default=0.0, help="Offered frames/s; 0 = all at once (throughput).")
@click.option("--source", default="synthetic", help="'synthetic' or a folder of images.")
@click.option("--encoding", type=click.Choice(["original", "gray8", "jpeg", "png"]), default="gray8")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON here.")
@click.option("--metrics", "with_metrics", is_flag=True, help="Prometheus metrics on, scraped once a second.")
@click.option("--decode-threads", type=int, default=None, help="batching.decode_threads (0: decode in the producer).")
@click.option("--previews/--no-previews", default=None, help="Operator previews on or off (preview.enabled).")
def bench(config_path: str | None, redis_url: str | None, use_redis: bool, frames: int, rate: float, source: str,
          encoding: str, as_json: bool, out: str | None, with_metrics: bool, decode_threads: int | None,
          previews: bool | None, **engine: Any) -> None:
    """Frames/sec end to end and engine-only, latency, per-stage times. With --redis: its own keys and group,
    removed afterwards (never the production stream)."""
    from inspector import bench as benching

    cfg = _load(config_path, redis_url, batching__decode_threads=decode_threads, preview__enabled=previews, **engine)
    run_bench = benching.with_redis if use_redis else benching.offline
    result = run_bench(cfg, frames, rate, source, encoding, with_metrics)
    if out:
        benching.write(result, out)
    if as_json:
        click.echo(json.dumps(result))
    else:
        stages = ", ".join(f"{k} {v} ms" for k, v in result["stage_ms_per_frame"].items())
        on = {True: "on", False: "off"}
        click.echo(f"{result['frames']} frames: {result['fps']} frames/s end to end, engine {result['engine_fps']} "
                   f"frames/s ({result['backend']} on {result['device']}, batch {result['batch_size']}, metrics "
                   f"{on[result['metrics']]}, previews {on[result['previews']]}); latency "
                   f"p50 {result['latency_ms_p50']} ms, p99 {result['latency_ms_p99']} ms; camera rate "
                   f"{result['camera_fps']} met: {result['meets_camera_rate']}\nper frame: {stages}")


@main.command()
@shared_options
@engine_options
@click.option("--fps", type=float, default=None, help="Synthetic camera rate (default: camera.fps).")
@click.option("--seconds", type=float, default=None, help="Stop after this long (default: until Ctrl-C).")
@click.option("--bad-every", type=int, default=0, help="Make every Nth frame malformed, to see rejections.")
@click.option("--screen-address", default=None, help="HOST:PORT of the operator's screen (screen.address).")
def demo(config_path: str | None, redis_url: str | None, fps: float | None, seconds: float | None,
         bad_every: int, screen_address: str | None, **engine: Any) -> None:
    """The whole loop: private Redis, synthetic camera, the worker, the coils service, the operator's screen, a
    live summary."""
    from inspector import demo as demoing

    cfg = _load(config_path, redis_url, screen__address=screen_address, **engine)
    logging.getLogger("inspector.pipeline").setLevel(logging.WARNING)
    demoing.run(cfg, fps or cfg.camera.fps, seconds, bad_every)


if __name__ == "__main__":
    sys.exit(main())
