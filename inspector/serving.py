"""The engine in service: a backend and the post-processing that goes with it, loaded, warmed up and checked
before it serves a frame, and `EngineSwap`, which replaces it between two batches (SIGHUP, or engine.path pointing
somewhere new with engine.watch); a new engine that fails any check here is refused and the old one keeps serving.

`EngineSwap` is used the same way by the worker's `step()` and `run()`:

    folder = swap.due()          is a load wanted? (SIGHUP asked, or engine.path points elsewhere)
    swap.load(folder)            load, warm up, check (compatible, gate); refused -> counted, logged, not retried
    old = swap.switch()          before a batch: the loaded engine serves from now on; returns the old one
    swap.retire(old)             after the old engine's last batch: closed

`step()` runs all four in the caller's thread; `run()` has the supervisor call `due()` and `load_in_background()`
(one loader thread at a time), the producer `switch()` before each read, and the consumer `retire()` once the old
engine's batches are published. Its state, all under `_lock`: `current` (written only by `switch()`, read by every
thread through the property), `_next` (written by `load()`, taken by `switch()`), `_refused` (by `load()`),
`_loading` (set by `due()`, cleared by `load()`); `_reload` is an Event set by the signal handler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from inspector import backends, engines
from inspector.backends import Backend
from inspector.config import Config
from inspector.errors import ConfigError, EngineError
from inspector.postprocess import PostprocessParams

if TYPE_CHECKING:
    from inspector.accounting import Accounting

log = logging.getLogger(__name__)


@dataclass
class ActiveEngine:
    """An activated backend and the post-processing that goes with it (its manifest's tuned values)."""

    backend: Backend
    params: PostprocessParams
    folder: Path

    @property
    def model_id(self) -> str:
        return self.backend.model_id


def load_engine(config: Config, folder: str | Path | None = None) -> ActiveEngine:
    """Load, resolve, activate and warm up an engine folder; EngineError / ConfigError say what is wrong.

    The warm-up runs full batches (batching.batch_size) and holds as many outputs at once as the pipeline can
    (ring_depth + 1: queued, being post-processed, being produced): ONNX Runtime's memory arena and the CUDA
    caching allocator grow to the most they have had to hold and keep that size, so reaching it at start keeps
    the worker's memory flat afterwards (on the demo model a first backlog after an outage added ~300 MB)."""
    engine = engines.load(folder or config.engine.path)
    e = config.engine
    runner = backends.load(engine, e.backend, e.device, e.threads, e.fp16, e.cuda_graph_batches)
    params = PostprocessParams.resolve(config.postprocess, engine.manifest.postprocess)
    runner.activate()
    try:
        height, width = runner.input_shape
        n = max(1, min(config.batching.batch_size, engine.manifest.max_batch))
        frames = torch.zeros((n, 1, height, width), dtype=torch.uint8, device=runner.device)
        held = [runner.infer(frames) for _ in range(config.batching.ring_depth + 1)]
        out = held[0]
        del held
        if tuple(out.probs.shape) != (n, len(params.thresholds), height, width):
            raise EngineError(f"{engine.path} outputs probabilities of shape {tuple(out.probs.shape)}, expected "
                              f"({n}, {len(params.thresholds)}, {height}, {width})")
        if out.presence is not None and tuple(out.presence.shape) != (n, len(params.thresholds)):
            raise EngineError(f"{engine.path} outputs presence of shape {tuple(out.presence.shape)}")
        if not bool(torch.isfinite(out.probs).all()):
            raise EngineError(f"{engine.path} outputs NaN or infinite probabilities on a blank frame")
    except EngineError:
        runner.close()
        raise
    except Exception as exc:  # a backend's own error types on a broken file
        runner.close()
        hint = ""
        if "could not create a primitive" in str(exc):  # oneDNN compiles kernels at run time: W+X memory
            hint = (" (oneDNN, torch on CPU, could not compile its kernels: under systemd's "
                    "MemoryDenyWriteExecute=yes add the drop-in config/inspector-jit.conf, or use engine.backend "
                    "onnxruntime; README \"Security\")")
        raise EngineError(f"{engine.path} failed its first inference: {type(exc).__name__}: {exc}{hint}") from None
    return ActiveEngine(runner, params, engine.path)


def check_compatible(engine: ActiveEngine, current: ActiveEngine | None, config: Config) -> None:
    """The engine fits the worker: frame geometry, classes, and a batch size it accepts."""
    m = engine.backend.manifest
    if m.max_batch < config.batching.batch_size:
        raise ConfigError(f"batching.batch_size {config.batching.batch_size} is larger than the engine's max batch "
                          f"{m.max_batch} ({engine.folder.name}): lower batching.batch_size, or rebuild with "
                          f"`trainer build-engine --max-batch {config.batching.batch_size}`")
    if current is not None:
        cur = current.backend
        if engine.backend.input_shape != cur.input_shape or engine.backend.device != cur.device:
            raise EngineError(f"takes {engine.backend.input_shape} frames on {engine.backend.device}, the worker "
                              f"stages {cur.input_shape} frames on {cur.device}")
        if len(engine.params.thresholds) != len(current.params.thresholds):
            raise EngineError("has another number of classes than the engine in service")


def check_gate(engine: ActiveEngine, config: Config) -> None:
    """With engine.require_gate, a swap takes only an engine whose quality gate passed (its manifest says so):
    a retrain worse than all-empty or than the engine in service never reaches the line by a swap."""
    if config.engine.require_gate:
        refusal = engines.gate_refusal(engine.backend.manifest.raw)
        if refusal is not None:
            raise EngineError(f"engine.require_gate is on and {refusal}")


class EngineSwap:
    """The engine in service and the one loaded to replace it (module docstring: who calls what)."""

    def __init__(self, engine: ActiveEngine, config: Config, accounting: Accounting, name: str,
                 on_thread: Callable[[], None] = lambda: None) -> None:
        self.cfg, self.accounting, self.name = config, accounting, name
        self._on_thread = on_thread  # a new thread's set-up before it touches the device (DeviceStreams.use_device)
        self._lock = threading.Lock()
        self._current = engine
        self._next: ActiveEngine | None = None  # loaded and checked, switched in before the next batch
        self._refused: Path | None = None  # not tried again until engine.path changes or SIGHUP asks
        self._loading = False
        self._reload = threading.Event()

    @property
    def current(self) -> ActiveEngine:
        with self._lock:
            return self._current

    def request_reload(self) -> None:
        """Load engine.path anew at the next due() (SIGHUP), even if it names the engine refused last."""
        self._reload.set()

    def due(self) -> Path | None:
        """The folder to load now, or None: one load at a time, and a loaded engine is switched in before the
        next one is looked at. A folder returned must be passed to load()."""
        with self._lock:
            if self._loading or self._next is not None:
                return None
            target = Path(self.cfg.engine.path).resolve()
            if not self._reload.is_set() and (not self.cfg.engine.watch
                                              or target in (self._current.folder, self._refused)):
                return None
            self._reload.clear()
            if target == self._current.folder:
                log.info("%s: %s is already the engine in service", self.name, target)
                return None
            self._loading = True
            return target

    def check(self, folder: Path) -> ActiveEngine:
        """Load `folder` and check it against the engine in service and the gate; EngineError / ConfigError /
        OSError say why it is refused (the candidate is closed then)."""
        candidate = load_engine(self.cfg, folder)
        try:
            check_compatible(candidate, self.current, self.cfg)
            check_gate(candidate, self.cfg)
        except BaseException:
            candidate.backend.close()
            raise
        return candidate

    def load(self, folder: Path) -> bool:
        """check() `folder`; True: it is switched in by the next switch(); False: refused, counted and logged."""
        try:
            try:
                candidate = self.check(folder)
            except (EngineError, ConfigError, OSError) as exc:
                self.accounting.engine_refused()
                with self._lock:
                    self._refused = folder
                log.error("%s: new engine %s refused, %s keeps serving: %s (fix it, then `systemctl reload "
                          "inspector` or point engines/current elsewhere)", self.name, folder, self.current.model_id,
                          exc)
                return False
            with self._lock:
                self._next = candidate
            log.info("%s: engine %s loaded and checked; switching before the next batch", self.name,
                     candidate.model_id)
            return True
        finally:
            with self._lock:
                self._loading = False

    def load_in_background(self, folder: Path) -> threading.Thread:
        """load() on a thread of its own (run(): the supervisor must not stop beating for a load)."""

        def target() -> None:
            self._on_thread()
            self.load(folder)

        loader = threading.Thread(target=target, name="engine-loader", daemon=True)
        loader.start()
        return loader

    def switch(self) -> ActiveEngine | None:
        """Put the loaded engine in service; returns the one to retire after its last batch (None: no change)."""
        with self._lock:
            if self._next is None:
                return None
            old, self._current, self._next = self._current, self._next, None
            new = self._current
        self.accounting.engine_swapped(new)
        log.info("%s: engine %s in service (was %s)", self.name, new.model_id, old.model_id)
        return old

    def retire(self, old: ActiveEngine) -> None:
        """Close an engine switched out, once its batches are done."""
        old.backend.close()
        log.info("%s: engine %s released", self.name, old.model_id)

    def close(self) -> None:
        """Close the engine in service and one loaded but not switched in."""
        with self._lock:
            current, waiting, self._next = self._current, self._next, None
        current.backend.close()
        if waiting is not None:
            waiting.backend.close()
