"""Engine folders: what `trainer build-engine` installs and the worker loads.

    engines/<engine_id>/manifest.json   id, format, precision, I/O names and shapes, post-processing, versions
    engines/<engine_id>/<file>          model.onnx (ONNX Runtime), model.plan (TensorRT), model.pt (torch)
    engines/current -> <engine_id>      symlink, switched atomically (rename) on install

The worker resolves `engines/current` once at start; a new install does not disturb a running worker.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inspector.errors import EngineError

MANIFEST = "manifest.json"
FORMATS = ("onnx", "tensorrt", "torch")  # engine file formats; inspector.backends.NATIVE maps each to its backend


@dataclass(frozen=True)
class Manifest:
    engine_id: str
    format: str  # onnx | tensorrt | torch
    file: str
    precision: str
    input_name: str = "frames"
    output_names: tuple[str, ...] = ("probs", "presence")
    height: int = 256
    width: int = 1600
    max_batch: int = 32
    class_names: tuple[str, ...] = ()
    postprocess: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    gpu: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # torch checkpoint beside the engine (for the torch backend), if kept
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineFolder:
    path: Path
    manifest: Manifest

    @property
    def file(self) -> Path:
        return self.path / self.manifest.file

    @property
    def checkpoint(self) -> Path | None:
        return self.path / self.manifest.checkpoint if self.manifest.checkpoint else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load(path: str | Path, verify: bool = True) -> EngineFolder:
    """Read and check an engine folder (resolving `current`); EngineError says what to do."""
    folder = Path(path)
    if not folder.exists():
        raise EngineError(f"engine folder {folder} does not exist: build one with `trainer build-engine "
                          "--checkpoint RUN/best.pt` (or point engine.path at an existing folder)")
    folder = folder.resolve()
    mpath = folder / MANIFEST
    try:
        data = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise EngineError(f"{folder} has no {MANIFEST}: it is not an engine folder built by "
                          "`trainer build-engine`") from None
    except json.JSONDecodeError as exc:
        raise EngineError(f"{mpath} is not valid JSON ({exc}): rebuild with `trainer build-engine`") from None
    try:
        inputs, outputs = data["inputs"], data["outputs"]
        manifest = Manifest(
            engine_id=data["engine_id"], format=data["format"], file=data["file"], precision=data["precision"],
            input_name=inputs[0]["name"], output_names=tuple(o["name"] for o in outputs),
            height=int(inputs[0]["shape"][2]), width=int(inputs[0]["shape"][3]),
            max_batch=int(data.get("max_batch", 32)), class_names=tuple(data.get("class_names", ())),
            postprocess=data.get("postprocess", {}), sha256=data.get("sha256", ""),
            versions=data.get("versions", {}), gpu=data.get("gpu", {}), checkpoint=data.get("checkpoint"),
            raw=data)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise EngineError(f"{mpath} lacks or mangles field {exc}: rebuild with `trainer build-engine`") from None
    if manifest.format not in FORMATS:
        raise EngineError(f"{mpath}: unknown format '{manifest.format}' (known: {', '.join(FORMATS)})")
    engine = EngineFolder(folder, manifest)
    if not engine.file.exists():
        raise EngineError(f"{folder}: engine file {manifest.file} is missing: rebuild with `trainer build-engine`")
    if verify and manifest.sha256 and sha256_file(engine.file) != manifest.sha256:
        raise EngineError(f"{engine.file} does not match the sha256 in its manifest (corrupt or half-copied): "
                          "rebuild with `trainer build-engine`")
    return engine


def gate_refusal(manifest: dict[str, Any]) -> str | None:
    """Why a worker with engine.require_gate refuses this engine (None: its quality gate passed). The gate
    record is written by `trainer build-engine --gate` (trainer/gate.py)."""
    gate = manifest.get("gate")
    if not isinstance(gate, dict) or gate.get("skipped") or "passed" not in gate:
        return ("it was built without a quality gate: rebuild it with `trainer build-engine --checkpoint CKPT "
                "--gate GATE_DIR`, or set engine.require_gate: false to accept ungated engines")
    if not gate["passed"]:
        return f"its quality gate failed: {'; '.join(gate.get('broken', [])) or 'no reason recorded'}"
    return None
