"""Backends behind one interface (`base.Backend`), chosen by name from a registry.

The registry maps names to import paths, so importing it never imports tensorrt or onnxruntime: each
backend module is imported when it is asked for.
"""

from __future__ import annotations

import importlib

import torch

from inspector.backends.base import Backend, EngineOutput
from inspector.engines import FORMATS, EngineFolder
from inspector.errors import ConfigError

REGISTRY: dict[str, str] = {
    "torch": "inspector.backends.torch_backend:TorchBackend",
    "onnxruntime": "inspector.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "inspector.backends.tensorrt_backend:TensorRTBackend",
}

__all__ = ["REGISTRY", "Backend", "EngineOutput", "create", "resolve_device"]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device is 'cuda' but torch sees no CUDA device: set engine.device to cpu "
                          "or auto, or run on a machine with an NVIDIA GPU and a CUDA build of torch")
    return device


def create(engine: EngineFolder, backend: str = "auto", device: str = "auto", threads: int = 0,
           fp16: bool = True) -> Backend:
    """A backend for `engine`; `auto` picks the one matching the engine file's format."""
    name = FORMATS[engine.manifest.format] if backend == "auto" else backend
    if name not in REGISTRY:
        raise ConfigError(f"unknown engine.backend '{name}': valid backends are auto, {', '.join(REGISTRY)}")
    module_name, cls_name = REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(engine, resolve_device(device), threads=threads, fp16=fp16)
