"""`trainer build-engine`: checkpoint (or its ONNX) -> checked engine folder -> atomically installed.

    export ONNX (FP32; FP16 too for TensorRT) -> build (TensorRT plan, or the ONNX for ONNX Runtime)
        -> parity gate (engine masks vs FP32 PyTorch masks, Dice >= 0.99 per class, or refuse)
        -> quality gate with --gate DIR (trainer/gate.py: beats all-empty, not worse than engines/current, or refuse)
        -> manifest.json -> fsync -> rename into engines/<id> -> switch engines/current (rename of a symlink)

A running worker watches `engines/current` (`engine.watch`, on by default; SIGHUP too) and switches to the new
folder between two batches once it has loaded and checked it; the switch is one rename, so it never sees half an
engine.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inspector import backends, engines
from inspector.errors import EngineError
from inspector.model import CLASS_NAMES, InspectionNet, load_checkpoint, with_tta
from inspector.postprocess import PostprocessParams
from trainer import gate, tensorrt_build
from trainer.export import INPUT, OUTPUTS, check_parity, export_onnx
from trainer.gate import GateRules

log = logging.getLogger(__name__)
MIN_DICE = 0.99
switch_current = engines.switch_current  # the one place the link is written, re-exported for callers here


@dataclass
class Parity:
    dice: list[float]
    frames: int
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return min(self.dice) >= MIN_DICE


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    engines.fsync_dir(folder)



def parity(model: InspectionNet, folder: Path, frames: torch.Tensor, thresholds: tuple[float, ...],
           backend: str, device: str, batch: int = 4) -> Parity:
    """Per-class Dice of thresholded masks, engine vs FP32 PyTorch, summed over `frames`."""
    engine = engines.load(folder)
    runner = backends.create(engine, backends.Choice(backend, device, "parity gate")).activate()
    t = torch.tensor(thresholds, dtype=torch.float32).view(1, -1, 1, 1)
    inter = np.zeros(len(thresholds))
    total = np.zeros(len(thresholds))
    max_diff = 0.0
    model = model.cpu().float().eval()
    try:
        for i in range(0, len(frames), batch):
            chunk = frames[i:i + batch]
            with torch.inference_mode():
                want = model(chunk)[0]
            got = runner.infer(chunk.to(runner.device)).probs.float().cpu()
            max_diff = max(max_diff, float((got - want).abs().max()))
            a, b = want > t, got > t
            inter += (a & b).sum(dim=(0, 2, 3)).numpy()
            total += (a.sum(dim=(0, 2, 3)) + b.sum(dim=(0, 2, 3))).numpy()
    finally:
        runner.close()
    dice = [1.0 if tot == 0 else float(2 * i / tot) for i, tot in zip(inter, total, strict=True)]
    return Parity(dice, len(frames), max_diff)


def build(checkpoint: str | Path, frames: torch.Tensor, engines_dir: str | Path = "engines", fmt: str = "auto",
          onnx_path: str | Path | None = None, max_batch: int = 32, opt_batch: int = 8, install: bool = True,
          keep_checkpoint: bool = True, gate_dir: str | Path | None = None,
          gate_rules: GateRules | None = None, tta: str | None = None) -> Path:
    """Build, check and (by default) install an engine; returns its folder. EngineError when parity fails or,
    with `gate_dir`, when the quality gate refuses it (nothing installed either way). `tta` (model.TTA) puts
    test-time augmentation inside the engine; None keeps the checkpoint's own."""
    checkpoint = Path(checkpoint)
    model, ckpt = load_checkpoint(str(checkpoint))
    respec = tta is not None and tta != model.spec.tta
    if respec:
        with_tta(model, tta)
        ckpt = {**ckpt, "spec": model.spec.as_dict()}
    if fmt == "auto":
        fmt = "tensorrt" if tensorrt_build.available() else "onnx"
    if fmt not in engines.FORMATS:
        raise EngineError(f"unknown engine format '{fmt}': use auto or one of {', '.join(engines.FORMATS)}")
    spec = engines.FORMATS[fmt]  # file, runtime, device and precision of this format
    device, precision = spec.built_for(torch.cuda.is_available())
    height, width = frames.shape[-2:]
    root = Path(engines_dir)
    root.mkdir(parents=True, exist_ok=True)
    digest = engines.sha256_file(checkpoint)
    engine_id = f"unet-{model.spec.encoder}-{time.strftime('%Y%m%d-%H%M%S')}-{digest[:8]}-{fmt}"
    staging = root / f".building-{engine_id}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        meta = {"checkpoint_sha256": digest, "encoder": model.spec.encoder}
        gpu: dict[str, Any] = {}
        trt_versions: dict[str, str] = {}
        if fmt != "torch":  # a torch engine is the checkpoint itself: no ONNX to export or check
            fp32 = Path(onnx_path) if onnx_path else export_onnx(model, staging / "model.onnx", height, width,
                                                                  max_batch, metadata=meta)
            diff = check_parity(model, fp32, frames[:2])
            log.info("ONNX export matches PyTorch (max |diff| %.2e)", diff)
        if fmt == "tensorrt":
            fp16 = export_onnx(model, staging / "model.fp16.onnx", height, width, max_batch, half=True, metadata=meta)
            trt_versions = tensorrt_build.build_plan(fp16, staging / spec.file, INPUT, height, width, max_batch,
                                                     opt_batch, tensorrt_build.timing_cache_path(root))
            fp16.unlink()
            if fp32.parent == staging:
                fp32.unlink()
            props = torch.cuda.get_device_properties(0)
            gpu = {"name": props.name, "capability": f"{props.major}.{props.minor}"}
        elif fmt == "torch":  # the engine file is the checkpoint itself
            keep_checkpoint = True
        elif fp32 != staging / spec.file:  # onnx: the FP32 export is the engine
            shutil.copyfile(fp32, staging / spec.file)
        if keep_checkpoint and respec:  # --tta changed the spec: the kept copy says so
            torch.save(ckpt, staging / "checkpoint.pt")
        elif keep_checkpoint:
            shutil.copyfile(checkpoint, staging / "checkpoint.pt")
        tuned = PostprocessParams.resolve(None, ckpt.get("postprocess"))
        manifest = _manifest(engine_id=engine_id, fmt=fmt, engine_file=spec.file, precision=precision,
                             folder=staging, height=height, width=width, max_batch=max_batch, tuned=tuned,
                             digest=digest, checkpoint=checkpoint, ckpt=ckpt, trt_versions=trt_versions, gpu=gpu,
                             keep_checkpoint=keep_checkpoint)
        (staging / engines.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        check = parity(model, staging, frames, tuned.thresholds, spec.backend, device)
        manifest["parity"] = {"dice_per_class": [round(d, 5) for d in check.dice], "frames": check.frames,
                              "max_abs_prob_diff": check.max_abs_diff, "min_dice": MIN_DICE}
        if not check.ok:
            raise EngineError(f"parity gate refused the engine: Dice per class vs FP32 PyTorch "
                              f"{[round(d, 4) for d in check.dice]} (need >= {MIN_DICE} each, on {check.frames} "
                              f"frames; max |prob diff| {check.max_abs_diff:.3g}). Nothing was installed.")
        if gate_dir is None:
            manifest["gate"] = {"skipped": True}
        else:
            (staging / engines.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            manifest["gate"] = gate.run(staging, root, gate_dir, gate_rules or GateRules())
            log.info("%s", gate.line(manifest["gate"]))
            if not manifest["gate"]["passed"]:
                raise EngineError(f"quality gate refused the engine: {'; '.join(manifest['gate']['broken'])} "
                                  f"[{gate.line(manifest['gate'])}]. Nothing was installed; engines/current is "
                                  "unchanged.")
        (staging / engines.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync_tree(staging)
        final = root / engine_id
        os.rename(staging, final)
        engines.fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if install:
        switch_current(root, engine_id)
    return final


def _manifest(*, engine_id: str, fmt: str, engine_file: str, precision: str, folder: Path, height: int, width: int,
              max_batch: int, tuned: PostprocessParams, digest: str, checkpoint: Path, ckpt: dict[str, Any],
              trt_versions: dict[str, str], gpu: dict[str, Any], keep_checkpoint: bool) -> dict[str, Any]:
    import onnx
    import onnxruntime

    out_dtype = "float16" if precision == "fp16" else "float32"
    return {
        "engine_id": engine_id, "format": fmt, "file": engine_file, "precision": precision,
        "sha256": engines.sha256_file(folder / engine_file),
        "inputs": [{"name": INPUT, "dtype": "uint8", "shape": ["batch", 1, height, width]}],
        "outputs": [{"name": OUTPUTS[0], "dtype": out_dtype, "shape": ["batch", 4, height, width]},
                    {"name": OUTPUTS[1], "dtype": out_dtype, "shape": ["batch", 4]}],
        "max_batch": max_batch, "class_names": list(CLASS_NAMES), "postprocess": tuned.as_dict(),
        "model": ckpt["spec"], "source_checkpoint": {"path": str(checkpoint), "sha256": digest},
        "checkpoint": "checkpoint.pt" if keep_checkpoint else None,
        "validation": ckpt.get("metrics", {}),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version(), **trt_versions},
        "gpu": gpu, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
