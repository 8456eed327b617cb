"""The shadow engine: a candidate runs on a sample of live frames beside the engine in service, and says how its
masks differ from the live ones on the plant's own frames, with no labels needed.

    consumer thread: ShadowTap.finished (a tap, taps.py): every `engine.shadow_every`-th published ok frame, while
        the budget allows, is queued with the live engine's defects (bounded queue: full = skipped, counted)
    shadow thread:   decode -> the shadow engine (one intra-op thread, lowest CPU priority) -> the worker's
        post-processing with the shadow manifest's values -> `compare` with the live defects -> Agreement

Budget: the shadow may spend at most `engine.shadow_budget` of the live engine's time (the pipeline's `infer`
seconds), measured on its own frames (CPU: the thread's CPU seconds; GPU: wall time); a frame is sampled only
while it has credit, one at a time, so an overrun is at most one frame. It never runs in the live
batch and never blocks the consumer: on a CPU its thread yields to every other thread (nice 19); on a GPU it runs
on a CUDA stream of its own. Per frame, worst case: one decode, one inference, four RLE decodes and one 8-connected
labelling per class present (~ the live path's cost per frame, paid only on sampled frames, on the shadow thread).

Results: Prometheus series `inspector_shadow_*`, a summary line every `engine.shadow_summary_s`, and the JSON
`engine.shadow_report` (rewritten atomically with each summary and at close) for `trainer shadow-report`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inspector.errors import EngineError, InspectorError
from inspector.protocol import Defect

if TYPE_CHECKING:
    from inspector.config import Config
    from inspector.metrics import Metrics
    from inspector.pipeline import FrameRecord
    from inspector.serving import ActiveEngine

log = logging.getLogger(__name__)
QUEUE_FRAMES = 2  # sampled frames handed to the shadow thread (one is admitted at a time: see finished)
CLASSES = 4


@dataclass
class ClassAgreement:
    """One class over the compared frames: pooled pixel Dice of the two masks, the per-frame Dice (both empty =
    1), frames where only one engine sees the class, and components of one not touching the other's mask."""

    inter: int = 0
    live_px: int = 0
    shadow_px: int = 0
    frame_dice_sum: float = 0.0
    presence_extra: int = 0  # the shadow finds the class, live does not
    presence_missing: int = 0  # live finds the class, the shadow does not
    extra_components: int = 0  # shadow components touching no live pixel of the class
    missing_components: int = 0  # live components touching no shadow pixel of the class

    def as_dict(self, frames: int) -> dict[str, Any]:
        total = self.live_px + self.shadow_px
        return {"pixel_dice": round(2 * self.inter / total, 5) if total else 1.0,
                "frame_dice": round(self.frame_dice_sum / frames, 5) if frames else None,
                "presence_extra": self.presence_extra, "presence_missing": self.presence_missing,
                "extra_components": self.extra_components, "missing_components": self.missing_components,
                "live_px": self.live_px, "shadow_px": self.shadow_px}


@dataclass
class Agreement:
    frames: int = 0
    classes: list[ClassAgreement] = field(default_factory=lambda: [ClassAgreement() for _ in range(CLASSES)])

    def add(self, other: Agreement) -> None:
        self.frames += other.frames
        for mine, theirs in zip(self.classes, other.classes, strict=True):
            for name in ClassAgreement.__dataclass_fields__:
                setattr(mine, name, getattr(mine, name) + getattr(theirs, name))


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    import cv2

    n, labels = cv2.connectedComponents(mask, connectivity=8)
    return n - 1, labels


def _untouched(mask: np.ndarray, other: np.ndarray) -> int:
    """Components of `mask` with no pixel in `other`."""
    n, labels = _components(mask)
    if n == 0:
        return 0
    touched = np.unique(labels[(labels > 0) & other.astype(bool)])
    return n - len(touched)


