"""Worker configuration: one frozen dataclass per stage, read from YAML, overridden by the command line.

Precedence: built-in defaults < YAML file (`--config`) < the systemd credential `redis-url` (LoadCredential=,
read from $CREDENTIALS_DIRECTORY) < environment (`INSPECTOR_REDIS_URL`) < command line.
Post-processing values left null come from the engine's manifest (tuned by `trainer tune`), then from the
defaults in `inspector.postprocess.params`. An unknown or mistyped key raises ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import types
import typing
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from inspector.errors import ConfigError
from inspector.io.keys import CONFIGURED, LineKeys
from inspector.io.keys import check as check_keys

REDIS_URL_ENV = "INSPECTOR_REDIS_URL"
REDIS_URL_CREDENTIAL = "redis-url"  # the unit's LoadCredential=redis-url:/etc/steel-inspector/redis-url
LOOPBACK = "127.0.0.1"  # where metrics and pages listen unless an address names a host
T = TypeVar("T")
log = logging.getLogger(__name__)

# Keys that moved: old (section, key) -> new (section, key). An old config still naming one keeps working, read
# into the new place with a warning; naming both with different values is a ConfigError (from_dict, `_migrate`).
MOVED = {("metrics", "stop_timeout_s"): ("worker", "stop_timeout_s")}


FRAMES_TRIM = ("all_groups", "own_group", "off")
REDIS_MODES = ("standalone", "cluster", "sentinel")


@dataclass(frozen=True)
class Rule:
    """A field's valid values, stated beside the field (`setting(...)`) and checked by `validate()`."""

    ok: Callable[[Any], bool]
    bounds: str  # e.g. ">= 1", "one of a, b"
    fix: str | None = None  # what to write instead, when the bounds alone would not say it
    each: bool = False  # a tuple field: every element must pass

    def advice(self, hint: Any) -> str:
        if self.fix:
            return self.fix
        if self.bounds.startswith("one of"):
            return f"use {self.bounds}"
        kind = {int: "an integer", float: "a number"}.get(hint, "a value")
        return f"use {kind} {self.bounds}"


