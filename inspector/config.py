"""Worker configuration: one frozen dataclass per stage, read from YAML, overridden by the command line.

Precedence: built-in defaults < YAML file (`--config`) < environment (`INSPECTOR_REDIS_URL`) < command line.
Post-processing values left null come from the engine's manifest (tuned by `trainer tune`), then from the
defaults in `inspector.postprocess.params`. An unknown or mistyped key raises ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from inspector.errors import ConfigError

REDIS_URL_ENV = "INSPECTOR_REDIS_URL"
T = TypeVar("T")


@dataclass(frozen=True)
class RedisConfig:
    """Where frames come from and events go (see README "Protocol")."""

    url: str | None = None  # None: `inspector run` uses redis://127.0.0.1:6379/0; `inspector demo` starts one
    frames_key: str = "inspect:frames"
    events_key: str = "inspect:events"
    dead_key: str = "inspect:frames:dead"
    stats_key: str = "inspect:stats"  # prefix of the worker's own keys: stats hashes, heartbeats, camera seq state
    group: str = "inspectors"
    consumer: str | None = None  # None: <hostname>-<worker_id>; must be stable across restarts
    worker_id: int = 0
    block_ms: int = 500  # XREADGROUP BLOCK; kept well under socket_timeout_s
    socket_timeout_s: float = 10.0
    heartbeat_ttl_ms: int = 3000  # a worker silent this long is dead: the others claim its pending frames
    claim_every_s: float = 1.0  # how often a worker looks for dead workers' frames
    max_deliveries: int = 6  # deliveries without an event before a frame goes to dead letters (last 2 alone)
    events_maxlen: int = 200_000  # XADD MAXLEN ~ on the events stream (README: how long that lasts)
    dead_maxlen: int = 100_000  # XADD MAXLEN ~ on the dead-letter stream
    frames_trim: str = "all_groups"  # all_groups | own_group | off: which acks free a frame (README)
    frames_retention_s: float = 0.0  # keep acknowledged frames this long (debugging) before trimming them
    camera_state_ttl_s: int = 86_400  # a camera's seq tracking state is dropped after this long unseen
    startup_wait_s: float = 30.0  # `inspector run` waits this long for Redis at start, then exits with the fix
    stats_ttl_s: int = 60  # the stats hash of a worker that stopped reporting expires after this long

    def consumer_name(self) -> str:
        return self.consumer or f"{socket.gethostname()}-{self.worker_id}"

    def safe_url(self) -> str:
        """The URL with any password replaced by ***, for messages and logs."""
        return redact(self.url or DEFAULT_URL)


@dataclass(frozen=True)
class BatchingConfig:
    """Size-or-deadline batching: a batch closes at batch_size frames or max_wait_ms after its first frame."""

    batch_size: int = 8
    max_wait_ms: float = 20.0
    ring_depth: int = 3  # staging buffers in flight (decode k+1 while the engine runs k)
    decode_threads: int = 1  # JPEG/PNG decode threads beside the producer thread (0: the producer alone)


@dataclass(frozen=True)
class EngineConfig:
    """Which engine folder to load and on what."""

    path: str = "engines/current"
    backend: str = "auto"  # auto | one of inspector.backends.BACKENDS (see README "Backends")
    device: str = "auto"  # auto (cuda when the backend can use it) | cpu | cuda
    threads: int = 0  # intra-op CPU threads for torch / ONNX Runtime; 0 = library default
    fp16: bool = True  # torch backend on CUDA: half precision
    cuda_graph_batches: tuple[int, ...] = (1, 8, 16, 32)  # torch on CUDA: graphs captured at start, batches padded
    watch: bool = True  # load a new engine when `path` points somewhere new (and on SIGHUP), without a stop
    watch_every_s: float = 2.0


@dataclass(frozen=True)
class PostprocessConfig:
    """Per-class post-processing; null = take the engine manifest's tuned value, then the default."""

    thresholds: tuple[float, ...] | None = None
    min_component_area: tuple[int, ...] | None = None
    min_class_area: tuple[int, ...] | None = None
    presence_threshold: tuple[float, ...] | None = None


