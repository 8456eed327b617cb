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
    stats_key: str = "inspect:stats"  # hash per consumer: <stats_key>:<consumer>
    group: str = "inspectors"
    consumer: str | None = None  # None: <hostname>-<worker_id>; must be stable across restarts
    worker_id: int = 0
    block_ms: int = 500  # XREADGROUP BLOCK; kept well under socket_timeout_s
    socket_timeout_s: float = 10.0
    claim_idle_ms: int = 60_000  # claim entries idle this long from dead consumers
    claim_every_s: float = 5.0
    max_deliveries: int = 5  # more deliveries than this: dead letter + rejected event
    events_maxlen: int = 1_000_000  # XADD MAXLEN ~ on the events stream (never on frames)

    def consumer_name(self) -> str:
        return self.consumer or f"{socket.gethostname()}-{self.worker_id}"


@dataclass(frozen=True)
class BatchingConfig:
    """Size-or-deadline batching: a batch closes at batch_size frames or max_wait_ms after its first frame."""

    batch_size: int = 8
    max_wait_ms: float = 20.0
    ring_depth: int = 3  # staging buffers in flight (decode k+1 while the engine runs k)


@dataclass(frozen=True)
class EngineConfig:
    """Which engine folder to load and on what."""

    path: str = "engines/current"
    backend: str = "auto"  # auto (from the manifest's format) | torch | onnxruntime | tensorrt
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    threads: int = 0  # intra-op CPU threads for torch / ONNX Runtime; 0 = library default
    fp16: bool = True  # torch backend on CUDA: half precision


@dataclass(frozen=True)
class PostprocessConfig:
    """Per-class post-processing; null = take the engine manifest's tuned value, then the default."""

    thresholds: tuple[float, ...] | None = None
    min_component_area: tuple[int, ...] | None = None
    min_class_area: tuple[int, ...] | None = None
    presence_threshold: tuple[float, ...] | None = None


@dataclass(frozen=True)
class CameraConfig:
    """What the cameras send: the rate the worker must keep up with and the frame geometry."""

    fps: float = 4.0  # the rate to meet (bench reports meets_camera_rate against it)
    height: int = 256
    width: int = 1600


@dataclass(frozen=True)
class Config:
    redis: RedisConfig = field(default_factory=RedisConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)

    def validate(self) -> Config:
        checks = [
            ("batching.batch_size", self.batching.batch_size >= 1, "use an integer >= 1"),
            ("batching.max_wait_ms", self.batching.max_wait_ms >= 0, "use a number >= 0"),
            ("batching.ring_depth", self.batching.ring_depth >= 2, "use an integer >= 2"),
            ("redis.block_ms", 1 <= self.redis.block_ms < self.redis.socket_timeout_s * 1000,
             "use 1 <= block_ms < socket_timeout_s * 1000 (redis-py does not extend the socket timeout)"),
            ("redis.max_deliveries", self.redis.max_deliveries >= 1, "use an integer >= 1"),
            ("engine.backend", self.engine.backend in ("auto", "torch", "onnxruntime", "tensorrt"),
             "use one of auto, torch, onnxruntime, tensorrt"),
            ("engine.device", self.engine.device in ("auto", "cpu", "cuda"), "use one of auto, cpu, cuda"),
            ("camera.fps", self.camera.fps > 0, "use a number > 0"),
        ]
        for key, ok, fix in checks:
            if not ok:
                raise ConfigError(f"config key '{key}' is out of range: {fix}")
        for name in ("thresholds", "min_component_area", "min_class_area", "presence_threshold"):
            value = getattr(self.postprocess, name)
            if value is not None and len(value) != 4:
                raise ConfigError(f"config key 'postprocess.{name}' needs 4 values (one per class), got {value}")
        return self


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
        raise ConfigError(f"config file {path} does not exist: pass an existing file (see {example})") from None
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
