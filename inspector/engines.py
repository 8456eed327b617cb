"""Engine folders: what `trainer build-engine` installs, `... engines use` switches to, and the worker loads.

    engines/<engine_id>/manifest.json   id, format, precision, I/O names and shapes, post-processing, versions
    engines/<engine_id>/<file>          model.onnx (ONNX Runtime), model.plan (TensorRT), checkpoint.pt (torch):
                                        FORMATS below, the one table of engine formats
    engines/current -> <engine_id>      symlink, switched atomically (rename); not in git (each machine's own)
    engines/SHIPPED                     tracked: the id of the demo engine shipped in the repo, which `current`
                                        points at when a checkout first loads `engines/current`

The worker resolves `engines/current` at start, and keeps watching it: with `engine.watch` (on by default) it
looks every `engine.watch_every_s` where `current` points, and when that changes (or on SIGHUP, watch on or off)
loads, checks and switches to the new folder between two batches (inspector.serving, inspector.pipeline); a
refused folder is not retried until `current` changes again. With watch off only SIGHUP switches.
Called from the CLI's thread and the worker's loader thread; it holds no state.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inspector.errors import EngineError

MANIFEST = "manifest.json"
CURRENT = "current"
SHIPPED = "SHIPPED"


@dataclass(frozen=True)
class EngineFormat:
    """One engine format: the file `trainer build-engine` writes, the runtime built for it, and the device and
    precision it is built for (the first of `devices` this machine has)."""

    name: str
    file: str  # in the engine folder
    backend: str  # its own runtime, a key of inspector.backends.BACKENDS
    devices: tuple[str, ...]  # built for the first one present: "cuda" needs a CUDA device
    precision: dict[str, str]  # device -> precision of the built engine

    def built_for(self, cuda: bool) -> tuple[str, str]:
        """(device, precision) of an engine of this format built on a machine with or without CUDA."""
        device = next((d for d in self.devices if d != "cuda" or cuda), self.devices[-1])  # none: its own, to fail
        return device, self.precision[device]


# The one table of engine formats: read by inspector.backends (each format's own backend), `trainer build-engine`
# (file, device, precision) and the CLI's --format choices.
FORMATS: dict[str, EngineFormat] = {f.name: f for f in (
    EngineFormat("onnx", "model.onnx", "onnxruntime", ("cpu",), {"cpu": "fp32"}),
    EngineFormat("tensorrt", "model.plan", "tensorrt", ("cuda",), {"cuda": "fp16"}),
    EngineFormat("torch", "checkpoint.pt", "torch", ("cuda", "cpu"), {"cuda": "fp16", "cpu": "fp32"}),
)}


@dataclass(frozen=True)
class Manifest:
    engine_id: str
    format: str  # a key of FORMATS
    file: str
    precision: str
    input_name: str = "frames"
    output_names: tuple[str, ...] = ("probs", "presence")
    height: int = 256
    width: int = 1600
    max_batch: int = 32
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
    if folder.name == CURRENT and not folder.exists() and not folder.is_symlink():
        ensure_current(folder.parent)
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
            max_batch=int(data.get("max_batch", 32)),
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


def fsync_dir(folder: Path) -> None:
    """A rename or a new file in `folder` survives a power cut once this returns."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def switch_current(root: str | Path, engine_id: str) -> None:
    """Point root/current at engine_id with one rename (atomic on POSIX): a reader sees the old or the new."""
    root = Path(root)
    tmp = root / f".current-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(engine_id, tmp)
    os.replace(tmp, root / CURRENT)
    fsync_dir(root)


def shipped(root: str | Path) -> str | None:
    """The id in root/SHIPPED (the demo engine the repository ships), or None."""
    try:
        return (Path(root) / SHIPPED).read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_current(root: str | Path) -> None:
    """A fresh checkout has no root/current (it is not in git): point it at the shipped engine."""
    root = Path(root)
    engine_id = shipped(root)
    if engine_id and (root / engine_id / MANIFEST).exists() and not (root / CURRENT).is_symlink():
        switch_current(root, engine_id)


def current_id(root: str | Path) -> str | None:
    """The folder name root/current points at (after ensure_current), or None."""
    link = Path(root) / CURRENT
    ensure_current(root)
    return Path(os.readlink(link)).name if link.is_symlink() else None


def installed(root: str | Path) -> list[dict[str, Any]]:
    """Every engine folder under root, oldest first: id, built_at, format, precision, parity, validation, gate
    (where the manifest has one), shipped and current marks. A folder whose manifest cannot be read is listed
    with its error, not skipped."""
    root = Path(root)
    if not root.is_dir():
        raise EngineError(f"{root} is not an engines folder (trainer build-engine --engines DIR makes one)")
    current, ship = current_id(root), shipped(root)
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()
                         and not p.name.startswith(".")):
        try:
            data = json.loads((folder / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            rows.append({"engine_id": folder.name, "error": f"{type(exc).__name__}: {exc}",
                         "current": folder.name == current, "shipped": folder.name == ship})
            continue
        rows.append({"engine_id": folder.name, "built_at": data.get("built_at", ""), "format": data.get("format"),
                     "precision": data.get("precision"), "parity": data.get("parity") or {},
                     "validation": data.get("validation") or {}, "gate": data.get("gate") or {},
                     "current": folder.name == current, "shipped": folder.name == ship})
    return sorted(rows, key=lambda r: (r.get("built_at") or "", r["engine_id"]))


def use(root: str | Path, engine_id: str) -> EngineFolder:
    """Switch root/current to an installed engine after checking it (manifest, file, sha256); a running
    worker's engine watcher follows. EngineError names the installed ids when engine_id is not one."""
    root = Path(root)
    folder = root / engine_id
    if engine_id in (CURRENT, SHIPPED) or "/" in engine_id or not (folder / MANIFEST).exists():
        known = ", ".join(r["engine_id"] for r in installed(root)) or "none"
        raise EngineError(f"no engine '{engine_id}' in {root} (installed: {known}); `trainer engines` lists them")
    engine = load(folder)
    switch_current(root, engine_id)
    return engine


def table(rows: list[dict[str, Any]]) -> str:
    """`engines` as a person reads it: one line per engine, the current one marked."""
    lines = [f"  {'engine id':<64} {'built':<19} {'format':<10} {'parity min Dice':<16} {'val Dice':<9} gate"]
    for r in rows:
        mark = "*" if r["current"] else " "
        if "error" in r:
            lines.append(f"{mark} {r['engine_id']:<64} unreadable manifest: {r['error']}")
            continue
        dice = r["parity"].get("dice_per_class")
        parity = f"{min(dice):.4f} ({r['parity'].get('frames')} fr)" if dice else "-"
        val = r["validation"].get("mean_dice")
        gate = _gate_cell(r["gate"])
        lines.append(f"{mark} {r['engine_id']:<64} {r['built_at'][:19]:<19} {r['format'] + '/' + r['precision']:<10} "
                     f"{parity:<16} {'-' if val is None else f'{val:.4f}':<9} {gate}"
                     + ("  (shipped)" if r["shipped"] else ""))
    lines.append("* = engines/current (the running worker follows a switch: `... engines use ID`)")
    return "\n".join(lines)


def _gate_cell(gate: dict[str, Any]) -> str:
    if not gate or gate.get("skipped") or "passed" not in gate:
        return "none"
    cand, empty = gate["candidate"]["mean_dice"], gate["all_empty"]["mean_dice"]
    return f"{'passed' if gate['passed'] else 'FAILED'} {cand:.4f} vs all-empty {empty:.4f} ({gate['frames']} fr)"
