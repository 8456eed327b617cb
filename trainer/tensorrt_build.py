"""TensorRT plan from an FP16 ONNX (TensorRT 10 and 11; shared/notes/tensorrt.md).

Strongly typed network (the ONNX dtypes decide the precision: 11 removed BuilderFlag.FP16), one
optimisation profile for batch 1..max, a timing cache reused across builds. Thin on purpose: everything
else (parity, manifest, install) is shared with the ONNX Runtime path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from inspector.errors import EngineError

log = logging.getLogger(__name__)


def available() -> bool:
    """TensorRT imports and torch sees a GPU."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    import torch

    return torch.cuda.is_available()


def timing_cache_path(folder: Path) -> Path:
    """The timing cache for this TensorRT version and this GPU's compute capability: a cache from another
    version or GPU would be refused (ignore_mismatch=False) or, worse, mislead the tactic choice."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return folder / f".timing-cache-trt{trt.__version__}-sm{major}{minor}"


def build_plan(onnx_path: Path, plan_path: Path, input_name: str, height: int, width: int, max_batch: int,
               opt_batch: int, timing_cache: Path, workspace_gib: float = 8.0) -> dict[str, Any]:
    """Build and write the plan; `opt_batch` (the worker's batching.batch_size) is the profile's optimum."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # required on 10.12+, default on 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {errors}. Re-export with `trainer export` "
                          "(opset 18) or report the unsupported operator")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    shape = (1, height, width)
    profile.set_shape(input_name, (1, *shape), (opt_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log.info("building TensorRT %s plan (batch 1..%d, opt %d); this takes minutes", trt.__version__, max_batch,
             opt_batch)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise EngineError("TensorRT build_serialized_network failed (see the TensorRT log above)")
    plan_path.write_bytes(bytes(blob))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt": trt.__version__}