def setting(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, choices: Sequence[str] | None = None,
            each: bool = False, fix: str | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A config field whose valid range is written once, here: `batch_size: int = setting(8, ge=1)`.

    Bounds and choices build the check and its fix text ("use a number >= 0"); a None value (an optional key
    left unset) always passes. Rules that relate two keys live in the section's `check()`."""
    tests: list[Callable[[Any], bool]] = []
    words: list[str] = []
    for bound, op, word in ((ge, float.__ge__, ">="), (gt, float.__gt__, ">"), (le, float.__le__, "<="),
                            (lt, float.__lt__, "<")):
        if bound is not None:
            tests.append(lambda v, b=float(bound), o=op: o(float(v), b))
            words.append(f"{word} {bound:g}")
    if choices is not None:
        allowed = tuple(choices)
        tests.append(lambda v: v in allowed)
        words.append("one of " + ", ".join(allowed))
    metadata: dict[str, Any] = {}
    if tests:
        bounds = words[-1] if choices is not None else " and ".join(words)
        metadata["rule"] = Rule(lambda v: v is None or all(t(v) for t in tests), bounds, fix, each)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RedisConfig:
    """Where frames come from and events go (see README "Protocol" and "Scaling past one Redis")."""

    url: str | None = None  # None: `inspector run` uses redis://127.0.0.1:6379/0; `inspector demo` starts one
    mode: str = setting("standalone", choices=REDIS_MODES)  # cluster: url names any node; sentinel: see sentinels
    sentinels: tuple[str, ...] = ()  # mode sentinel: HOST:PORT of each sentinel (password and db from url)
    sentinel_service: str | None = None  # mode sentinel: the NAME of `sentinel monitor NAME ...`
    line: str = "main"  # the line this worker serves: every key below carries its hash tag {line} (check())
    frames_key: str | None = None  # None: inspect:{<line>}:frames (inspector/io/keys.py derives every name)
    events_key: str | None = None  # None: inspect:{<line>}:events
    dead_key: str | None = None  # None: inspect:{<line>}:frames:dead
    stats_key: str | None = None  # None: inspect:{<line>}:stats, the prefix of each worker's stats hash
    group: str = "inspectors"
    consumer: str | None = None  # None: <hostname>-<worker_id>; must be stable across restarts
    worker_id: int = setting(0, ge=0)
    min_replicas_acked: int = setting(0, ge=0)  # after each publish, WAIT until this many replicas hold it (README)
    replica_wait_ms: int = setting(1000, ge=1)  # WAIT's timeout; fewer replicas by then: waited again, visibly
    block_ms: int = setting(500, ge=1)  # XREADGROUP BLOCK; kept well under socket_timeout_s (check())
    socket_timeout_s: float = setting(10.0, gt=0)
    heartbeat_ttl_ms: int = setting(3000, ge=300, fix="use at least 300 ms")  # silent this long: dead, claimed
    claim_every_s: float = setting(1.0, gt=0)  # how often a worker looks for dead workers' frames
    max_deliveries: int = setting(6, ge=1)  # deliveries without an event before dead letters (last 2 alone)
    events_maxlen: int = setting(200_000, ge=1)  # XADD MAXLEN ~ on the events stream (README: how long that lasts)
    dead_maxlen: int = setting(100_000, ge=1)  # XADD MAXLEN ~ on the dead-letter stream
    frames_trim: str = setting("all_groups", choices=FRAMES_TRIM)  # which acks free a frame (README)
    frames_retention_s: float = setting(0.0, ge=0)  # keep acknowledged frames this long (debugging)
    camera_state_ttl_s: int = setting(86_400, ge=1)  # a camera's seq tracking state is dropped after this unseen
    startup_wait_s: float = setting(30.0, ge=0)  # `inspector run` waits this long for Redis, then exits with the fix
    stats_ttl_s: int = setting(60, ge=1)  # the stats hash of a worker that stopped reporting expires after this

    def consumer_name(self) -> str:
        return self.consumer or f"{socket.gethostname()}-{self.worker_id}"

    def keys(self) -> LineKeys:
        """Every key name of this line and group, resolved (the one place: inspector/io/keys.py)."""
        return LineKeys.of(self)

    def safe_url(self) -> str:
        """The URL with any password replaced by ***, for messages and logs."""
        return redact(self.url or DEFAULT_URL)

    def check(self) -> None:
        if self.block_ms >= self.socket_timeout_s * 1000:
            raise ConfigError("config key 'redis.block_ms' is out of range: use 1 <= block_ms < socket_timeout_s "
                              "* 1000 (redis-py does not extend the socket timeout)")
        if self.min_replicas_acked and self.replica_wait_ms >= self.socket_timeout_s * 1000:
            raise ConfigError("config key 'redis.replica_wait_ms' is out of range: use 1 <= replica_wait_ms < "
                              "socket_timeout_s * 1000 (WAIT blocks the connection that long)")
        if self.url is not None:
            check_url(self.url)
        check_keys("redis", self.line, self.mode == "cluster", {f: getattr(self, f) for f in CONFIGURED})
        if self.mode == "cluster" and self.url is not None:
            if self.url.startswith("unix://"):
                raise ConfigError("config key 'redis.url' is a unix socket: Redis Cluster needs redis://HOST:PORT "
                                  "of any node")
            if urllib.parse.urlsplit(self.url).path.strip("/") not in ("", "0"):
                raise ConfigError(f"config key 'redis.url' '{redact(self.url)}' names a database: Redis Cluster has "
                                  "only database 0 (write redis://HOST:PORT/0)")
        if self.mode == "sentinel":
            if not self.sentinels:
                raise ConfigError("config key 'redis.sentinels' is empty: mode sentinel needs HOST:PORT of each "
                                  "sentinel, e.g. [10.0.0.1:26379, 10.0.0.2:26379, 10.0.0.3:26379]")
            for address in self.sentinels:
                parse_host_port(address, "redis.sentinels")
            if not self.sentinel_service:
                raise ConfigError("config key 'redis.sentinel_service' is not set: mode sentinel needs the NAME of "
                                  "`sentinel monitor NAME HOST PORT QUORUM`")


@dataclass(frozen=True)
class BatchingConfig:
    """Size-or-deadline batching: a batch closes at batch_size frames or max_wait_ms after its first frame."""

    batch_size: int = setting(8, ge=1)
    max_wait_ms: float = setting(20.0, ge=0)
    ring_depth: int = setting(3, ge=2)  # staging buffers in flight (decode k+1 while the engine runs k)
    decode_threads: int = setting(1, ge=0, le=64)  # JPEG/PNG decode threads beside the producer (0: it alone)


@dataclass(frozen=True)
class EngineConfig:
    """Which engine folder to load and on what."""

    path: str = "engines/current"
    backend: str = "auto"  # auto | one of inspector.backends.BACKENDS (see README "Backends"; check())
    device: str = "auto"  # auto (cuda when the backend can use it) | cpu | cuda (check())
    threads: int = setting(0, ge=0)  # intra-op CPU threads for torch / ONNX Runtime; 0 = library default
    fp16: bool = True  # torch backend on CUDA: half precision
    cuda_graph_batches: tuple[int, ...] = setting((1, 2, 4, 8, 12, 16, 24, 32), ge=1, each=True,
                                                  fix="use batch sizes >= 1")  # torch on CUDA: graphs at start
    watch: bool = True  # load a new engine when `path` points somewhere new (and on SIGHUP), without a stop
    watch_every_s: float = setting(2.0, gt=0)
    require_gate: bool = True  # a swap refuses an engine whose quality gate failed or was skipped (build-engine --gate)
    shadow: str | None = None  # a candidate engine folder run beside the live one on sampled frames (shadow.py)
    shadow_every: int = setting(10, ge=1)  # the shadow sees 1 in N published ok frames...
    shadow_budget: float = setting(0.1, gt=0, le=1)  # ...while it has spent at most this share of live engine time
    shadow_summary_s: float = setting(60.0, gt=0)  # a summary line (and the report rewritten) this often
    shadow_report: str | None = None  # JSON of the comparison so far, rewritten atomically (trainer shadow-report)

    def check(self) -> None:
        from inspector.backends import BACKENDS, DEVICES

        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ConfigError(f"config key 'engine.backend' is out of range: use one of auto, {', '.join(BACKENDS)}")
        if self.device != "auto" and self.device not in DEVICES:
            raise ConfigError(f"config key 'engine.device' is out of range: use one of auto, {', '.join(DEVICES)}")


@dataclass(frozen=True)
class PostprocessConfig:
    """Per-class post-processing; null = take the engine manifest's tuned value, then the default."""

    thresholds: tuple[float, ...] | None = None
    min_component_area: tuple[int, ...] | None = None
    min_class_area: tuple[int, ...] | None = None
    presence_threshold: tuple[float, ...] | None = None

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and len(value) != 4:
                raise ConfigError(f"config key 'postprocess.{f.name}' needs 4 values (one per class), got {value}")


@dataclass(frozen=True)
class CameraConfig:
    """What the cameras send: the rate the worker must keep up with, the frame geometry and what is plausible."""

    fps: float = setting(4.0, gt=0)  # the rate to meet (bench reports meets_camera_rate against it)
    height: int = setting(256, ge=1)
    width: int = setting(1600, ge=1)
    max_payload_bytes: int = setting(4_000_000, ge=1024, fix="use at least 1024")  # larger: rejected before decode
    max_seq_jump: int = setting(100_000, ge=1)  # a forward seq jump larger than this is a camera restart, not a gap
    max_clock_skew_s: float = setting(3600.0, gt=0)  # capture times further than this from our clock: implausible


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics and health endpoints, and the worker's own reporting."""

    address: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz; None: off (check())
    live_timeout_s: float = setting(30.0, gt=0)  # /healthz and the watchdog fail when a loop stalls this long
    report_every_s: float = setting(5.0, gt=0)  # stats hash, summary log line, systemd STATUS=

    def check(self) -> None:
        if self.address is not None:
            parse_address(self.address)


@dataclass(frozen=True)
class WorkerConfig:
    """The runner's own settings (inspector/worker.py: threads, publish retry, warm stop); the stages' settings
    live in their own sections."""

    # a warm stop gives up publishing after this long (Redis away): the frames stay pending, re-read on restart;
    # the producer, blocked on a full hand-off, is drained for this long plus 5 s
    stop_timeout_s: float = setting(20.0, ge=0)


@dataclass(frozen=True)
class CaptureConfig:
    """Frames kept for retraining and evidence crops of defects (inspector/capture/, README "Learning from the
    line"). Each policy has its own cap per hour; 0 turns a policy off."""

    enabled: bool = False
    folder: str = "capture"  # <folder>/<yyyy-mm-dd>/images, predicted.csv, meta.jsonl; <folder>/evidence/<day>/...
    max_bytes: int = setting(20_000_000_000, ge=1_000_000, fix="use at least 1000000 (1 MB)")  # oldest day goes
    sample_every: int = setting(0, ge=0)  # random 1 in N frames (a hash of the frame id); 0: off
    sample_per_hour: int = setting(120, ge=0)
    uncertain_band: float = setting(0.0, ge=0, le=1)  # presence or max prob within this of its threshold; 0: off
    uncertain_per_hour: int = setting(120, ge=0)
    rare_classes: tuple[int, ...] = setting((), ge=1, le=4, each=True, fix="use class ids 1..4")
    rare_per_hour: int = setting(120, ge=0)
    on_demand_key: str | None = None  # Redis set of camera:<name> / coil:<id>; None: inspect:{<line>}:capture
    on_demand_per_hour: int = setting(600, ge=0)
    on_demand_poll_s: float = setting(2.0, gt=0)  # how often the writer thread reads the on-demand set
    queue_size: int = setting(64, ge=1, le=10_000)  # captures waiting for the writer; full: dropped, counted
    evidence: bool = False  # a JPEG crop per kept component (largest first), its path in the event
    evidence_per_frame: int = setting(8, ge=1, le=64)  # K: crops per frame at most
    evidence_margin_px: int = setting(16, ge=0, le=512)
    evidence_max_bytes: int = setting(5_000_000_000, ge=1_000_000, fix="use at least 1000000 (1 MB)")
    jpeg_quality: int = setting(90, ge=1, le=100)

    def check(self) -> None:
        if not self.folder.strip():
            raise ConfigError("config key 'capture.folder' is empty: name a folder, e.g. /var/lib/inspector/capture")


# -- the line layer (`inspector coils`, README "The line layer") ----------------------------------------------
SURFACES = ("top", "bottom")
CLASS_KEYS = ("1", "2", "3", "4")


@dataclass(frozen=True)
class CameraPlacement:
    """Where one camera's frames sit on the strip: column x of a frame is across, row y along."""

    surface: str = setting("top", choices=SURFACES)
    x_offset_mm: float = 0.0  # across the strip, where column 0 is
    mm_per_px_across: float = setting(1.0, gt=0)
    mm_per_px_along: float = setting(1.0, gt=0)


@dataclass(frozen=True)
class GradeLimits:
    """One grade of the acceptance matrix: a coil gets the first grade whose limits all hold."""

    name: str = ""
    max_per_100m: dict[str, float] = field(default_factory=dict)  # class id "1".."4" -> defects per 100 m, at most
    max_area_mm2: dict[str, float] = field(default_factory=dict)  # class id -> the largest defect's area, at most
    max_periodic: int | None = setting(None, ge=0)  # periodic (roll) marks at most; null: no limit
    min_coverage: float | None = setting(None, ge=0, le=1)  # every camera's coverage at least; null: no limit

    def check(self) -> None:
        if not self.name:
            raise ConfigError("config key 'line.grades[].name' is missing: give every grade a name, e.g. A")
        for key in ("max_per_100m", "max_area_mm2"):
            for cls, limit in getattr(self, key).items():
                if cls not in CLASS_KEYS or limit < 0:
                    raise ConfigError(f"config key 'line.grades.{self.name}.{key}.{cls}' is out of range: use "
                                      "class ids 1..4 with limits >= 0")


def _default_grades() -> tuple[GradeLimits, ...]:
    return (GradeLimits("A", {"1": 2, "2": 2, "3": 5, "4": 1}, {"1": 100, "2": 200, "3": 1000, "4": 2000}, 0, 0.95),
            GradeLimits("B", {"1": 10, "2": 10, "3": 20, "4": 5}, {"1": 500, "2": 1000, "3": 5000, "4": 20000}, 0,
                        0.8),
            GradeLimits("C", {}, {}, 0, 0.5))


@dataclass(frozen=True)
class LineConfig:
    """The strip's geometry, roll-mark search and acceptance matrix: the line service's, not the worker's."""

    cameras: dict[str, CameraPlacement] = field(default_factory=dict)  # camera name -> where its frames sit
    rolls_mm: dict[str, float] = field(default_factory=dict)  # roll name -> circumference; a periodic finding names it
    periodic_min_repeats: int = setting(3, ge=2)  # a mark is periodic once seen this many times at one pitch
    coil_idle_s: float = setting(30.0, gt=0)  # closes this long after its last event, once its cameras moved on
    end_grace_s: float = setting(5.0, ge=0)  # events published up to this long after the coil end still count
    merge_gap_mm: float = setting(1.0, ge=0)  # parts of a defect this close along and across are one defect
    periodic_x_tol_mm: float = setting(10.0, gt=0)  # repeats of one mark sit this close across the strip
    periodic_jitter_mm: float = setting(15.0, gt=0)  # a repeat sits this close to first_mm + k * pitch
    periodic_max_missed: int = setting(2, ge=0)  # repeats in a row a mark may miss (a rejected frame, too faint)
    periodic_pitch_mm: tuple[float, ...] = setting((300.0, 10000.0), gt=0, each=True)  # search range, unnamed pitches
    roll_tolerance: float = setting(0.01, gt=0, lt=1)  # a pitch within this fraction of a circumference names the roll
    grades: tuple[GradeLimits, ...] = setting(factory=_default_grades)  # best first
    hold_grade: str = "hold"  # the grade of a coil that meets no grade's limits

    def check(self) -> None:
        for name, cam in self.cameras.items():
            validate_section(cam, f"line.cameras.{name}")
        for roll, mm in self.rolls_mm.items():
            if not mm > 0:
                raise ConfigError(f"config key 'line.rolls_mm.{roll}' is out of range: use a circumference > 0 mm")
        low, high = (*self.periodic_pitch_mm, 0.0, 0.0)[:2]
        if len(self.periodic_pitch_mm) != 2 or not low < high:
            raise ConfigError("config key 'line.periodic_pitch_mm' is out of range: use [shortest, longest] pitch in "
                              "mm, shortest < longest, e.g. [300, 10000]")
        for grade in self.grades:
            validate_section(grade, "line.grades")
        if not self.grades:
            raise ConfigError("config key 'line.grades' is empty: give at least one grade (see config/inspector.yaml)")


@dataclass(frozen=True)
class CoilsConfig:
    """`inspector coils`: its keys (all derived here, README "The line layer"), group, pacing and report files."""

    # keys: None derives them from redis.line (inspector/io/keys.py), in the line's hash slot
    events_key: str | None = None  # input: the worker's events (None: the worker's, inspect:{<line>}:events)
    coil_ends_key: str | None = None  # input: end-of-coil entries (None: inspect:{<line>}:coil-ends)
    coils_key: str | None = None  # output: one report entry per coil (None: inspect:{<line>}:coils)
    state_prefix: str | None = None  # every other key: per-coil state, heartbeats, stats (None: inspect:{<line>}:line)
    group: str = "coils"  # consumer group on both inputs
    consumer: str | None = None  # None: <hostname>-coils-<worker_id>; stable across restarts
    batch_size: int = setting(256, ge=1, le=4096)  # events folded per Lua call
    block_ms: int = setting(500, ge=1)
    heartbeat_ttl_ms: int = setting(10_000, ge=300, fix="use at least 300 ms")  # silent this long: claimed
    claim_every_s: float = setting(1.0, gt=0)
    close_every_s: float = setting(1.0, gt=0)  # how often open coils are checked for closing
    coils_maxlen: int = setting(100_000, ge=1)  # XADD MAXLEN ~ on the coils stream
    tombstone_ttl_s: int = setting(7 * 86_400, ge=1)  # a closed coil is remembered this long (late events)
    max_coil_bytes: int = setting(64_000_000, ge=1024)  # a coil's stored defects stop growing here (counted)
    reports_dir: str = "reports"
    metrics_address: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz; None: off

    def check(self) -> None:
        if self.metrics_address is not None:
            parse_address(self.metrics_address, "coils.metrics_address", "127.0.0.1:9109")


# -- what the operator and the PLC see (README "The operator's screen") ---------------------------------------
@dataclass(frozen=True)
class PreviewConfig:
    """The worker's previews: per camera at most one small JPEG per every_s, the latest only, in Redis with a TTL."""

    enabled: bool = True
    every_s: float = setting(1.0, gt=0)  # per camera, at most one preview this often
    width: int = setting(800, ge=32, le=4096)  # px, the downscaled width (height keeps the frame's aspect)
    quality: int = setting(70, ge=1, le=100)  # JPEG quality
    alpha: float = setting(0.45, ge=0, le=1)  # how strongly a class's colour covers its mask's pixels
    ttl_s: int = setting(30, ge=1)  # a camera's preview expires this long after the last one (a silent camera)
    queue: int = setting(8, ge=1, le=1024)  # previews waiting for the render thread; when full: dropped, counted
    max_cameras: int = setting(64, ge=1, le=4096)  # camera names previewed at most (the first seen; the rest counted)
    key_prefix: str | None = None  # None: <redis frames key>:preview; one key <prefix>:<camera> per camera


ALARM_KINDS = ("defect", "density", "periodic", "coverage", "camera_silent", "worker_not_ready")


@dataclass(frozen=True)
class AlarmRule:
    """One alarm rule (README "Alarm rules"): it fires once when its condition starts and clears when it ends."""

    name: str = ""
    kind: str = setting("defect", choices=ALARM_KINDS)
    class_id: int | None = setting(None, ge=1, le=4)  # defect, density, periodic: this class only (null: any)
    surface: str | None = setting(None, choices=SURFACES)  # null: both surfaces
    zone_mm: tuple[float, ...] = ()  # [from, to] across the strip (mm); empty: the whole width
    min_area_mm2: float = setting(0.0, ge=0)  # defect, density: defects at least this large
    per_metre: float | None = setting(None, gt=0)  # density: fires at this many defects per metre or more
    window_m: float | None = setting(None, gt=0)  # defect, density: the last this many metres (null: the whole
    #                                                coil; density needs one, default 10 m)
    floor: float | None = setting(None, ge=0, le=1)  # coverage: fires below this fraction
    after_m: float = setting(5.0, ge=0)  # coverage: judged once this much of the coil has passed the cameras
    silent_s: float = setting(10.0, gt=0)  # camera_silent: no event of a camera for this long
    min_workers: int = setting(1, ge=1)  # worker_not_ready: fewer live workers than this
    clear_after_s: float = setting(0.0, ge=0)  # clears once its condition has been gone this long (no flapping)

    def check(self) -> None:
        where = f"alarms.rules.{self.name or '?'}"
        if not self.name:
            raise ConfigError("config key 'alarms.rules[].name' is missing: give every rule a name, e.g. big-dark")
        if self.zone_mm and (len(self.zone_mm) != 2 or not self.zone_mm[0] < self.zone_mm[1]):
            raise ConfigError(f"config key '{where}.zone_mm' is out of range: use [from, to] mm across, from < to")
        if self.kind == "density" and self.per_metre is None:
            raise ConfigError(f"config key '{where}.per_metre' is missing: a density rule needs defects per metre")
        if self.kind == "coverage" and self.floor is None:
            raise ConfigError(f"config key '{where}.floor' is missing: a coverage rule needs a fraction, e.g. 0.9")


def _default_rules() -> tuple[AlarmRule, ...]:
    return (AlarmRule("large-dark-region", "defect", class_id=4, min_area_mm2=10_000.0),
            AlarmRule("defect-cluster", "density", per_metre=10.0, window_m=5.0, clear_after_s=5.0),
            AlarmRule("roll-mark", "periodic"),
            AlarmRule("coverage-low", "coverage", floor=0.9),
            AlarmRule("camera-silent", "camera_silent", silent_s=10.0),
            AlarmRule("worker-not-ready", "worker_not_ready"))


@dataclass(frozen=True)
class AlarmsConfig:
    """Alarms as data: rules evaluated by `inspector screen`, transitions onto a bounded stream."""

    key: str | None = None  # None: inspect:{<line>}:alarms (stream); <key>:active is the hash of active alarms
    maxlen: int = setting(10_000, ge=1)  # XADD MAXLEN ~ on the alarms stream
    rules: tuple[AlarmRule, ...] = setting(factory=_default_rules)

    def check(self) -> None:
        names = [r.name for r in self.rules]
        for rule in self.rules:
            validate_section(rule, "alarms.rules")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"config key 'alarms.rules.{dup[0]}' is given twice: give every rule its own name")


