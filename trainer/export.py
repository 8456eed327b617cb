"""ONNX export: uint8 [N, 1, H, W] in (normalisation inside the graph), probs [N, 4, H, W] and presence [N, 4]
out, dynamic batch. FP32 for ONNX Runtime; an FP16 variant (half-precision export) for TensorRT's strongly
typed build. Every export is checked with onnx.checker and against the PyTorch model's outputs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from inspector.errors import EngineError
from inspector.model import InspectionNet

log = logging.getLogger(__name__)
INPUT, OUTPUTS = "frames", ("probs", "presence")


def export_onnx(model: InspectionNet, path: str | Path, height: int = 256, width: int = 1600, max_batch: int = 32,
                half: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Export `model` (left untouched) to `path`; returns the path."""
    import copy

    import onnx

    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # the exporter reports every pass at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    net = copy.deepcopy(model).cpu().eval()
    if half:
        net = net.half()
    example = torch.zeros((2, 1, height, width), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    path = Path(path)
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (example,), input_names=[INPUT], output_names=list(OUTPUTS),
                                    dynamic_shapes=({0: batch},), opset_version=18, dynamo=True, verbose=False)
    if program is None:
        raise EngineError("torch.onnx.export returned nothing")
    program.save(str(path))
    proto = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path


def check_parity(model: InspectionNet, path: str | Path, frames: torch.Tensor, atol: float = 1e-3) -> float:
    """Largest absolute difference between ONNX Runtime (FP32 export) and PyTorch probabilities."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT: frames.numpy()})
    with torch.inference_mode():
        want = model.cpu().eval()(frames)
    diff = max(float(np.abs(g.astype(np.float32) - w.numpy()).max()) for g, w in zip(got, want, strict=True))
    if diff > atol:
        raise EngineError(f"ONNX export of {path} differs from PyTorch by {diff:.2e} (> {atol:.0e})")
    return diff
