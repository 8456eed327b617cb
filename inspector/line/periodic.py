"""Roll marks: defects of one class on one surface at one place across the strip, repeating at a pitch.

A damaged roll prints the same mark once per turn, so its marks sit at first_mm + k * pitch (k = 0, 1, ...), some
missed (a rejected frame, a mark too faint once). Search, per (class, surface):
1. windows across the strip: defects binned by x_mm in bins of line.periodic_x_tol_mm; each window is two
   neighbouring bins, so a mark whose repeats wander less than the tolerance falls whole into one window;
2. candidate pitches per window: every roll's circumference, and the peaks of a histogram of along-strip
   distances between each defect and its next CANDIDATE_NEIGHBOURS ones (also divided by 2.. max_missed + 1,
   so missed repeats still vote for the true pitch), inside line.periodic_pitch_mm;
3. per candidate pitch, the longest chain by dynamic programming over the window's defects sorted along the
   strip: a defect continues a chain whose last member sits k * pitch +- periodic_jitter_mm before it, k = 1 ..
   max_missed + 1; chains of at least periodic_min_repeats members that chance cannot explain are kept (a
   uniform background as dense as the window's other defects, or as the class's average window if denser,
   would make such a chain less than SIGNIFICANCE times on average in all the tries made on this class and
   surface);
4. findings from all windows and pitches, best first (most repeats, fewest missed), each defect in one finding.
The pitch reported is the least-squares slope of position against turn number; `roll` names the roll whose
circumference it matches within line.roll_tolerance, else null.

Cost: O(n log n) in the defects of a coil: sorting, then per window a bounded number of candidate pitches, each a
DP pass with binary searches; at most MAX_CHAINS chains per window and pitch. Pure functions (loop thread).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inspector.config import LineConfig
from inspector.line.geometry import StripDefect

CANDIDATE_NEIGHBOURS = 16  # distances to this many following defects vote for a pitch
CANDIDATE_PEAKS = 4  # histogram peaks tried as pitches per window, besides the rolls
MAX_CHAINS = 4  # chains taken per window and pitch
PREDECESSORS = 8  # defects looked at per turn offset in the DP (a dense window cannot make it quadratic)
SIGNIFICANCE = 0.01


@dataclass(frozen=True)
class Finding:
    class_id: int
    surface: str
    x_mm: float
    pitch_mm: float
    roll: str | None
    repeats: int
    first_mm: float
    missed: int
    members: tuple[int, ...]  # StripDefect ids, along the strip

    def entry(self) -> dict[str, object]:
        """The keys the report entry carries (README "The line layer")."""
        return {"class_id": self.class_id, "surface": self.surface, "x_mm": self.x_mm, "pitch_mm": self.pitch_mm,
                "roll": self.roll, "repeats": self.repeats, "first_mm": self.first_mm}


def find(defects: Sequence[StripDefect], length_mm: float, cfg: LineConfig) -> list[Finding]:
    groups: dict[tuple[int, str], list[StripDefect]] = defaultdict(list)
    for d in defects:
        groups[(d.class_id, d.surface)].append(d)
    chains: list[tuple[tuple[object, ...], Finding]] = []
    width = max(max((d.x1 for d in defects), default=0.0) - min((d.x0 for d in defects), default=0.0),
                2 * cfg.periodic_x_tol_mm)
    for (cls, surface), members in sorted(groups.items()):
        share = 2 * cfg.periodic_x_tol_mm / width  # of the class's defects a window holds, were they uniform
        bins: dict[int, list[StripDefect]] = defaultdict(list)
        for d in members:
            bins[math.floor(d.x_mm / cfg.periodic_x_tol_mm)].append(d)
        for b in sorted(bins):
            window = bins[b] + bins.get(b + 1, [])
            if len(window) >= cfg.periodic_min_repeats:
                ordered = sorted(window, key=lambda d: (d.y_mm, d.id))
                for f in _window(ordered, len(members), share, cls, surface, length_mm, cfg):
                    chains.append(((-f.repeats, f.missed, f.roll is None, f.pitch_mm, f.x_mm, f.first_mm), f))
    taken: set[int] = set()
    out = []
    for _, f in sorted(chains, key=lambda c: c[0]):
        if not taken.intersection(f.members):
            taken.update(f.members)
            out.append(f)
    return sorted(out, key=lambda f: (f.first_mm, f.x_mm, f.class_id, f.surface))


def _window(window: list[StripDefect], group: int, share: float, cls: int, surface: str, length_mm: float,
            cfg: LineConfig) -> list[Finding]:
    ys = [d.y_mm for d in window]
    out = []
    pitches = _candidates(ys, cfg)
    for pitch in pitches:
        left = list(range(len(window)))
        for _ in range(MAX_CHAINS):
            chain = _chain([ys[i] for i in left], pitch, cfg)
            if chain is None:
                break
            members = [left[i] for i in chain[0]]
            background = max(len(window) - len(members), (group - len(members)) * share)
            if not _significant(len(members), background, group * 2 * len(pitches), length_mm, cfg):
                break
            out.append(_finding([window[i] for i in members], chain[2], cls, surface, cfg))
            used = set(members)
            left = [i for i in left if i not in used]
    return out


def _candidates(ys: list[float], cfg: LineConfig) -> list[float]:
    low, high = cfg.periodic_pitch_mm
    width = cfg.periodic_jitter_mm
    y = np.asarray(ys)
    votes = []
    for offset in range(1, min(CANDIDATE_NEIGHBOURS, len(ys) - 1) + 1):
        gaps = y[offset:] - y[:-offset]
        for k in range(1, cfg.periodic_max_missed + 2):
            step = gaps / k
            votes.append(np.round(step[(step >= low) & (step <= high)] / width).astype(np.int64))
    if not votes:
        return sorted(cfg.rolls_mm.values())
    bins, counts = np.unique(np.concatenate(votes), return_counts=True)
    order = np.lexsort((bins, -counts))  # most votes first, then the shorter pitch
    peaks = [int(bins[i]) for i in order[:CANDIDATE_PEAKS] if counts[i] >= cfg.periodic_min_repeats - 1]
    return sorted(cfg.rolls_mm.values()) + [b * width for b in peaks]


def _chain(ys: list[float], pitch: float, cfg: LineConfig) -> tuple[list[int], int, list[int]] | None:
    """The longest chain at `pitch` in sorted `ys`: (indexes, missed repeats, turn number of each) or None."""
    jitter, steps = cfg.periodic_jitter_mm, cfg.periodic_max_missed + 1
    y = np.asarray(ys)
    index = np.arange(len(ys))
    spans = []  # per turn offset k: the predecessors' index range [lo, hi) of every defect (searched at once)
    for k in range(1, steps + 1):
        lo = np.minimum(np.searchsorted(y, y - k * pitch - jitter, "left"), index)
        hi = np.minimum(np.searchsorted(y, y - k * pitch + jitter, "right"), index)
        spans.append((lo.tolist(), np.minimum(hi, lo + PREDECESSORS).tolist()))
    has = np.zeros(len(ys), bool)
    for lo, hi in spans:
        has |= np.asarray(hi) > np.asarray(lo)
    best = [(1, 0)] * len(ys)  # per index: (members, -missed) of the best chain ending there
    parent = [(-1, 0)] * len(ys)  # (previous index, turns from it)
    for i in np.flatnonzero(has).tolist():  # a defect with no predecessor at any offset starts its own chain
        top, link = (1, 0), (-1, 0)
        for k, (lo, hi) in enumerate(spans, start=1):
            for j in range(lo[i], hi[i]):
                score = (best[j][0] + 1, best[j][1] - (k - 1))
                if score > top:
                    top, link = score, (j, k)
        best[i], parent[i] = top, link
    end = max(range(len(ys)), key=lambda i: (best[i], -i), default=None)
    if end is None or best[end][0] < cfg.periodic_min_repeats:
        return None
    idx, turns = [], []
    at, turn = end, 0
    while at >= 0:
        idx.append(at)
        turns.append(turn)
        at, k = parent[at]
        turn -= k
    idx.reverse()
    turns = [t - turns[-1] for t in reversed(turns)]
    return idx, -best[end][1], turns


def _significant(repeats: int, background: float, tries: int, length_mm: float, cfg: LineConfig) -> bool:
    """Could `background` defects, spread uniformly along the coil, make such a chain by chance? `background`:
    the window's other defects, or as many as the class has per window on average if more (a sparse window is
    not evidence); `tries`: how many chains were looked for in this class and surface (each defect starts one per
    window and pitch), so a coil with many defects does not find marks by looking often."""
    if length_mm <= 0:
        return True
    q = min(1.0, 2 * cfg.periodic_jitter_mm * background / length_mm * (cfg.periodic_max_missed + 1))
    return tries * q ** (repeats - 1) < SIGNIFICANCE


def _finding(members: list[StripDefect], turns: list[int], cls: int, surface: str, cfg: LineConfig) -> Finding:
    ys = [d.y_mm for d in members]
    mean_t, mean_y = sum(turns) / len(turns), math.fsum(ys) / len(ys)
    pitch = (math.fsum((t - mean_t) * (y - mean_y) for t, y in zip(turns, ys, strict=True))
             / math.fsum((t - mean_t) ** 2 for t in turns))
    return Finding(cls, surface, round(math.fsum(d.x_mm for d in members) / len(members), 1), round(pitch, 1),
                   match_roll(pitch, cfg.rolls_mm, cfg.roll_tolerance), len(members), round(ys[0], 1),
                   turns[-1] - (len(members) - 1), tuple(d.id for d in members))


def match_roll(pitch: float, rolls: Mapping[str, float], tolerance: float) -> str | None:
    """The roll whose circumference is nearest `pitch`, if within `tolerance` (a fraction of it)."""
    near = [(abs(pitch - mm) / mm, name) for name, mm in rolls.items() if abs(pitch - mm) <= tolerance * mm]
    return min(near)[1] if near else None