@dataclass(frozen=True)
class ScreenConfig:
    """`inspector screen`: the operator's live page (HTTP + server-sent events)."""

    address: str = "127.0.0.1:8090"  # HOST:PORT; 0.0.0.0 to serve the line's network (no login: see README)
    every_s: float = setting(1.0, gt=0)  # how often Redis is read and the page updated
    defects_shown: int = setting(12, ge=1, le=500)  # the latest defects listed
    reports_shown: int = setting(10, ge=0, le=500)  # past coil reports linked
    evidence_dir: str | None = None  # where the events' evidence crop paths are relative to; None: capture.folder

    def check(self) -> None:
        parse_address(self.address, "screen.address", "127.0.0.1:8090")


@dataclass(frozen=True)
class OpcuaConfig:
    """The OPC UA server of `inspector screen`, for the PLC / SCADA: read-only variables and alarm events."""

    endpoint: str | None = None  # e.g. opc.tcp://0.0.0.0:4840/steel-inspector/; None: no OPC UA server
    namespace: str = "urn:steel-inspector"  # the namespace URI of our nodes (its index is looked up by clients)

    def check(self) -> None:
        if self.endpoint is not None:
            parts = urllib.parse.urlsplit(self.endpoint)
            if parts.scheme != "opc.tcp" or not parts.hostname:
                raise ConfigError(f"config key 'opcua.endpoint' is '{self.endpoint}': use opc.tcp://HOST:PORT/PATH, "
                                  "e.g. opc.tcp://0.0.0.0:4840/steel-inspector/")


