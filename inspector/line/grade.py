"""A coil's grade from the acceptance matrix in `line.grades`: the first grade whose limits all hold, and the limit
that decided it (the first one the better grade broke). Pure functions (loop thread)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from inspector.config import CLASS_KEYS, GradeLimits, LineConfig
from inspector.line.geometry import StripDefect
from inspector.line.periodic import Finding


@dataclass(frozen=True)
class Measures:
    """What the limits are checked against."""

    counts: dict[str, int]  # class id -> merged defects
    per_100m: dict[str, float]
    max_area_mm2: dict[str, float]
    periodic: int
    coverage: dict[str, float]  # camera -> fraction


@dataclass(frozen=True)
class Grade:
    grade: str
    decided_by: str


def measures(defects: Sequence[StripDefect], findings: Sequence[Finding], coverage: Mapping[str, float],
             length_mm: float) -> Measures:
    counts = dict.fromkeys(CLASS_KEYS, 0)
    largest = dict.fromkeys(CLASS_KEYS, 0.0)
    for d in defects:
        key = str(d.class_id)
        counts[key] += 1
        largest[key] = max(largest[key], d.area_mm2)
    per_100m = {k: (n * 100_000 / length_mm if length_mm > 0 else (float("inf") if n else 0.0))
                for k, n in counts.items()}
    return Measures(counts, per_100m, largest, len(findings), dict(coverage))


def broken(limits: GradeLimits, m: Measures) -> str | None:
    """The first limit of `limits` that `m` breaks, in words, or None when all hold."""
    for cls, limit in sorted(limits.max_per_100m.items()):
        if m.per_100m.get(cls, 0.0) > limit:
            return f"class {cls}: {m.per_100m[cls]:.1f} defects per 100 m > {limit:g}"
    for cls, limit in sorted(limits.max_area_mm2.items()):
        if m.max_area_mm2.get(cls, 0.0) > limit:
            return f"class {cls}: largest defect {m.max_area_mm2[cls]:.0f} mm2 > {limit:g}"
    if limits.max_periodic is not None and m.periodic > limits.max_periodic:
        return f"periodic marks: {m.periodic} > {limits.max_periodic}"
    if limits.min_coverage is not None:
        for camera, fraction in sorted(m.coverage.items()):
            if fraction < limits.min_coverage:
                return f"coverage of {camera}: {fraction:.3f} < {limits.min_coverage:g}"
    return None


def grade(m: Measures, cfg: LineConfig) -> Grade:
    failed: tuple[str, str] | None = None
    for limits in cfg.grades:
        why = broken(limits, m)
        if why is None:
            if failed is None:
                return Grade(limits.name, f"every limit of grade {limits.name} holds")
            return Grade(limits.name, f"grade {failed[0]} refused: {failed[1]}")
        failed = (limits.name, why)  # the grade just above the one given says why
    last = cfg.grades[-1]
    return Grade(cfg.hold_grade, f"grade {last.name} refused: {broken(last, m)}")
