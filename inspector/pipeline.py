"""The stages of the worker, wired from the config, and nothing that runs them:

    source (Redis XREADGROUP) -> batch (size or deadline) -> decode (pool, into a pinned staging slot)
        -> stage (H2D, copy stream) -> engine (engine stream) -> post-process (post stream: threshold,
        components, RLE) -> events (one fenced Lua call: XADD events + dead letters + XACK + seq gaps + trim)

`Pipeline.read` collects a batch of entries, `prepare(entries, engine) -> Batch` parses, decodes, stages and
launches the engine, `finish(batch) -> outcomes` post-processes and makes one event per record, `tap` hands the
published records to the taps. No stage retries, waits for a stop or knows of threads: `inspector.worker` runs them
(publish with its retry, the threads, the stop, the engine swap), `inspector.accounting` counts what they did.
`from_config` loads the engine and returns a `Worker` wired to Redis (or to an in-memory twin).

Every frame read gets exactly one event: malformed frames become rejected events and dead letters, and nothing is
acked without its event. A batch is a list of `FrameRecord`s, one per entry, read top to bottom.

Threads (under `Worker.run`): `read` and `prepare` on the producer (they own the batcher, the decode pool, the
staging ring and the engine stream); `finish` and `tap` on the consumer (the post stream and the taps); `close`
after both have ended. Under `Worker.step` all of them on the caller's thread.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from inspector import engines, preview
from inspector.accounting import Accounting
from inspector.backends import EngineOutput
from inspector.batching import Batcher
from inspector.capture.names import annotate
from inspector.config import Config
from inspector.decode import DecodePool
from inspector.errors import DecodeError, describe
from inspector.health import Health
from inspector.io import Entry, FrameSource, Outcome
from inspector.metrics import Metrics
from inspector.notify import Notifier
from inspector.postprocess import analyse, prepare
from inspector.protocol import Defect, Event, FrameMessage, identity, parse_frame, placement
from inspector.serving import ActiveEngine, check_compatible, load_engine
from inspector.staging import DeviceStreams, Slot, StagingRing
from inspector.stats import Stats
from inspector.taps import Tap

if TYPE_CHECKING:
    from inspector.worker import Worker

log = logging.getLogger(__name__)


@dataclass
class FrameRecord:
    """One entry's way through the pipeline."""

    entry: Entry
    message: FrameMessage | None = None
    error: str | None = None  # set: rejected (event status `rejected`, and a dead letter)
    defects: list[Defect] = field(default_factory=list)
    scores: np.ndarray | None = None  # (classes, 2): presence and max pixel probability, when a tap asks (taps.py)

    def outcome(self, model: str, done_ts: float, max_payload_bytes: int) -> Outcome:
        if self.error is None and self.message is not None:
            m = self.message
            event = Event(m.id, self.entry.id, m.camera, m.seq, m.ts, done_ts, model, "ok", defects=self.defects,
                          coil=m.coil, pos_mm=m.pos_mm)
            return Outcome(self.entry, event.pack(), None, m.camera, m.seq)
        frame_id, camera, seq, ts = identity(self.entry.fields, max_payload_bytes)
        coil, pos_mm = placement(self.entry.fields, max_payload_bytes)
        event = Event(frame_id, self.entry.id, camera, seq, ts, done_ts, model, "rejected", self.error, coil=coil,
                      pos_mm=pos_mm)
        return Outcome(self.entry, event.pack(), self.error or "rejected", camera, seq)


@dataclass
class Batch:
    records: list[FrameRecord]
    engine: ActiveEngine
    staged: list[FrameRecord] = field(default_factory=list)  # the records in the engine batch, in row order
    output: EngineOutput | None = None
    timing: tuple[torch.cuda.Event, torch.cuda.Event] | None = None  # CUDA: engine start / done
    done_ts: float = 0.0  # set by finish(): the events' done_ts (unix s)