@dataclass(frozen=True)
class Config:
    redis: RedisConfig = field(default_factory=RedisConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    line: LineConfig = field(default_factory=LineConfig)
    coils: CoilsConfig = field(default_factory=CoilsConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    opcua: OpcuaConfig = field(default_factory=OpcuaConfig)

    def validate(self) -> Config:
        """Every section's field rules (`setting`), then its `check()` for rules that relate keys; then the keys
        other sections name, against the line's layout (redis.line, redis.mode)."""
        for sec in dataclasses.fields(self):
            validate_section(getattr(self, sec.name), sec.name)
        check_keys("coils", self.redis.line, self.redis.mode == "cluster",
                   {f: getattr(self.coils, f) for f in ("events_key", "coil_ends_key", "coils_key", "state_prefix")})
        check_keys("capture", self.redis.line, self.redis.mode == "cluster",
                   {"on_demand_key": self.capture.on_demand_key})
        check_keys("preview", self.redis.line, self.redis.mode == "cluster", {"key_prefix": self.preview.key_prefix})
        check_keys("alarms", self.redis.line, self.redis.mode == "cluster", {"key": self.alarms.key})
        return self


def validate_section(part: Any, prefix: str) -> None:
    """ConfigError naming the first key of `part` (a section dataclass) that breaks its rule."""
    for f in dataclasses.fields(part):
        rule: Rule | None = f.metadata.get("rule")
        value = getattr(part, f.name)
        if rule is not None and not all(rule.ok(v) for v in (value if rule.each else (value,))):
            hint = typing.get_type_hints(type(part))[f.name]
            raise ConfigError(f"config key '{prefix}.{f.name}' is out of range: {rule.advice(hint)}")
    check = getattr(part, "check", None)
    if check is not None:
        check()


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


def parse_host_port(address: str, key: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port), or ConfigError naming `key`."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"config key '{key}' has '{address}': use HOST:PORT, e.g. 10.0.0.1:26379")
    return host, int(port)


METRICS_HINT = "127.0.0.1:9108 (0.0.0.0:9108 to let a Prometheus on another machine scrape it)"


def parse_address(address: str, key: str = "metrics.address", hint: str = METRICS_HINT) -> tuple[str, int]:
    """`HOST:PORT` (or `:PORT`, which listens on loopback only) -> (host, port), or ConfigError naming `key`
    with the example `hint`. Listening on every interface takes an explicit 0.0.0.0 (README "Security")."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"config key '{key}' is '{address}': use HOST:PORT, e.g. {hint}")
    return host or LOOPBACK, int(port)


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
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r:.60}")
        if any(isinstance(k, bool) or not isinstance(k, str | int) for k in value):
            raise ConfigError(f"config key '{key}' must have names (strings) as keys, got {list(value)!r:.60}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return section(hint, value, key)
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
    data = _migrate(data)
    return Config(**{name: section(factory, data.get(name), name)  # type: ignore[arg-type]
                     for name, factory in sections.items()}).validate()


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with each key of MOVED read into its new place (a warning naming the new key); ConfigError when
    the old and the new key are both given and differ. A section that is not a mapping is left to section()."""
    data = dict(data)
    for (old_section, old_key), (new_section, new_key) in MOVED.items():
        old, new = data.get(old_section), data.get(new_section)
        if not isinstance(old, dict) or old_key not in old or not isinstance(new, dict | None):
            continue
        was, now = f"{old_section}.{old_key}", f"{new_section}.{new_key}"
        value, new = old[old_key], dict(new or {})
        if new_key in new and new[new_key] != value:
            raise ConfigError(f"config keys '{was}' ({value!r}) and '{now}' ({new[new_key]!r}) differ: '{was}' "
                              f"is the old name of '{now}'; delete '{was}' and keep the value you mean in '{now}'")
        log.warning("config key '%s' has moved to '%s': read as '%s: %r'; rename it in the config file (the old "
                    "name will be refused in a later release)", was, now, now, value)
        new[new_key] = value
        data[old_section] = {k: v for k, v in old.items() if k != old_key}
        data[new_section] = new
    return data


def credential(name: str) -> str | None:
    """The systemd credential `name` (a unit's LoadCredential=/SetCredential=), stripped; None outside such a
    unit or when the unit passes no such credential. Kept out of Environment=, where `systemctl show` shows it."""
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    path = Path(folder) / name
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"systemd credential {path} cannot be read ({exc}): check LoadCredential={name}:... in "
                          "the unit and that the file it names holds the URL as text") from None
    return text or None


def load(path: str | Path | None = None, redis_url: str | None = None, **overrides: Any) -> Config:
    """Read YAML (if given), apply the `redis-url` credential, `INSPECTOR_REDIS_URL`, then `redis_url` and
    dotted overrides.

    `overrides` use section__key names, e.g. `batching__batch_size=4`; None values are ignored.
    """
    data = read_yaml(path, "config/inspector.yaml") if path is not None else {}
    url = redis_url or os.environ.get(REDIS_URL_ENV) or credential(REDIS_URL_CREDENTIAL)
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
