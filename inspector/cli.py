"""Command line: `inspector run | coils | screen | feed | events | engines | bench | demo | acl`. Parses options,
calls library code, no logic."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

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
                  help="Redis URL, e.g. redis://127.0.0.1:6379/0 (env INSPECTOR_REDIS_URL; a password here shows "
                       "in the process list).")
    @click.option("-v", "--verbose", count=True, help="-v for debug logging.")
    @functools.wraps(fn)
    def wrapper(*args: Any, verbose: int = 0, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        _warn_password_on_command_line(kwargs.get("redis_url"))
        try:
            return fn(*args, **kwargs)
        except InspectorError as exc:
            raise Failed(exc) from None

    return wrapper


def _warn_password_on_command_line(url: str | None) -> None:
    """A password typed into --redis-url sits in the process list (`ps`, /proc/PID/cmdline) for any local user."""
    import urllib.parse

    ctx = click.get_current_context(silent=True)
    if not url or ctx is None or ctx.get_parameter_source("redis_url") != ParameterSource.COMMANDLINE:
        return
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return  # malformed: config.check_url says so
    if password:
        logging.getLogger("inspector.cli").warning(
            "--redis-url carries a password, which every local user can read in the process list: put the URL in "
            "INSPECTOR_REDIS_URL (an EnvironmentFile= only the service user reads) or the systemd credential "
            "/etc/steel-inspector/redis-url (LoadCredential=, README \"Security\")")


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
              help="Images to send (cycled), or a dataset root holding images/; the synthetic camera without it.")
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
@click.option("-q", "--quiet", is_flag=True, help="Only the summary line.")
def feed(config_path: str | None, redis_url: str | None, folder: str | None, encoding: str, fps: float,
         count: int, camera: str, seed: int, frames_key: str | None, line: str | None, start_seq: int,
         wait_replicas: int | None, quiet: bool) -> None:
    """Push frames into the frames stream (a stand-in for the cameras); rides out failovers for
    redis.startup_wait_s, sending a batch again (a frame may arrive twice, never zero times). Frame ids are
    CAMERA-FILESTEM-SEQ for files (CAMERA-SEQ synthetic), so an event leads back to its image."""
    import time

    from inspector import feed as feeding
    from inspector.io import client as clients

    cfg = _load(config_path, redis_url, redis__line=line, redis__min_replicas_acked=wait_replicas)
    if folder:
        images = feeding.image_folder(folder)
        payloads = feeding.folder_payloads(images, encoding)
        source = f"{len(payloads)} images of {images} (cycled), frame ids {camera}-<file stem>-<seq>"
    else:
        payloads = feeding.synthetic_payloads(seed, 32, encoding)
        source = f"synthetic frames (seed {seed}), frame ids {camera}-<seq>"
    client = clients.connect(cfg.redis)
    key = frames_key or cfg.redis.keys().frames
    add = feeding.redis_adder(client, key, cfg.redis.min_replicas_acked, cfg.redis.replica_wait_ms,
                              cfg.redis.startup_wait_s, clients.where(cfg.redis))
    start = time.monotonic()
    said = [start]

    def progress(sent: int) -> None:
        now = time.monotonic()
        if not quiet and (now - said[0] >= 2.0 or sent == count):
            said[0] = now
            click.echo(f"[{now - start:5.1f}s] sent {sent}/{count} frames ({sent / max(now - start, 1e-9):.1f}/s)",
                       err=True)

    try:
        sent = feeding.feed(add, feeding.messages(payloads, camera, start_seq), count, fps, progress=progress)
    finally:
        clients.close(client)
    took = time.monotonic() - start
    click.echo(f"sent {sent} frames to {key} in {took:.1f} s ({sent / max(took, 1e-9):.1f} frames/s"
               f"{f', offered {fps:g}/s' if fps else ''}): camera {camera}, seq {start_seq}..{start_seq + sent - 1}, "
               f"{source}", err=True)


@main.command()
@shared_options
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--camera", default=None, help="Only this camera's events.")
@click.option("--status", type=click.Choice(["ok", "rejected"]), default=None, help="Only events of this status.")
@click.option("--count", "-n", type=int, default=20, show_default=True, help="How many of the latest to show first.")
@click.option("--line", default=None, help="redis.line: this line's events stream.")
@click.option("--events-key", default=None, help="Events stream (default from config: the line's).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event (the entry id added).")
def events(config_path: str | None, redis_url: str | None, follow: bool, camera: str | None, status: str | None,
           count: int, line: str | None, events_key: str | None, as_json: bool) -> None:
    """Print what the worker published: one line per event (time, camera, frame id, seq, status, each class's
    area, parts and score, the engine). Reads only: never acks, trims or joins a group."""
    import redis as redis_lib
    from redis.exceptions import RedisClusterException

    from inspector import eventlog
    from inspector.io import client as clients
    from inspector.io.redis_streams import classify

    cfg = _load(config_path, redis_url, redis__line=line)
    key = events_key or cfg.redis.keys().events
    keep = eventlog.Filter(camera, status)
    client = clients.connect(cfg.redis)
    node = clients.slot_client(client, key)

    def show(entry_id: str, event: dict[str, Any]) -> None:
        click.echo(json.dumps({"entry_id": entry_id, **event}) if as_json else eventlog.line(entry_id, event))

    try:
        shown = eventlog.last(node, key, count, keep)
        for entry_id, event in shown:
            show(entry_id, event)
        if not follow:
            total = node.xlen(key)
            click.echo(f"{len(shown)} event(s) shown of {total} in {key}" + (
                f" (filter: {', '.join(f for f in (camera and f'camera {camera}', status) if f)})"
                if camera or status else ""), err=True)
            return
        for entry_id, event in eventlog.follow(node, key, shown[-1][0] if shown else "$", keep):
            show(entry_id, event)
    except (redis_lib.RedisError, RedisClusterException) as exc:
        raise Failed(classify(exc, clients.where(cfg.redis), "reading events")) from None
    except KeyboardInterrupt:
        pass
    finally:
        clients.close(client)


def _quiet_worker() -> None:
    """The worker's info lines (start, stop, engine swaps, the periodic report) off: warnings and errors only."""
    for name in ("inspector.worker", "inspector.pipeline", "inspector.accounting", "inspector.serving"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
@click.option("--capture-every", type=int, default=0,
              help="Capture on at 1 in N frames (no cap per hour) into a temporary folder; 0: as configured.")
@click.option("--evidence", is_flag=True, help="Evidence crops on (with capture, into the same temporary folder).")
@click.option("--previews/--no-previews", default=None, help="Operator previews on or off (preview.enabled).")
def bench(config_path: str | None, redis_url: str | None, use_redis: bool, frames: int, rate: float, source: str,
          encoding: str, as_json: bool, out: str | None, with_metrics: bool, decode_threads: int | None,
          capture_every: int, evidence: bool, previews: bool | None, **engine: Any) -> None:
    """Frames/sec end to end and engine-only, latency, per-stage times. With --redis: its own keys and group,
    removed afterwards (never the production stream)."""
    from inspector import bench as benching

    cfg = _load(config_path, redis_url, batching__decode_threads=decode_threads,
                preview__enabled=previews, **engine)
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # the warm-up and burst runs' start/stop lines
        _quiet_worker()
    run_bench = benching.with_redis if use_redis else benching.offline
    with benching.capturing(cfg, capture_every, evidence) as cfg:
        result = run_bench(cfg, frames, rate, source, encoding, with_metrics)
    if out:
        benching.write(result, out)
    click.echo(json.dumps(result) if as_json else benching.summary(result))
    if result.get("capture") and not as_json:
        click.echo("capture: " + ", ".join(f"{k} {v}" for k, v in result["capture"].items()))


@main.command()
@shared_options
@engine_options
@click.option("--fps", type=float, default=None, help="Synthetic camera rate (default: camera.fps).")
@click.option("--seconds", type=float, default=None, help="Stop after this long (default: until Ctrl-C).")
@click.option("--bad-every", type=int, default=0, help="Make every Nth frame malformed, to see rejections.")
@click.option("--capture", "capture_dir", type=click.Path(file_okay=False), default=None,
              help="Capture on (every policy, evidence crops) into this folder; 'temp': a temporary one.")
@click.option("--screen-address", default=None, help="HOST:PORT of the operator's screen (screen.address).")
def demo(config_path: str | None, redis_url: str | None, fps: float | None, seconds: float | None,
         bad_every: int, capture_dir: str | None, screen_address: str | None, **engine: Any) -> None:
    """The whole loop: private Redis, synthetic camera, the worker, the coils service, the operator's screen, a
    live summary."""
    import tempfile

    from inspector import demo as demoing

    cfg = _load(config_path, redis_url, screen__address=screen_address, **engine)
    _quiet_worker()
    if capture_dir == "temp":
        capture_dir = tempfile.mkdtemp(prefix="inspector-capture-")
    if capture_dir is not None:
        cfg = demoing.with_capture(cfg, capture_dir)
    demoing.run(cfg, fps or cfg.camera.fps, seconds, bad_every)


@click.group(invoke_without_command=True)
@click.option("--engines", "engines_dir", default="engines", show_default=True, type=click.Path(file_okay=False),
              help="The engines folder (engine.path's parent).")
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@click.pass_context
def engines(ctx: click.Context, engines_dir: str, as_json: bool) -> None:
    """Installed engines (id, built, format, parity, validation, gate; * = current); `engines use ID` switches."""
    from inspector import engines as engine_folders

    ctx.obj = engines_dir
    if ctx.invoked_subcommand is None:
        try:
            rows = engine_folders.installed(engines_dir)
        except InspectorError as exc:
            raise Failed(exc) from None
        click.echo(json.dumps(rows) if as_json else engine_folders.table(rows))


@engines.command("use")
@click.argument("engine_id")
@click.pass_obj
def engines_use(engines_dir: str, engine_id: str) -> None:
    """Point engines/current at ENGINE_ID (checked first); a running worker switches to it within
    engine.watch_every_s, between two batches. `engines use` of the former id goes back."""
    from inspector import engines as engine_folders

    try:
        before = engine_folders.current_id(engines_dir)
        engine = engine_folders.use(engines_dir, engine_id)
    except InspectorError as exc:
        raise Failed(exc) from None
    click.echo(f"engines/current -> {engine.manifest.engine_id} ({engine.manifest.format}, "
               f"{engine.manifest.precision}); was {before}. A running worker with engine.watch on follows within "
               "engine.watch_every_s; back: `engines use " + str(before) + "`")
    refusal = engine_folders.gate_refusal(engine.manifest.raw)
    if refusal is not None:
        click.echo(f"note: a worker with engine.require_gate on (the default) will refuse it: {refusal}", err=True)


main.add_command(engines)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config: key names follow its redis / coils sections (built-in defaults without it).")
@click.option("--role", "roles", multiple=True,
              type=click.Choice(["all", "camera", "worker", "coils", "reader", "screen"]), default=("all",),
              show_default=True, help="The role(s) to print; repeat, or all.")
@click.option("--line", default=None, help="The line (default redis.line): users and keys are per line.")
@click.option("--aclfile", "as_aclfile", is_flag=True, help="Print aclfile `user ...` lines instead of ACL SETUSER.")
@click.option("--password-stdin", is_flag=True,
              help="Read one password per role (in the order printed) from stdin; stored as its SHA-256.")
def acl(config_path: str | None, roles: tuple[str, ...], line: str | None, as_aclfile: bool,
        password_stdin: bool) -> None:
    """Least-privilege Redis users, one per role: ACL SETUSER lines for `redis-cli` (stdin or its prompt; what
    each user is for goes to stderr), or aclfile lines (README "Security")."""
    from inspector import config
    from inspector.io import acl as acls

    try:
        cfg = config.load(config_path)
        names = list(acls.ROLES) if "all" in roles else list(dict.fromkeys(roles))
        users = [acls.role(name, cfg, line) for name in names]
    except InspectorError as exc:
        raise Failed(exc) from None
    passwords = [None] * len(users)
    if password_stdin:
        given = [p.rstrip("\r\n") for p in sys.stdin.readlines()]
        if len(given) < len(users) or not all(given[:len(users)]):
            raise click.UsageError(f"--password-stdin: give {len(users)} non-empty line(s), one password per role "
                                   f"({', '.join(u.user for u in users)})")
        passwords = given[:len(users)]
    for user, password in zip(users, passwords, strict=True):
        click.echo(f"# {user.user}: {user.what}" + ("" if password else " (no password: add >PASSWORD, or use "
                                                                            "--password-stdin)"), err=True)
        click.echo(user.aclfile_line(password) if as_aclfile else user.setuser(password))


if __name__ == "__main__":
    sys.exit(main())
