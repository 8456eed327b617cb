"""One coil's report, computed from its stored state alone, and its files.

    build(state)  records (sorted by content) -> coverage and gaps per camera, merged defects, roll marks,
                  grade: a CoilReport, the same bytes whoever computes it and in whatever order the events were
                  folded; events published after the coil's deadline (its end + line.end_grace_s) are left out
                  and counted as late, so a replica that folded one more late event reports the same coil
    entry()       the `inspect:{main}:coils` entry's `c` (msgpack), README "The line layer" lists its keys
    write_files() reports/<stem>.json, .png, .html, each written to a temporary file and renamed over the old
                  one: rewriting after a crash gives the same files (timestamps come from the closed state)

Called from the service's loop thread.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from inspector.config import CLASS_KEYS, Config
from inspector.line import geometry, grade, periodic
from inspector.line.geometry import StripDefect
from inspector.line.periodic import Finding
from inspector.line.records import Record, decode_log
from inspector.line.store import CoilState

REPORT_VERSION = 1
DEFECT_FIELDS = ("id", "class_id", "surface", "x0_mm", "x1_mm", "y0_mm", "y1_mm", "area_mm2", "parts", "cameras")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class CoilReport:
    coil: str
    summary: dict[str, Any]  # the entry's keys, less closed_ts
    defects: list[StripDefect] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    measures: grade.Measures | None = None
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)  # placement of each camera, for the map


def stem(coil: str) -> str:
    """A file name for any coil id: its safe characters, plus a hash of the id when any were replaced."""
    safe = _SAFE.sub("_", coil)
    if safe != coil or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha1(coil.encode()).hexdigest()[:8]}"
    return safe


def _mm(value: float) -> float:
    return round(value, 1) + 0.0  # + 0.0: never -0.0


def build(state: CoilState, cfg: Config, closed_by: str) -> CoilReport:
    line, cams = cfg.line, cfg.line.cameras
    records = decode_log(state.log)
    deadline = deadline_ms(state, cfg)
    kept = [r for r in records if deadline is None or r.ms <= deadline]
    length = state.number("length_mm", -1.0) if "length_mm" in state.meta else -1.0
    if length < 0:
        length = geometry.coil_length(kept, cams, cfg.camera.height)
    coverage, gaps = {}, {}
    for name, cam in sorted(cams.items()):
        fraction, holes = geometry.coverage(kept, name, cfg.camera.height * cam.mm_per_px_along, length,
                                            line.merge_gap_mm)
        coverage[name] = round(fraction, 4)
        gaps[name] = [[_mm(a), _mm(b)] for a, b in holes]
    defects = geometry.merge(geometry.parts(kept, cams), line.merge_gap_mm)
    findings = periodic.find(defects, length, line)
    m = grade.measures(defects, findings, coverage, length)
    g = grade.grade(m, line)
    frames = {name: {"ok": sum(1 for r in kept if r.camera == name and r.ok),
                     "rejected": sum(1 for r in kept if r.camera == name and not r.ok)} for name in sorted(cams)}
    summary = {
        "v": REPORT_VERSION, "coil": state.coil, "length_mm": _mm(length),
        "defects": {k: m.counts[k] for k in CLASS_KEYS}, "coverage": coverage, "gaps_mm": gaps,
        "periodic": [f.entry() for f in findings], "grade": g.grade, "decided_by": g.decided_by,
        "report": str(Path(cfg.coils.reports_dir) / stem(state.coil)), "closed_by": closed_by,
        "frames": frames, "events": len(kept) + int(state.number("unplaced")) + int(state.number("unknown_camera")),
        "late_events": len(records) - len(kept) + int(state.number("late")),
        "unknown_camera_events": int(state.number("unknown_camera")),
        "unplaced_events": int(state.number("unplaced")), "dropped_events": int(state.number("dropped")),
    }
    placement = {name: {"surface": c.surface, "x0_mm": c.x_offset_mm,
                        "x1_mm": c.x_offset_mm + cfg.camera.width * c.mm_per_px_across} for name, c in cams.items()}
    return CoilReport(state.coil, summary, defects, findings, m, placement)


def deadline_ms(state: CoilState, cfg: Config) -> int | None:
    """Events published after this stream time (ms) do not count for an ended coil (None: not ended)."""
    if "end_ms" not in state.meta:
        return None
    return int(state.number("end_ms")) + int(cfg.line.end_grace_s * 1000)


def entry(report: CoilReport, closed_ts: float) -> bytes:
    return msgpack.packb({**report.summary, "closed_ts": closed_ts}, use_bin_type=True)


def document(report: CoilReport, closed_ts: float, report_id: str) -> dict[str, Any]:
    """The JSON file: the entry's keys plus every defect and each finding's members."""
    return {**report.summary, "closed_ts": closed_ts, "report_id": report_id, "cameras": report.cameras,
            "periodic": [{**f.entry(), "missed": f.missed, "members": list(f.members)} for f in report.findings],
            "measures": {"per_100m": {k: round(v, 3) if math.isfinite(v) else None
                                      for k, v in report.measures.per_100m.items()},
                         "max_area_mm2": {k: round(v, 1) for k, v in report.measures.max_area_mm2.items()}}
            if report.measures else {},
            "defect_fields": list(DEFECT_FIELDS),
            "defect_rows": [[d.id, d.class_id, d.surface, _mm(d.x0), _mm(d.x1), _mm(d.y0), _mm(d.y1),
                         round(d.area_mm2, 1), d.parts, list(d.cameras)] for d in report.defects]}


def write_files(report: CoilReport, closed_ts: float, report_id: str, cfg: Config) -> Path:
    """JSON, PNG and HTML beside each other; returns the stem path. Idempotent: same state, same bytes."""
    from inspector.line import render

    base = Path(cfg.coils.reports_dir) / stem(report.coil)
    base.parent.mkdir(parents=True, exist_ok=True)
    doc = document(report, closed_ts, report_id)
    png = render.strip_map(report, cfg)
    _replace(base.with_name(base.name + ".json"), json.dumps(doc, sort_keys=True).encode())
    _replace(base.with_name(base.name + ".png"), png)
    _replace(base.with_name(base.name + ".html"), render.page(doc, png).encode())
    return base


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["CoilReport", "Record", "build", "deadline_ms", "entry", "stem", "write_files"]
