"""The engine in service: a backend and the post-processing that goes with it, loaded, warmed up and checked
before it serves a frame. The pipeline swaps one for another between two batches (SIGHUP, or engines/current
pointing somewhere new); a new engine that fails any check here is refused and the old one keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from inspector import backends, engines
from inspector.backends import Backend
from inspector.config import Config
from inspector.errors import ConfigError, EngineError
from inspector.postprocess import PostprocessParams


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