class Pipeline:
    """The stages for one frame geometry and device (an engine swap keeps both: serving.check_compatible)."""

    def __init__(self, config: Config, device: torch.device, input_shape: tuple[int, int], block_ms: int,
                 accounting: Accounting, taps: Sequence[Tap] = (), clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.accounting, self.clock = config, accounting, clock
        self.taps = list(taps)  # consumer thread only (tap), closed by close()
        self.batcher = Batcher(config.batching.batch_size, config.batching.max_wait_ms, block_ms)
        height, width = input_shape
        self.ring = StagingRing(config.batching.ring_depth, config.batching.batch_size, height, width, device)
        self.streams = DeviceStreams(device)
        self.decoder = DecodePool(config.batching.decode_threads)
        self.post_why = prepare(device, config.batching.decode_threads)  # pool size, labeller: for the start-up line

    # -- producer stages ---------------------------------------------------------------------------------
    def read(self, source: FrameSource) -> list[Entry]:
        """One batch of entries (size or deadline); the source's errors go to the caller."""
        t0 = time.perf_counter()
        entries = self.batcher.collect(source.read)
        self.accounting.timed("read", time.perf_counter() - t0)
        return entries

    def prepare(self, entries: list[Entry], engine: ActiveEngine) -> Batch:
        """Parse and decode into a staging slot, upload, launch the engine; rejects are marked, never raised."""
        batch = Batch([FrameRecord(e) for e in entries], engine)
        max_bytes = self.cfg.camera.max_payload_bytes
        t0 = time.perf_counter()
        for rec in batch.records:
            if rec.entry.poison is not None:
                rec.error = rec.entry.poison
                continue
            try:
                rec.message = parse_frame(rec.entry.fields, max_bytes)
            except DecodeError as exc:
                rec.error = str(exc)
            except Exception as exc:  # input no check foresaw: still this frame's fault, never the worker's end
                rec.error = f"frame cannot be parsed: {describe(exc)}"
        todo = [r for r in batch.records if r.error is None]
        if not todo:
            self.accounting.timed("decode", time.perf_counter() - t0)
            return batch
        slot = self.ring.acquire()
        errors = self.decoder.decode([r.message for r in todo], [slot.frame(i) for i in range(len(todo))])
        for rec, error in zip(todo, errors, strict=True):
            rec.error = error
        rows = [i for i, error in enumerate(errors) if error is None]
        slot.compact(rows)
        batch.staged = [todo[i] for i in rows]
        t1 = time.perf_counter()
        self.accounting.timed("decode", t1 - t0)
        if not batch.staged:
            self.ring.release(slot)
            return batch
        self._launch(batch, slot)
        return batch

    def _launch(self, batch: Batch, slot: Slot) -> None:
        """Upload and run the engine on its stream; the slot goes back once the engine has read it."""
        n = len(batch.staged)
        t0 = time.perf_counter()
        staged = self.ring.upload(slot, n)
        self.accounting.timed("stage", time.perf_counter() - t0)  # the enqueue of the copy (CPU: a view)
        s = self.streams
        done = None
        try:
            with s.on(s.engine):
                s.wait(s.engine, slot.ready)
                start = s.record(s.engine, timing=True)
                t0 = time.perf_counter()
                batch.output = batch.engine.backend.infer(staged)
                done = s.record(s.engine, timing=True)
        finally:
            self.ring.release(slot, after=done)
        if s.cuda:
            batch.timing = (start, done)  # type: ignore[assignment]
        else:
            self.accounting.inferred(n, time.perf_counter() - t0)

    # -- consumer stages ---------------------------------------------------------------------------------
    def _postprocess(self, batch: Batch) -> None:
        if batch.output is None:
            return
        s = self.streams
        if batch.timing is not None:
            start, done = batch.timing
            s.wait(s.post, done)
        with s.on(s.post):
            out = batch.output
            s.lend(out.probs, s.post)
            s.lend(out.presence, s.post)
            t0 = time.perf_counter()
            defects = analyse(out.probs, out.presence, batch.engine.params)
            if any(t.wants_scores for t in self.taps):
                scores = _scores(out.probs, out.presence)
                for rec, row in zip(batch.staged, scores, strict=True):
                    rec.scores = row
            if batch.timing is not None:  # analyse waited for the post stream, hence for the engine
                self.accounting.inferred(len(batch.staged), start.elapsed_time(done) / 1000.0)
        self.accounting.timed("postprocess", time.perf_counter() - t0)
        for rec, found in zip(batch.staged, defects, strict=True):
            rec.defects = found
        batch.output = None  # free the device memory now, not when the batch object goes

    def finish(self, batch: Batch) -> list[Outcome]:
        """Post-process, then one outcome (event, and for a reject its dead letter) per record, in order."""
        self._postprocess(batch)
        if self.cfg.capture.enabled and self.cfg.capture.evidence:  # crop paths travel in the event (capture/)
            for rec in batch.staged:
                m = rec.message
                annotate(m.id, m.ts, rec.defects, self.cfg.capture.evidence_per_frame)  # type: ignore[union-attr]
        batch.done_ts = now = self.clock()
        max_bytes = self.cfg.camera.max_payload_bytes
        return [rec.outcome(batch.engine.model_id, now, max_bytes) for rec in batch.records]

    def tap(self, batch: Batch, done: Sequence[bool]) -> None:
        """Hand the published records to each tap; a tap's failure is counted and logged, never the batch's."""
        if not self.taps:
            return
        records = [r for r, ok in zip(batch.records, done, strict=True) if ok]
        for tap in self.taps:
            try:
                tap.finished(records, batch.engine)
            except Exception as exc:
                self.accounting.tap_failed(type(tap).__name__, exc)

    def close(self) -> None:
        """The decode pool and the taps (after the threads that use them have ended)."""
        self.decoder.close()
        for tap in self.taps:
            with contextlib.suppress(Exception):
                tap.close()


def from_config(config: Config, streams: object | None = None, health: Health | None = None,
                metrics: Metrics | None = None, notifier: Notifier | None = None, taps: Sequence[Tap] = ()) -> Worker:
    """Load the engine named by the config and wire a worker to Redis (or to `streams`, e.g. MemoryStreams),
    with `taps` and those the config turns on (capture). With Redis, waits up to redis.startup_wait_s for it (one
    clear error after that)."""
    from inspector.worker import Worker

    engine = load_engine(config)
    created = None
    try:
        check_compatible(engine, None, config)
        if config.engine.require_gate and (why := engines.gate_refusal(engine.backend.manifest.raw)) is not None:
            log.warning("engine %s serves from the start although %s; a swap to such an engine would be refused "
                        "(engine.require_gate)", engine.model_id, why)
        if engine.backend.input_shape != (config.camera.height, config.camera.width):
            log.warning("engine expects %dx%d frames, camera config says %dx%d: frames of the camera size will be "
                        "rejected", *engine.backend.input_shape, config.camera.height, config.camera.width)
        if streams is None:
            from inspector.io.acl import feature_probes
            from inspector.io.redis_streams import RedisStreams

            # the check at start covers the capture and preview taps' commands too (their own connections)
            streams = created = RedisStreams(config.redis, config.camera, probes=feature_probes(config))
            created.wait_ready(config.redis.startup_wait_s)
        from inspector import capture
        from inspector.io.memory import MemoryStreams

        on_redis = not isinstance(streams, MemoryStreams)  # the taps' own Redis connections, or in-memory twins
        taps = [*taps, *capture.taps(config, metrics, redis=on_redis), *preview.taps(config, redis=on_redis)]
    except BaseException:
        engine.backend.close()
        if created is not None:
            created.close()
        raise
    pipe = Worker(streams, streams, engine, config, Stats(metrics=metrics), health, notifier,  # type: ignore[arg-type]
                  taps=taps)
    if config.engine.shadow:
        from inspector.shadow import ShadowTap

        try:
            pipe.taps.append(ShadowTap(config, lambda: pipe.stats.stage_s["infer"], metrics))
        except BaseException:
            pipe.close()
            raise
    return pipe


def _scores(probs: torch.Tensor, presence: torch.Tensor | None) -> np.ndarray:
    """Per frame and class: presence (the max pixel probability without a presence head) and max pixel probability;
    one reduction on the engine's device and one small copy per batch."""
    peak = probs.float().amax(dim=(2, 3))
    head = peak if presence is None else presence.float().reshape(peak.shape)
    return torch.stack([head, peak], dim=-1).cpu().numpy()


__all__ = ["Batch", "FrameRecord", "Pipeline", "from_config"]
