"""Which finished frames are worth a person's time: the capture policies and their caps per hour.

Pure decisions over one frame (message, defects, per-class scores, the engine's thresholds) plus a token bucket
per policy; called from the consumer thread only (`CaptureTap.finished`), so nothing here is shared.

    on_demand  the frame's camera or coil is in the on-demand set (README "Learning from the line": a Redis set)
    rare       a defect of one of capture.rare_classes
    uncertain  a class's presence or max pixel probability within capture.uncertain_band of its threshold
    random     1 in capture.sample_every frames, defect-free ones included, by a hash of the frame id: the same
               frame is chosen on every delivery, and a test can say which frames must be there

A frame goes to the first policy in that order that matches and still has room in its hour; `matched` keeps
every policy that matched, for meta.jsonl.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from inspector.config import CaptureConfig
from inspector.postprocess import PostprocessParams
from inspector.protocol import Defect, FrameMessage

ORDER = ("on_demand", "rare", "uncertain", "random")


class RateCap:
    """At most `per_hour` admissions in the first hour and on average after: a bucket of `per_hour` tokens
    refilled at per_hour / 3600 a second (a burst may spend a full bucket at once)."""

    def __init__(self, per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_hour, self.clock = per_hour, clock
        self.tokens, self.at = float(per_hour), clock()

    def admit(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.per_hour), self.tokens + (now - self.at) * self.per_hour / 3600.0)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(frozen=True)
class Choice:
    policy: str  # the policy whose cap admitted the frame
    matched: tuple[str, ...]  # every policy that matched, in ORDER


def sampled(frame_id: str, every: int) -> bool:
    """The random policy: 1 in `every` frame ids, uniformly, the same answer for the same id."""
    digest = hashlib.sha256(frame_id.encode("utf-8", "surrogatepass")).digest()
    return every > 0 and int.from_bytes(digest[:8], "big") % every == 0


def uncertain(scores: np.ndarray | None, params: PostprocessParams, band: float) -> bool:
    """Presence or max pixel probability of some class within `band` of its threshold (scores: (classes, 2))."""
    if band <= 0 or scores is None:
        return False
    presence, peak = scores[:, 0], scores[:, 1]
    near = (np.abs(presence - np.asarray(params.presence_threshold)) <= band) | \
        (np.abs(peak - np.asarray(params.thresholds)) <= band)
    return bool(near.any())


class Policies:
    def __init__(self, cfg: CaptureConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.rare = frozenset(cfg.rare_classes)
        self.caps = {"on_demand": RateCap(cfg.on_demand_per_hour, clock), "rare": RateCap(cfg.rare_per_hour, clock),
                     "uncertain": RateCap(cfg.uncertain_per_hour, clock),
                     "random": RateCap(cfg.sample_per_hour, clock)}

    def matches(self, message: FrameMessage, defects: list[Defect], scores: np.ndarray | None,
                params: PostprocessParams, wanted: frozenset[str]) -> tuple[str, ...]:
        """Every policy that wants this frame, in ORDER."""
        cfg = self.cfg
        hits = {
            "on_demand": bool(wanted) and (f"camera:{message.camera}" in wanted
                                           or (message.coil is not None and f"coil:{message.coil}" in wanted)),
            "rare": any(d.class_id in self.rare for d in defects),
            "uncertain": uncertain(scores, params, cfg.uncertain_band),
            "random": sampled(message.id, cfg.sample_every),
        }
        return tuple(p for p in ORDER if hits[p])

    def choose(self, message: FrameMessage, defects: list[Defect], scores: np.ndarray | None,
               params: PostprocessParams, wanted: frozenset[str]) -> tuple[Choice | None, tuple[str, ...]]:
        """The choice (None: no policy matched, or every matching one is out of room this hour) and the matches."""
        matched = self.matches(message, defects, scores, params, wanted)
        for policy in matched:
            if self.caps[policy].admit():
                return Choice(policy, matched), matched
        return None, matched
