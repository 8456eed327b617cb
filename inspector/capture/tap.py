"""The capture tap: chooses finished frames (consumer thread) and writes them (its own writer thread).

    consumer thread: CaptureTap.finished -> Policies.choose -> Job -> bounded queue (full: dropped, counted)
    writer thread:   Job -> images/<name>, predicted.csv rows, meta.jsonl line (capture Store, its cap)
                         -> evidence crops (evidence Store, its cap); on-demand set refreshed from Redis

Ownership: `policies` and the caps are the consumer thread's; the stores, the Redis client and the disk are the
writer thread's; `wanted` (the on-demand set) is written by the writer thread as a whole new frozenset and only
read by the consumer; `counts` is shared under `_lock`. Jobs hold the frame's message and its event's defects,
which nothing changes once the event is published. The writer never raises: a failed write is counted
(`error`) and logged at most once a minute. A stalled disk stalls only this thread; the queue fills and further
captures are dropped (`queue_full`) while the pipeline runs on.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inspector.capture import evidence
from inspector.capture.names import EVIDENCE, day_of, image_name
from inspector.capture.policies import Choice, Policies
from inspector.capture.store import Disk, Store
from inspector.config import CaptureConfig
from inspector.metrics import Metrics
from inspector.protocol import Defect, FrameMessage

if TYPE_CHECKING:
    from inspector.pipeline import FrameRecord
    from inspector.serving import ActiveEngine

log = logging.getLogger(__name__)

CSV_HEADER = b"ImageId,ClassId,EncodedPixels\n"
RESULTS = ("written", "queue_full", "over_cap", "error")
CLOSE_WAIT_S = 20.0  # close() waits this long for the queue to drain, then leaves the (daemon) writer behind


@dataclass(frozen=True)
class Job:
    message: FrameMessage
    defects: list[Defect]
    entry_id: str
    engine_id: str
    choice: Choice | None  # None: evidence crops only
    scores: np.ndarray | None
    crops: int  # evidence paths in the event


class CaptureTap:
    """A `Tap` (inspector/taps.py) that keeps frames for retraining and evidence crops of defects."""

    wants_scores = True

    def __init__(self, cfg: CaptureConfig, metrics: Metrics | None = None, disk: Disk | None = None,
                 on_demand: Callable[[], frozenset[str]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.root = Path(cfg.folder)
        self.policies = Policies(cfg, clock)
        self.captures = Store(self.root, cfg.max_bytes, disk)
        self.evidence = Store(self.root / EVIDENCE, cfg.evidence_max_bytes, disk) if cfg.evidence else None
        self.on_demand = on_demand
        self.wanted: frozenset[str] = frozenset()
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=cfg.queue_size)
        self.metrics = metrics
        self._children = ({kind: {r: getattr(metrics, kind).labels(result=r) for r in RESULTS}
                           for kind in ("captures", "evidence")} if metrics is not None else None)
        self._logged = 0.0
        self._poll_due = 0.0
        self.thread = threading.Thread(target=self._write_loop, name="capture-writer", daemon=True)
        self.thread.start()

    # -- consumer thread -----------------------------------------------------------------------------------
    def finished(self, records: Sequence[FrameRecord], engine: ActiveEngine) -> None:
        wanted = self.wanted
        for rec in records:
            m = rec.message
            if rec.error is not None or m is None:
                continue
            choice, matched = self.policies.choose(m, rec.defects, rec.scores, engine.params, wanted)
            crops = sum(p is not None for d in rec.defects for p in (d.evidence or []))
            for policy in matched:
                self._count(f"matched:{policy}")
            if choice is not None:
                self._count(f"chosen:{choice.policy}")
            if choice is None and not crops:
                continue
            try:
                self.queue.put_nowait(Job(m, rec.defects, rec.entry.id, engine.model_id, choice, rec.scores, crops))
            except queue.Full:
                if choice is not None:
                    self._result("captures", "queue_full")
                self._result("evidence", "queue_full", crops)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def _result(self, kind: str, result: str, n: int = 1) -> None:
        if n <= 0:
            return
        self._count(f"{kind}:{result}", n)
        if self._children is not None:
            self._children[kind][result].inc(n)

    # -- writer thread -------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        self._refresh_wanted()
        while True:
            try:
                job = self.queue.get(timeout=self.cfg.on_demand_poll_s)
            except queue.Empty:  # idle: only the on-demand set to refresh
                self._refresh_wanted()
                continue
            if job is None:
                return
            self._write(job)
            self._refresh_wanted()

    def _refresh_wanted(self) -> None:
        now = time.monotonic()
        if self.on_demand is None or now < self._poll_due:
            return
        self._poll_due = now + self.cfg.on_demand_poll_s
        try:
            self.wanted = self.on_demand()
        except Exception as exc:  # Redis away: keep the last set, say so now and then
            self._warn("on-demand set not read (%s: %s); keeping the last one", type(exc).__name__, exc)

    def _write(self, job: Job) -> None:
        if job.choice is not None:
            self._result("captures", self._guarded(self._write_capture, job))
        if job.crops and self.evidence is not None:
            try:
                pieces = evidence.crops(job.message, job.defects, self.cfg.evidence_margin_px, self.cfg.jpeg_quality)
            except Exception as exc:
                self._warn("evidence of %s not rendered (%s: %s)", job.message.id[:80], type(exc).__name__, exc)
                self._result("evidence", "error", job.crops)
                return
            for path, data in pieces:
                self._result("evidence", self._guarded(self._write_crop, path, data))

    def _guarded(self, write: Callable[..., str], *args: Any) -> str:
        try:
            return write(*args)
        except Exception as exc:  # a full or failing disk loses the capture, never the worker
            self._warn("capture write failed (%s: %s)", type(exc).__name__, exc)
            return "error"

    def _write_capture(self, job: Job) -> str:
        m, store = job.message, self.captures
        day, name = day_of(m.ts), image_name(m.id, m.encoding)
        image = evidence.image_bytes(m)
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        for d in job.defects:
            writer.writerow([name, d.class_id, d.rle])
        meta = json.dumps(self._meta(job, name), separators=(",", ":")) + "\n"
        new_csv = not (store.root / day / "predicted.csv").exists()
        size = len(image) + len(rows.getvalue()) + len(meta) + (len(CSV_HEADER) if new_csv else 0)
        if not store.room(day, size):
            return "over_cap"
        store.write(day, f"images/{name}", image)  # the image first: a line only ever names a whole file
        store.append(day, "predicted.csv", rows.getvalue().encode(), CSV_HEADER)
        store.append(day, "meta.jsonl", meta.encode())
        return "written"

    def _meta(self, job: Job, name: str) -> dict[str, Any]:
        m, choice = job.message, job.choice
        scores = None if job.scores is None else {"presence": [round(float(v), 5) for v in job.scores[:, 0]],
                                                   "max_prob": [round(float(v), 5) for v in job.scores[:, 1]]}
        return {"frame_id": m.id, "image": name, "entry_id": job.entry_id, "camera": m.camera, "seq": m.seq,
                "coil": m.coil, "pos_mm": m.pos_mm, "ts": m.ts, "engine": job.engine_id,
                "policy": choice.policy if choice else None, "matched": list(choice.matched) if choice else [],
                "scores": scores, "classes": [d.class_id for d in job.defects]}

    def _write_crop(self, path: str, data: bytes) -> str:
        assert self.evidence is not None
        _, day, relative = path.split("/", 2)  # evidence/<day>/<name>/<class>_<k>.jpg (names.annotate)
        if not self.evidence.room(day, len(data)):
            return "over_cap"
        self.evidence.write(day, relative, data)
        return "written"

    def _warn(self, text: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._logged >= 60.0:
            self._logged = now
            log.warning("capture: " + text + " (at most once a minute; all counted in inspector_captures_total)",
                        *args)

    # -- any thread ----------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def close(self) -> None:
        """Let the writer finish what is queued (at most CLOSE_WAIT_S), then stop it."""
        try:
            self.queue.put(None, timeout=CLOSE_WAIT_S)
        except queue.Full:
            log.warning("capture: writer still busy after %g s; %d capture(s) left unwritten", CLOSE_WAIT_S,
                        self.queue.qsize())
            return
        self.thread.join(timeout=CLOSE_WAIT_S)
        close = getattr(self.on_demand, "close", None)
        if close is not None and not self.thread.is_alive():
            close()