@dataclass(frozen=True)
class CameraConfig:
    """What the cameras send: the rate the worker must keep up with, the frame geometry and what is plausible."""

    fps: float = 4.0  # the rate to meet (bench reports meets_camera_rate against it)
    height: int = 256
    width: int = 1600
    max_payload_bytes: int = 4_000_000  # larger frame payloads are rejected before decoding
    max_seq_jump: int = 100_000  # a forward seq jump larger than this is a camera restart, not a gap
    max_clock_skew_s: float = 3600.0  # capture times further than this from the worker's clock are implausible


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics and health endpoints, and the worker's own reporting."""

    address: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz; None: off
    live_timeout_s: float = 30.0  # /healthz and the systemd watchdog fail when a loop made no progress this long
    report_every_s: float = 5.0  # stats hash, summary log line, systemd STATUS=
    stop_timeout_s: float = 20.0  # a warm stop gives up publishing after this long (Redis away): frames stay pending


@dataclass(frozen=True)
class Config:
    redis: RedisConfig = field(default_factory=RedisConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self) -> Config:
        from inspector.backends import BACKENDS, DEVICES

        r, b, e, c, m = self.redis, self.batching, self.engine, self.camera, self.metrics
        checks = [
            ("batching.batch_size", b.batch_size >= 1, "use an integer >= 1"),
            ("batching.max_wait_ms", b.max_wait_ms >= 0, "use a number >= 0"),
            ("batching.ring_depth", b.ring_depth >= 2, "use an integer >= 2"),
            ("batching.decode_threads", 0 <= b.decode_threads <= 64, "use an integer in 0..64"),
            ("redis.block_ms", 1 <= r.block_ms < r.socket_timeout_s * 1000,
             "use 1 <= block_ms < socket_timeout_s * 1000 (redis-py does not extend the socket timeout)"),
            ("redis.socket_timeout_s", r.socket_timeout_s > 0, "use a number > 0"),
            ("redis.max_deliveries", r.max_deliveries >= 1, "use an integer >= 1"),
            ("redis.heartbeat_ttl_ms", r.heartbeat_ttl_ms >= 300, "use at least 300 ms"),
            ("redis.claim_every_s", r.claim_every_s > 0, "use a number > 0"),
            ("redis.events_maxlen", r.events_maxlen >= 1, "use an integer >= 1"),
            ("redis.dead_maxlen", r.dead_maxlen >= 1, "use an integer >= 1"),
            ("redis.frames_trim", r.frames_trim in FRAMES_TRIM, f"use one of {', '.join(FRAMES_TRIM)}"),
            ("redis.frames_retention_s", r.frames_retention_s >= 0, "use a number >= 0"),
            ("redis.camera_state_ttl_s", r.camera_state_ttl_s >= 1, "use an integer >= 1"),
            ("redis.startup_wait_s", r.startup_wait_s >= 0, "use a number >= 0"),
            ("redis.stats_ttl_s", r.stats_ttl_s >= 1, "use an integer >= 1"),
            ("engine.backend", e.backend == "auto" or e.backend in BACKENDS,
             f"use one of auto, {', '.join(BACKENDS)}"),
            ("engine.device", e.device == "auto" or e.device in DEVICES, f"use one of auto, {', '.join(DEVICES)}"),
            ("engine.cuda_graph_batches", all(n >= 1 for n in e.cuda_graph_batches), "use batch sizes >= 1"),
            ("engine.watch_every_s", e.watch_every_s > 0, "use a number > 0"),
            ("camera.fps", c.fps > 0, "use a number > 0"),
            ("camera.max_payload_bytes", c.max_payload_bytes >= 1024, "use at least 1024"),
            ("camera.max_seq_jump", c.max_seq_jump >= 1, "use an integer >= 1"),
            ("camera.max_clock_skew_s", c.max_clock_skew_s > 0, "use a number > 0"),
            ("metrics.live_timeout_s", m.live_timeout_s > 0, "use a number > 0"),
            ("metrics.report_every_s", m.report_every_s > 0, "use a number > 0"),
            ("metrics.stop_timeout_s", m.stop_timeout_s >= 0, "use a number >= 0"),
        ]
        for key, ok, fix in checks:
            if not ok:
                raise ConfigError(f"config key '{key}' is out of range: {fix}")
        for name in ("thresholds", "min_component_area", "min_class_area", "presence_threshold"):
            value = getattr(self.postprocess, name)
            if value is not None and len(value) != 4:
                raise ConfigError(f"config key 'postprocess.{name}' needs 4 values (one per class), got {value}")
        if r.url is not None:
            check_url(r.url)
        if m.address is not None:
            parse_address(m.address)
        return self


