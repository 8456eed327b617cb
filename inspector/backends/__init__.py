"""Backends behind one interface (`base.Backend`), and the one table that says which runs what, where.

    BACKENDS      backend -> module:class (imported when asked for: importing this never imports tensorrt or
                  onnxruntime), the devices it can run on, and whether it runs any folder's checkpoint
    NATIVE        engine format -> the backend its file was built for, read from inspector.engines.FORMATS (the
                  one table of engine formats: file, runtime, device, precision)
    resolve()     (format, checkpoint kept?, engine.backend, engine.device, what this host has) -> the choice and
                  why, in words for the start-up line

Config validation, the CLI's choices, `create()` and `trainer build-engine` all read these tables. The torch
backend runs any engine folder that keeps its checkpoint, so an ONNX engine still runs on a CUDA machine
without ONNX Runtime's CUDA provider (FP16, from the checkpoint).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

from inspector.backends.base import Backend, EngineOutput
from inspector.engines import FORMATS, EngineFolder
from inspector.errors import ConfigError


@dataclass(frozen=True)
class BackendInfo:
    target: str  # module:Class
    devices: tuple[str, ...]
    checkpoints: bool = False  # besides its own formats (NATIVE), runs any engine folder that keeps its checkpoint


BACKENDS: dict[str, BackendInfo] = {
    "torch": BackendInfo("inspector.backends.torch_backend:TorchBackend", ("cpu", "cuda"), checkpoints=True),
    "onnxruntime": BackendInfo("inspector.backends.onnxruntime_backend:OnnxRuntimeBackend", ("cpu", "cuda")),
    "tensorrt": BackendInfo("inspector.backends.tensorrt_backend:TensorRTBackend", ("cuda",)),
}
NATIVE = {name: spec.backend for name, spec in FORMATS.items()}  # engine format -> its own backend
DEVICES = ("cpu", "cuda")

__all__ = ["BACKENDS", "DEVICES", "NATIVE", "Backend", "Choice", "EngineOutput", "Host", "create", "resolve"]


@dataclass(frozen=True)
class Host:
    """What this machine offers a backend."""

    cuda: bool
    ort_cuda: bool  # ONNX Runtime with its CUDA execution provider (onnxruntime-gpu)
    tensorrt: bool

    @classmethod
    @functools.cache
    def detect(cls) -> Host:
        import torch  # here, not at import: the CLI and config validation read the tables without torch

        cuda = torch.cuda.is_available()
        ort_cuda = trt = False
        if cuda:
            try:
                import onnxruntime

                ort_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
            except ImportError:
                pass
            try:
                import tensorrt  # noqa: F401

                trt = True
            except ImportError:
                pass
        return cls(cuda, ort_cuda, trt)


@dataclass(frozen=True)
class Choice:
    backend: str
    device: str
    why: str


def runs(backend: str, fmt: str, has_checkpoint: bool) -> bool:
    """Can `backend` run an engine of format `fmt`: built for it, or from the checkpoint its folder keeps?"""
    return NATIVE.get(fmt) == backend or (BACKENDS[backend].checkpoints and has_checkpoint)


def _on(backend: str, device: str, host: Host) -> bool:
    """Can `backend` run on `device` on this host?"""
    if device not in BACKENDS[backend].devices:
        return False
    if device == "cuda":
        return host.cuda and (backend != "onnxruntime" or host.ort_cuda) and (backend != "tensorrt" or host.tensorrt)
    return True


def resolve(fmt: str, has_checkpoint: bool, backend: str = "auto", device: str = "auto",
            host: Host | None = None) -> Choice:
    """Which backend runs an engine of format `fmt` on which device, and why; ConfigError says what to change."""
    host = host or Host.detect()
    if device == "cuda" and not host.cuda:
        raise ConfigError("engine.device is 'cuda' but torch sees no CUDA device: set engine.device to cpu or auto, "
                          "or run on a machine with an NVIDIA GPU and a CUDA build of torch")
    devices = [device] if device != "auto" else (["cuda", "cpu"] if host.cuda else ["cpu"])
    if backend != "auto":
        if backend not in BACKENDS:
            raise ConfigError(f"unknown engine.backend '{backend}': valid backends are auto, {', '.join(BACKENDS)}")
        if not runs(backend, fmt, has_checkpoint):
            raise ConfigError(f"engine.backend '{backend}' cannot run a {fmt} engine"
                              + (" that keeps no checkpoint" if backend == "torch" else "")
                              + f": use engine.backend auto (or {NATIVE[fmt]})")
        for dev in devices:
            if _on(backend, dev, host):
                return Choice(backend, dev, "engine.backend and engine.device as configured"
                              if device != "auto" else f"engine.backend {backend}; device auto")
        raise ConfigError(f"engine.backend '{backend}' cannot run on {' or '.join(devices)} here"
                          + (": install onnxruntime-gpu for its CUDA provider" if backend == "onnxruntime" else "")
                          + (": install the tensorrt extra" if backend == "tensorrt" and host.cuda else "")
                          + "; set engine.device or engine.backend to auto")
    native = NATIVE[fmt]
    for dev in devices:
        if _on(native, dev, host):
            why = f"the engine's own runtime on {dev}"
            if dev == "cpu" and host.cuda and native == "onnxruntime" and not has_checkpoint:
                why += " (ONNX Runtime has no CUDA provider here and the folder keeps no checkpoint for torch)"
            return Choice(native, dev, why)
        if has_checkpoint and _on("torch", dev, host):
            return Choice("torch", dev, f"{native} cannot run on {dev} here"
                          + (" (no CUDA provider in ONNX Runtime)" if native == "onnxruntime" else "")
                          + (" (TensorRT is not installed)" if native == "tensorrt" and dev == "cuda" else "")
                          + f": the engine folder's checkpoint on torch {dev}"
                          + (" in FP16" if dev == "cuda" else ""))
    raise ConfigError(f"no backend can run this {fmt} engine on {' or '.join(devices)}"
                      + ("" if has_checkpoint else " and its folder keeps no checkpoint for torch")
                      + ": rebuild it with `trainer build-engine` on this machine")


def create(engine: EngineFolder, choice: Choice, threads: int = 0, fp16: bool = True,
           graph_batches: tuple[int, ...] = ()) -> Backend:
    """The backend `choice` names, for `engine` (not yet activated)."""
    module_name, cls_name = BACKENDS[choice.backend].target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(engine, choice.device, threads=threads, fp16=fp16, graph_batches=graph_batches)


def load(engine: EngineFolder, backend: str = "auto", device: str = "auto", threads: int = 0, fp16: bool = True,
         graph_batches: tuple[int, ...] = ()) -> Backend:
    """resolve() + create() for an engine folder."""
    choice = resolve(engine.manifest.format, engine.checkpoint is not None and engine.checkpoint.exists(), backend,
                     device)
    runner = create(engine, choice, threads, fp16, graph_batches)
    runner.why = choice.why
    return runner
