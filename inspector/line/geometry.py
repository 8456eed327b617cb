"""Camera pixels to strip millimetres, and the parts of one defect seen in several frames or cameras made one.

Column x of camera c's frame is at x_mm = x_offset_mm + x * mm_per_px_across (across the strip), row y at
y_mm = pos_mm + y * mm_per_px_along (along it). A component becomes a Part (its box and area in mm); Parts of one
class on one surface from different frames merge into one StripDefect when their boxes overlap, or come within
line.merge_gap_mm, both along and across: a scratch crossing a frame boundary, a spot on a camera seam. Parts of
one frame never merge with each other (the worker already split them into separate components). A merged
defect's area is the sum of its parts' areas (at a seam both cameras' views of the overlap count).

Cost: O(n log n) to sort n parts, then each part is checked against the live parts in the x cells it spans
(a cell is MERGE_CELL_MM wide; live: ending no more than merge_gap_mm before it along the strip), so the sweep is
linear in n times the parts one frame band holds in one cell. Pure functions, called from the loop thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from inspector.config import CameraPlacement
from inspector.line.records import Record

MERGE_CELL_MM = 64.0


@dataclass(frozen=True)
class Part:
    class_id: int
    surface: str
    camera: str
    frame: int  # index of its record: parts of one frame never merge
    x0: float
    x1: float
    y0: float
    y1: float
    area_mm2: float


@dataclass(frozen=True)
class StripDefect:
    id: int
    class_id: int
    surface: str
    x0: float
    x1: float
    y0: float
    y1: float
    area_mm2: float
    parts: int
    cameras: tuple[str, ...]

    @property
    def x_mm(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def y_mm(self) -> float:
        return (self.y0 + self.y1) / 2

    @property
    def length_mm(self) -> float:
        return self.y1 - self.y0

    @property
    def width_mm(self) -> float:
        return self.x1 - self.x0


def parts(records: Sequence[Record], cameras: Mapping[str, CameraPlacement]) -> list[Part]:
    """Every component of every ok record, in mm (records of cameras not in `cameras` are skipped)."""
    out: list[Part] = []
    for frame, r in enumerate(records):
        cam = cameras.get(r.camera)
        if cam is None or not r.ok:
            continue
        ax, ay, off = cam.mm_per_px_across, cam.mm_per_px_along, cam.x_offset_mm
        c = r.comps
        for k in range(0, len(c), 6):
            cls, x, y, w, h, area = c[k:k + 6]
            out.append(Part(cls, cam.surface, r.camera, frame, off + x * ax, off + (x + w) * ax, r.pos_mm + y * ay,
                            r.pos_mm + (y + h) * ay, area * ax * ay))
    return out


class _Sets:
    """Union-find over part indexes."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def merge(found: Sequence[Part], gap_mm: float) -> list[StripDefect]:
    """Parts merged into defects, numbered 1.. in strip order (along, then across)."""
    order = sorted(range(len(found)), key=lambda i: _key(found[i]))
    sets = _Sets(len(found))
    cells: dict[int, list[int]] = {}
    group: tuple[str, int] | None = None
    for i in order:
        p = found[i]
        if (p.surface, p.class_id) != group:
            group, cells = (p.surface, p.class_id), {}
        lo, hi = _cells(p.x0 - gap_mm, p.x1 + gap_mm)
        for cell in range(lo, hi + 1):
            live = cells.get(cell)
            if not live:
                continue
            live[:] = [j for j in live if found[j].y1 + gap_mm >= p.y0]  # sorted by y0: the rest ended before
            for j in live:
                q = found[j]
                if q.frame != p.frame and q.x0 <= p.x1 + gap_mm and p.x0 <= q.x1 + gap_mm:
                    sets.union(i, j)
        lo, hi = _cells(p.x0, p.x1)
        for cell in range(lo, hi + 1):
            cells.setdefault(cell, []).append(i)
    members: dict[int, list[int]] = {}
    for i in order:
        members.setdefault(sets.find(i), []).append(i)
    merged = [_defect([found[i] for i in group_]) for group_ in members.values()]
    merged.sort(key=lambda d: (d.y0, d.x0, d.surface, d.class_id, d.y1, d.x1, d.area_mm2))
    return [StripDefect(k + 1, d.class_id, d.surface, d.x0, d.x1, d.y0, d.y1, d.area_mm2, d.parts, d.cameras)
            for k, d in enumerate(merged)]


def _key(p: Part) -> tuple[object, ...]:
    return p.surface, p.class_id, p.y0, p.x0, p.y1, p.x1, p.camera, p.frame, p.area_mm2


def _cells(x0: float, x1: float) -> tuple[int, int]:
    return math.floor(x0 / MERGE_CELL_MM), math.floor(x1 / MERGE_CELL_MM)


def _defect(group: list[Part]) -> StripDefect:
    if len(group) == 1:  # most defects: one part
        p = group[0]
        return StripDefect(0, p.class_id, p.surface, p.x0, p.x1, p.y0, p.y1, p.area_mm2, 1, (p.camera,))
    return StripDefect(0, group[0].class_id, group[0].surface, min(p.x0 for p in group), max(p.x1 for p in group),
                       min(p.y0 for p in group), max(p.y1 for p in group), math.fsum(p.area_mm2 for p in group),
                       len(group), tuple(sorted({p.camera for p in group})))


def coil_length(records: Iterable[Record], cameras: Mapping[str, CameraPlacement], rows: int) -> float:
    """How far the frames reach (used when no coil end gave the length)."""
    ends = [r.pos_mm + rows * cameras[r.camera].mm_per_px_along for r in records if r.camera in cameras]
    return max(ends, default=0.0)


def coverage(records: Sequence[Record], camera: str, along_mm: float, length_mm: float,
             min_gap_mm: float) -> tuple[float, list[tuple[float, float]]]:
    """(fraction of [0, length] covered by the camera's ok frames, the uncovered [start, end] intervals)."""
    spans = sorted((r.pos_mm, r.pos_mm + along_mm) for r in records if r.camera == camera and r.ok)
    covered, gaps, at = 0.0, [], 0.0
    for start, end in spans:
        start, end = max(start, 0.0), min(end, length_mm)
        if end <= at:
            continue
        if start > at:
            if start - at > min_gap_mm:
                gaps.append((at, start))
            else:
                covered += start - at  # a sliver between frames is encoder jitter, not an uninspected stretch
        covered += end - max(start, at)
        at = end
    if length_mm - at > min_gap_mm:
        gaps.append((at, length_mm))
    elif length_mm > at:
        covered += length_mm - at
    return (min(covered / length_mm, 1.0) if length_mm > 0 else 0.0), gaps