FRAMES_TRIM = ("all_groups", "own_group", "off")
DEFAULT_URL = "redis://127.0.0.1:6379/0"
_SCHEMES = ("redis://", "rediss://", "unix://")


def redact(url: str) -> str:
    """`redis://user:secret@host` -> `redis://user:***@host`: passwords never reach logs or messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def check_url(url: str) -> None:
    """ConfigError (password redacted) unless `url` is one redis-py can use."""
    if not url.startswith(_SCHEMES):
        raise ConfigError(f"redis.url '{redact(url)}' has no scheme: write it as redis://HOST:PORT/DB "
                          "(rediss:// for TLS, unix:///path/to.sock)")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise ConfigError(f"redis.url '{redact(url)}' is malformed ({exc}): write it as redis://HOST:PORT/DB") \
            from None
    if not url.startswith("unix://") and not parts.hostname:
        raise ConfigError(f"redis.url '{redact(url)}' names no host: write it as redis://HOST:PORT/DB")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigError(f"redis.url '{redact(url)}' has database '{db}': use a number, e.g. redis://HOST:6379/0")


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (or `:PORT`) -> (host, port), or ConfigError naming metrics.address."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"config key 'metrics.address' is '{address}': use HOST:PORT, e.g. 0.0.0.0:9108")
    return host or "0.0.0.0", int(port)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check and convert one YAML value to the dataclass field's type, or raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or (hint is int and value != int(value)):
            raise ConfigError(f"config key '{key}' must be {'an integer' if hint is int else 'a number'}, "
                              f"got {value!r}")
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")


def section(cls: type[T], data: Any, prefix: str = "") -> T:
    """A dataclass `cls` from a mapping, every value checked against its field's type; ConfigError names the
    first unknown or mistyped key (as `prefix.key`) and what it should be."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        where = f"'{prefix}'" if prefix else "the file"
        raise ConfigError(f"config {where} must be a mapping of keys, got {type(data).__name__} {data!r:.60}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    dotted = (lambda k: f"{prefix}.{k}") if prefix else str
    unknown = sorted(set(map(str, data)) - names)
    if unknown:
        where = f" in '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown config key '{dotted(unknown[0])}': valid keys{where} are "
                          f"{', '.join(sorted(names))}")
    return cls(**{k: _coerce(v, hints[k], dotted(k)) for k, v in data.items()})


def from_dict(data: dict[str, Any] | None) -> Config:
    """Build a validated Config from a nested mapping (the parsed YAML)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError("the config file must hold a mapping with sections redis, batching, engine, ...")
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"unknown config section '{unknown[0]}': valid sections are {', '.join(sections)}")
    return Config(**{name: section(factory, data.get(name), name)  # type: ignore[arg-type]
                     for name, factory in sections.items()}).validate()


def load(path: str | Path | None = None, redis_url: str | None = None, **overrides: Any) -> Config:
    """Read YAML (if given), apply `INSPECTOR_REDIS_URL`, then `redis_url` and dotted overrides.

    `overrides` use section__key names, e.g. `batching__batch_size=4`; None values are ignored.
    """
    data = read_yaml(path, "config/inspector.yaml") if path is not None else {}
    url = redis_url or os.environ.get(REDIS_URL_ENV)
    if url:
        overrides["redis__url"] = url
    for dotted, value in overrides.items():
        if value is None:
            continue
        name, key = dotted.split("__", 1)
        part = data.get(name)
        if part is not None and not isinstance(part, dict):
            raise ConfigError(f"config '{name}' must be a mapping of keys, got {type(part).__name__} {part!r:.60}")
        data[name] = {**(part or {}), key: value}
    return from_dict(data)


def read_yaml(path: str | Path, example: str) -> dict[str, Any]:
    """A YAML file holding a mapping, or ConfigError in one line naming the file, the place and the fix."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: pass --config an existing file "
                          f"(see {example})") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder: pass a YAML file (see {example})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text: pass a YAML file (see {example})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got a {type(data).__name__} "
                          f"(see {example})")
    return data


def replace(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of `config` with some fields of some sections replaced, e.g. replace(c, batching={...})."""
    return dataclasses.replace(
        config, **{name: dataclasses.replace(getattr(config, name), **values) for name, values in sections.items()}
    ).validate()