def compare(live: Sequence[Defect], shadow: Sequence[Defect], shape: tuple[int, int], into: Agreement) -> None:
    """Add one frame's comparison (the two engines' published defects, as RLE) to `into`."""
    from inspector.rle import decode

    by_live = {d.class_id: d for d in live}
    by_shadow = {d.class_id: d for d in shadow}
    into.frames += 1
    for k in range(1, CLASSES + 1):
        a, b, agg = by_live.get(k), by_shadow.get(k), into.classes[k - 1]
        if a is None and b is None:
            agg.frame_dice_sum += 1.0
            continue
        ma = decode(a.rle, shape) if a is not None else np.zeros(shape, np.uint8)
        mb = decode(b.rle, shape) if b is not None else np.zeros(shape, np.uint8)
        inter, pa, pb = int(np.count_nonzero(ma & mb)), int(np.count_nonzero(ma)), int(np.count_nonzero(mb))
        agg.inter += inter
        agg.live_px += pa
        agg.shadow_px += pb
        agg.frame_dice_sum += 2 * inter / (pa + pb) if pa + pb else 1.0
        agg.presence_extra += a is None
        agg.presence_missing += b is None
        agg.extra_components += _untouched(mb, ma)
        agg.missing_components += _untouched(ma, mb)


class ShadowTap:
    """A tap (taps.py) running the shadow engine on its own thread. `engine_seconds` reads the live engine's
    total inference time (the pipeline's stats, read late: bench swaps them)."""

    wants_scores = False

    def __init__(self, config: Config, engine_seconds: Callable[[], float], metrics: Metrics | None = None) -> None:
        from inspector.serving import load_engine

        e = config.engine
        self.every, self.budget, self.summary_s = e.shadow_every, e.shadow_budget, e.shadow_summary_s
        self.report_path = Path(e.shadow_report) if e.shadow_report else None
        self.height, self.width = config.camera.height, config.camera.width
        shadow_cfg = _shadow_config(config)
        try:
            self.engine = load_engine(shadow_cfg, e.shadow)
        except InspectorError as exc:
            raise type(exc)(f"config key 'engine.shadow' ({e.shadow}): {exc}") from None
        if self.engine.backend.input_shape != (self.height, self.width):
            shape = self.engine.backend.input_shape
            self.engine.backend.close()
            raise EngineError(f"config key 'engine.shadow' ({e.shadow}) takes {shape} frames, the camera sends "
                              f"{(self.height, self.width)}: name an engine built for the live frames")
        self.params = self.engine.params
        self._engine_seconds = engine_seconds
        self._seen_infer = engine_seconds()
        self._credit = 0.0  # shadow seconds it may still spend (frames queued are reserved at `_estimate`)
        self._estimate: float | None = None  # seconds per shadow frame, a running mean of what they took
        self._inflight = 0
        self._count = 0
        self.live_model: str | None = None
        self.agreement = Agreement()
        self.counts = {"sampled": 0, "compared": 0, "skipped_budget": 0, "skipped_queue": 0, "failed": 0}
        self.shadow_s = 0.0
        self._lock = threading.Lock()  # agreement, counts, shadow_s: shadow thread writes, summary reads
        self._queue: queue.Queue[tuple[FrameRecord, str, float] | None] = queue.Queue(QUEUE_FRAMES)
        self._metrics = _ShadowMetrics(metrics) if metrics is not None else None
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="shadow-engine", daemon=True)
        self._thread.start()
        log.info("shadow engine %s on %s: 1 in %d live frames, at most %.0f%% of the live engine's time",
                 self.engine.model_id, self.engine.backend.device, self.every, 100 * self.budget)

    # -- consumer thread ---------------------------------------------------------------------------------
    def finished(self, records: Sequence[FrameRecord], engine: ActiveEngine) -> None:
        now = self._engine_seconds()
        spent = now - self._seen_infer if now >= self._seen_infer else now  # stats replaced: counted anew
        self._seen_infer = now
        with self._lock:  # a long idle spell buys no burst past 5 s of shadow time
            self._credit = min(self._credit + self.budget * spent, 5.0)
            credit = self._credit
        for rec in records:
            if rec.error is not None or rec.message is None:
                continue
            self._count += 1
            if self._count % self.every:
                continue
            with self._lock:  # one frame at a time, reserved at the cost its forerunners took: what a frame
                cost = self._estimate  # really costs is known before the next is admitted
                admit = credit > 0 and self._inflight == 0
                if admit:
                    self._credit -= cost or 0.0
                    credit = self._credit
                    self._inflight += 1
            if not admit:
                self._counted("skipped_budget")
                continue
            try:
                self._queue.put_nowait((rec, engine.model_id, cost or 0.0))
            except queue.Full:
                with self._lock:
                    self._credit += cost or 0.0
                    self._inflight -= 1
                self._counted("skipped_queue")
                continue
            self._counted("sampled")

    def _counted(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n
        if self._metrics is not None:
            self._metrics.frames[what].inc(n)

    # -- shadow thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        import torch

        from inspector.decode import decode
        from inspector.postprocess import analyse

        _lowest_priority()
        # the budget is engine time taken from the live path: on a CPU this thread's own CPU seconds (time spent
        # waiting for a core, at nice 19, costs the live engine nothing); on a GPU the wall time of its work
        clock = time.thread_time if self.engine.backend.device.type == "cpu" else time.perf_counter
        next_summary = time.monotonic() + self.summary_s
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = ()  # type: ignore[assignment]
            if item is None:
                break
            if item:
                rec, live_model, reserved = item
                try:
                    t0 = clock()
                    image = decode(rec.message, self.height, self.width)  # type: ignore[arg-type]
                    frames = torch.from_numpy(image)[None, None].to(self.engine.backend.device)
                    with torch.inference_mode(), _side_stream(frames.device):
                        out = self.engine.backend.infer(frames)
                        found = analyse(out.probs, out.presence, self.params)[0]
                    frame = Agreement()
                    compare(rec.defects, found, (self.height, self.width), frame)
                    spent = clock() - t0
                    with self._lock:  # held for additions only: the consumer's finished() takes it too
                        self._credit += reserved - spent
                        self._estimate = spent if self._estimate is None else 0.8 * self._estimate + 0.2 * spent
                        self.agreement.add(frame)
                        self.shadow_s += spent
                        self.live_model = live_model
                    self._counted("compared")
                    if self._metrics is not None:
                        self._metrics.update(self.agreement, spent)
                except Exception as exc:  # a shadow failure is the shadow's, never the line's
                    with self._lock:
                        self._credit += reserved
                    self._counted("failed")
                    log.warning("shadow engine: frame %s failed: %s: %s", rec.entry.id, type(exc).__name__,
                                str(exc) or "no message")
                with self._lock:
                    self._inflight -= 1
            if time.monotonic() >= next_summary:
                next_summary = time.monotonic() + self.summary_s
                self._summarise()
        self._summarise()

    def report(self) -> dict[str, Any]:
        """The shadow's comparison so far, as the JSON report holds it."""
        with self._lock:
            a, counts, shadow_s = self.agreement, dict(self.counts), self.shadow_s
            per_class = {str(k + 1): c.as_dict(a.frames) for k, c in enumerate(a.classes)}
        return {"shadow": self.engine.model_id, "live": self.live_model, "frames_compared": a.frames,
                "counts": counts, "every": self.every, "budget": self.budget,
                "shadow_seconds": round(shadow_s, 3), "ms_per_frame": round(1000 * shadow_s / a.frames, 2)
                if a.frames else None, "since_s": round(time.monotonic() - self._started, 1),
                "per_class": per_class, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def _summarise(self) -> None:
        r = self.report()
        if r["frames_compared"]:
            pc = r["per_class"]
            log.info("shadow %s vs live %s on %d frames: pixel Dice per class %s; presence +shadow/-shadow %s; "
                     "components extra/missing %s; %.0f ms/frame, %d skipped (budget), %d (queue)",
                     r["shadow"], r["live"], r["frames_compared"],
                     "/".join(f"{pc[k]['pixel_dice']:.3f}" for k in pc),
                     " ".join(f"{pc[k]['presence_extra']}/{pc[k]['presence_missing']}" for k in pc),
                     " ".join(f"{pc[k]['extra_components']}/{pc[k]['missing_components']}" for k in pc),
                     r["ms_per_frame"], r["counts"]["skipped_budget"], r["counts"]["skipped_queue"])
        if self.report_path is not None:
            try:
                self.report_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.report_path.with_name(f".{self.report_path.name}.tmp")
                tmp.write_text(json.dumps(r, indent=2) + "\n")
                os.replace(tmp, self.report_path)
            except OSError as exc:
                log.warning("shadow engine: cannot write engine.shadow_report %s: %s", self.report_path, exc)

    def close(self) -> None:
        try:
            while True:  # what is still queued is dropped: the report covers what was compared
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put(None)
        self._thread.join(timeout=30)
        self.engine.backend.close()


class _ShadowMetrics:
    def __init__(self, metrics: Metrics) -> None:
        from prometheus_client import Counter, Gauge

        r = metrics.registry
        counter = Counter("inspector_shadow_frames", "Live frames offered to the shadow engine, by result",
                          ["result"], registry=r)
        self.frames = {k: counter.labels(result=k) for k in
                       ("sampled", "compared", "skipped_budget", "skipped_queue", "failed")}
        self.seconds = Counter("inspector_shadow_seconds", "Time the shadow engine spent (decode, infer, compare)",
                               registry=r)
        dice = Gauge("inspector_shadow_pixel_dice", "Pooled pixel Dice of shadow vs live masks, by class",
                     ["class_id"], registry=r)
        flips = Counter("inspector_shadow_presence_flips", "Frames where only one engine finds the class",
                        ["class_id", "found_by"], registry=r)
        comps = Counter("inspector_shadow_components", "Components of one engine touching none of the other's",
                        ["class_id", "kind"], registry=r)
        ks = range(1, CLASSES + 1)
        self.dice = {k: dice.labels(class_id=str(k)) for k in ks}
        self.flips = {(k, w): flips.labels(class_id=str(k), found_by=w) for k in ks for w in ("shadow", "live")}
        self.comps = {(k, w): comps.labels(class_id=str(k), kind=w) for k in ks for w in ("extra", "missing")}
        self._seen = Agreement()

    def update(self, a: Agreement, seconds: float) -> None:
        """Called from the shadow thread only (it owns `_seen`)."""
        self.seconds.inc(seconds)
        for k, (c, s) in enumerate(zip(a.classes, self._seen.classes, strict=True), start=1):
            total = c.live_px + c.shadow_px
            self.dice[k].set(2 * c.inter / total if total else 1.0)
            for key, now, before in ((("shadow"), c.presence_extra, s.presence_extra),
                                     (("live"), c.presence_missing, s.presence_missing)):
                if now > before:
                    self.flips[(k, key)].inc(now - before)
            for key, now, before in (("extra", c.extra_components, s.extra_components),
                                     ("missing", c.missing_components, s.missing_components)):
                if now > before:
                    self.comps[(k, key)].inc(now - before)
            s.presence_extra, s.presence_missing = c.presence_extra, c.presence_missing
            s.extra_components, s.missing_components = c.extra_components, c.missing_components


def _shadow_config(config: Config) -> Config:
    """The worker's config with one engine thread: the shadow must not take the cores the live engine uses."""
    from inspector import config as config_mod

    return config_mod.replace(config, engine={"threads": 1, "cuda_graph_batches": ()})


def _side_stream(device: Any) -> Any:
    """On CUDA, a stream of the lowest priority for the shadow's work (the live batches' streams win the SMs);
    elsewhere nothing."""
    import contextlib

    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device=device, priority=0))


def _lowest_priority() -> None:
    """Nice 19 for this thread only (Linux: a thread is a task): on a busy CPU the live path always wins."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError) as exc:
        log.debug("shadow engine: cannot lower the thread's priority: %s", exc)
