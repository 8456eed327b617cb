"""Alarms as data (README "Alarm rules"): which conditions hold now, and which alarms that starts or ends.

    evaluate(rules, facts) -> {alarm id: text}   the conditions holding in one snapshot of the line
    AlarmBook.update(holding, ts) -> transitions  `fired` once when an id appears, `cleared` once when it goes

An alarm's id names its rule and what it is about, so one condition fires once: `<rule>@<coil>` for the rules on
the current coil (defect, density, periodic: the next coil is a new condition), `<rule>@<coil>/<camera>` for
coverage, `<rule>/<camera>` for a silent camera, `<rule>` for the worker. Pure functions and one small class with
no I/O: `inspector screen` builds the facts from Redis each round, feeds them here in its poll thread, and writes
the transitions (inspector/screen/view.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from inspector.config import AlarmRule
from inspector.line.geometry import StripDefect
from inspector.line.periodic import Finding

DENSITY_WINDOW_M = 10.0  # a density rule without window_m counts over the last this many metres


@dataclass(frozen=True)
class Facts:
    """What the rules look at: the current coil so far, the cameras' and workers' liveness."""

    now: float  # unix s
    started: float  # unix s: when the evaluator started (a camera never seen counts silent from here)
    coil: str | None = None  # the coil the cameras are on (None: none yet)
    length_mm: float = 0.0  # how far along the current coil the frames reach
    defects: Sequence[StripDefect] = ()  # merged, in strip mm (inspector/line/geometry.py)
    findings: Sequence[Finding] = ()  # periodic marks found so far
    coverage: Mapping[str, float] = field(default_factory=dict)  # camera -> inspected fraction of the coil so far
    cameras: Sequence[str] = ()  # the cameras that should be sending
    last_seen: Mapping[str, float] = field(default_factory=dict)  # camera -> unix s of its latest event
    workers_live: int = 0


@dataclass(frozen=True)
class Transition:
    state: str  # fired | cleared
    id: str
    rule: str
    text: str
    ts: float

    def as_dict(self) -> dict[str, object]:
        return {"state": self.state, "id": self.id, "rule": self.rule, "text": self.text, "ts": self.ts}


def _where(rule: AlarmRule) -> str:
    parts = [f"class {rule.class_id}" if rule.class_id else "any class"]
    if rule.surface:
        parts.append(f"{rule.surface} surface")
    if rule.zone_mm:
        parts.append(f"{rule.zone_mm[0]:g}-{rule.zone_mm[1]:g} mm across")
    return ", ".join(parts)


def _matching(rule: AlarmRule, defects: Iterable[StripDefect]) -> list[StripDefect]:
    out = []
    for d in defects:
        if rule.class_id is not None and d.class_id != rule.class_id:
            continue
        if rule.surface is not None and d.surface != rule.surface:
            continue
        if rule.zone_mm and not (d.x0 <= rule.zone_mm[1] and rule.zone_mm[0] <= d.x1):
            continue
        if d.area_mm2 < rule.min_area_mm2:
            continue
        out.append(d)
    return out


def _defect(rule: AlarmRule, f: Facts) -> dict[str, str]:
    if f.coil is None:
        return {}
    found = _matching(rule, f.defects)
    if rule.window_m is not None:
        found = [d for d in found if d.y1 >= f.length_mm - rule.window_m * 1000]
    if not found:
        return {}
    big = max(found, key=lambda d: (d.area_mm2, -d.id))
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return {f"{rule.name}@{f.coil}": f"{rule.name}: class {big.class_id} defect of {big.area_mm2:.0f} mm² on the "
                                     f"{big.surface} surface at {big.y_mm / 1000:.2f} m, {big.x_mm:.0f} mm across"
                                     f"{more}, coil {f.coil} (rule: {_where(rule)}, at least "
                                     f"{rule.min_area_mm2:g} mm²)"}


def _density(rule: AlarmRule, f: Facts) -> dict[str, str]:
    if f.coil is None or rule.per_metre is None:
        return {}
    window_m = rule.window_m or DENSITY_WINDOW_M
    found = [d for d in _matching(rule, f.defects) if d.y1 >= f.length_mm - window_m * 1000]
    rate = len(found) / window_m
    if rate < rule.per_metre:
        return {}
    return {f"{rule.name}@{f.coil}": f"{rule.name}: {len(found)} defects ({_where(rule)}) in the last {window_m:g} m "
                                     f"of coil {f.coil}: {rate:.1f} per metre, limit {rule.per_metre:g}"}


def _periodic(rule: AlarmRule, f: Facts) -> dict[str, str]:
    if f.coil is None:
        return {}
    marks = [m for m in f.findings if (rule.class_id is None or m.class_id == rule.class_id)
             and (rule.surface is None or m.surface == rule.surface)
             and (not rule.zone_mm or rule.zone_mm[0] <= m.x_mm <= rule.zone_mm[1])]
    if not marks:
        return {}
    text = "; ".join(f"class {m.class_id} on the {m.surface} surface at {m.x_mm:.0f} mm across, pitch "
                     f"{m.pitch_mm:.1f} mm ({'roll ' + m.roll if m.roll else 'no roll matches'}), x{m.repeats}"
                     for m in marks[:3])
    return {f"{rule.name}@{f.coil}": f"{rule.name}: periodic mark on coil {f.coil}: {text}"
                                     + (f" (and {len(marks) - 3} more)" if len(marks) > 3 else "")}


def _coverage(rule: AlarmRule, f: Facts) -> dict[str, str]:
    if f.coil is None or rule.floor is None or f.length_mm < rule.after_m * 1000:
        return {}
    return {f"{rule.name}@{f.coil}/{cam}": f"{rule.name}: camera {cam} inspected {100 * value:.0f}% of coil {f.coil} "
                                           f"so far ({f.length_mm / 1000:.1f} m), floor {100 * rule.floor:.0f}%"
            for cam, value in sorted(f.coverage.items()) if value < rule.floor}


def _silent(rule: AlarmRule, f: Facts) -> dict[str, str]:
    out = {}
    for cam in sorted(f.cameras or f.last_seen):  # placed cameras; without line.cameras, every camera seen
        quiet = f.now - f.last_seen.get(cam, f.started)
        if quiet >= rule.silent_s:
            seen = "since the screen started" if cam not in f.last_seen else f"for {quiet:.0f} s"
            out[f"{rule.name}/{cam}"] = (f"{rule.name}: camera {cam} has had no inspected frame {seen} (limit "
                                         f"{rule.silent_s:g} s)")
    return out


def _worker(rule: AlarmRule, f: Facts) -> dict[str, str]:
    if f.workers_live >= rule.min_workers:
        return {}
    return {rule.name: f"{rule.name}: {f.workers_live} worker(s) live and ready, at least {rule.min_workers} needed: "
                       "frames are not being inspected"}


_KINDS = {"defect": _defect, "density": _density, "periodic": _periodic, "coverage": _coverage,
          "camera_silent": _silent, "worker_not_ready": _worker}


def evaluate(rules: Sequence[AlarmRule], facts: Facts) -> dict[str, tuple[str, str]]:
    """Every condition holding now: alarm id -> (rule name, text)."""
    out: dict[str, tuple[str, str]] = {}
    for rule in rules:
        for alarm_id, text in _KINDS[rule.kind](rule, facts).items():
            out[alarm_id] = (rule.name, text)
    return out


class AlarmBook:
    """The active alarms, and the transitions each new evaluation makes. A text that changes while its condition
    holds (more defects found) is updated in place, not fired again; an alarm whose rule has `clear_after_s`
    clears only once its condition has been gone that long (a density hovering at its limit fires once)."""

    def __init__(self, active: Mapping[str, tuple[str, str]] | None = None,
                 clear_after_s: Mapping[str, float] | None = None) -> None:
        self.active: dict[str, tuple[str, str]] = dict(active or {})
        self.clear_after_s = dict(clear_after_s or {})  # rule name -> s
        self._gone: dict[str, float] = {}  # alarm id -> when its condition was first seen gone

    def update(self, holding: Mapping[str, tuple[str, str]], ts: float) -> list[Transition]:
        out = []
        for i, (rule, text) in sorted(self.active.items()):
            if i in holding:
                self._gone.pop(i, None)
                self.active[i] = holding[i]
                continue
            since = self._gone.setdefault(i, ts)
            if ts - since >= self.clear_after_s.get(rule, 0.0):
                out.append(Transition("cleared", i, rule, text, ts))
                del self.active[i], self._gone[i]
        for i, (rule, text) in sorted(holding.items()):
            if i not in self.active:
                out.append(Transition("fired", i, rule, text, ts))
                self.active[i] = (rule, text)
        return out


__all__ = ["AlarmBook", "Facts", "Transition", "evaluate"]
