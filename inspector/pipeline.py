"""The worker, wired from its stages:

    source (Redis XREADGROUP) -> batch (size or deadline) -> decode (into a staging slot) -> stage (H2D)
        -> engine (backend.infer) -> post-process (threshold, components, RLE) -> events (fenced XADD + XACK)

`run()` drives it with two threads: the producer reads, decodes, stages and launches the engine; the
consumer post-processes and publishes, so the engine on batch k overlaps the post-processing of batch k-1
(and on CUDA, decoding batch k+1). `step()` does one batch end to end in the caller's thread, for tests.
Every frame read gets exactly one event: malformed or too often redelivered frames become rejected events and
dead letters; nothing is acked without its event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import torch

from inspector import engines
from inspector.backends import Backend, EngineOutput, create
from inspector.batching import Batcher
from inspector.config import Config
from inspector.decode import decode_into
from inspector.errors import DecodeError, SourceError
from inspector.io import Entry, EventSink, FrameSource, Outcome
from inspector.postprocess import PostprocessParams, analyse
from inspector.protocol import Defect, Event, FrameMessage, identity, parse_frame
from inspector.staging import Slot, StagingRing
from inspector.stats import Stats

log = logging.getLogger(__name__)

BACKOFF_S = (0.1, 5.0)  # first and largest wait between attempts when Redis is unreachable


@dataclass
class Batch:
    entries: list[Entry]
    messages: dict[int, FrameMessage] = field(default_factory=dict)  # entry index -> decoded message
    slots: list[int] = field(default_factory=list)  # entry index of each staged frame, in slot order
    rejected: dict[int, str] = field(default_factory=dict)  # entry index -> error
    slot: Slot | None = None
    output: EngineOutput | None = None
    infer_events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None  # CUDA: engine start/end markers


class Pipeline:
    def __init__(self, source: FrameSource, sink: EventSink, backend: Backend, params: PostprocessParams,
                 config: Config, stats: Stats | None = None, clock: Callable[[], float] = time.time) -> None:
        self.source, self.sink, self.backend, self.params, self.cfg = source, sink, backend, params, config
        self.stats = stats or Stats()
        self.clock = clock
        self.name = config.redis.consumer_name()
        self.batcher = Batcher(config.batching.batch_size, config.batching.max_wait_ms, config.redis.block_ms)
        height, width = backend.input_shape
        self.ring = StagingRing(config.batching.ring_depth, config.batching.batch_size, height, width,
                                backend.device)
        self._stop = threading.Event()
        self._signals = 0
        self._failure: BaseException | None = None

    # -- stages ------------------------------------------------------------------------------------------
    def _read(self) -> list[Entry]:
        t0 = time.perf_counter()
        entries = self.batcher.collect(self.source.read)
        self.stats.time("read", time.perf_counter() - t0)
        return entries

    def _prepare(self, entries: list[Entry]) -> Batch:
        """Decode into a staging slot, upload, launch the engine."""
        batch = Batch(entries)
        t0 = time.perf_counter()
        batch.slot = self.ring.acquire()
        limit = self.cfg.redis.max_deliveries
        for i, entry in enumerate(entries):
            try:
                if entry.deliveries > limit:
                    raise DecodeError(f"delivered {entry.deliveries} times without an event (limit {limit}): "
                                      "moved to dead letters")
                msg = parse_frame(entry.fields)
                decode_into(msg, batch.slot.frame(len(batch.slots)))
            except DecodeError as exc:
                batch.rejected[i] = str(exc)
                log.debug("%s: frame %s rejected: %s", self.name, entry.id, exc)
                continue
            batch.messages[i] = msg
            batch.slots.append(i)
        t1 = time.perf_counter()
        self.stats.time("decode", t1 - t0)
        if batch.slots:
            staged = self.ring.upload(batch.slot, len(batch.slots))
            t2 = time.perf_counter()
            self.stats.time("stage", t2 - t1)
            if self.backend.device.type == "cuda":
                # Asynchronous: the consumer waits on `end`, so decoding the next batch overlaps this one.
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                batch.output = self.backend.infer(staged)
                end.record()
                batch.infer_events = (start, end)
            else:
                batch.output = self.backend.infer(staged)
                self.stats.time("infer", time.perf_counter() - t2)
            self.stats.infer_frames += len(batch.slots)
        return batch

    def _finish(self, batch: Batch) -> None:
        """Post-process, build one event per entry, publish and ack (retrying while Redis is away)."""
        if batch.infer_events is not None:
            start, end = batch.infer_events
            end.synchronize()
            self.stats.time("infer", start.elapsed_time(end) / 1000.0)
        t0 = time.perf_counter()
        defects: list[list[Defect]] = []
        try:
            if batch.output is not None:
                defects = analyse(batch.output.probs, batch.output.presence, self.params)
        finally:
            if batch.slot is not None:
                self.ring.release(batch.slot)
        t1 = time.perf_counter()
        self.stats.time("postprocess", t1 - t0)
        per_entry = dict(zip(batch.slots, defects, strict=True))
        now = self.clock()
        outcomes = []
        for i, entry in enumerate(batch.entries):
            if i in batch.rejected:
                frame_id, camera, seq, ts = identity(entry.fields)
                event = Event(frame_id, camera, seq, ts, now, self.backend.model_id, "rejected", batch.rejected[i])
                outcomes.append(Outcome(entry, event.pack(), batch.rejected[i]))
                continue
            msg = batch.messages[i]
            missing = self.stats.seq(msg.camera, msg.seq)
            if missing:
                log.warning("%s: camera %s: %d frame(s) missing before seq %d (never reached the stream)",
                            self.name, msg.camera, missing, msg.seq)
            event = Event(msg.id, msg.camera, msg.seq, msg.ts, now, self.backend.model_id, "ok",
                          defects=per_entry[i])
            outcomes.append(Outcome(entry, event.pack()))
        done = self._publish(outcomes)
        self.stats.time("publish", time.perf_counter() - t1)
        published = [o for o, ok in zip(outcomes, done, strict=True) if ok]
        rejected = sum(1 for i in batch.rejected if done[i])
        self.stats.add(frames=len(published), ok=len(published) - rejected, rejected=rejected,
                       dead_lettered=rejected, batches=1, fenced_out=len(outcomes) - len(published),
                       defects=sum(len(per_entry.get(i, ())) for i, ok in enumerate(done) if ok))
        for i, ok in enumerate(done):
            if ok and i in batch.messages and batch.messages[i].ts > 0:
                self.stats.published(batch.messages[i].ts, now)
        if len(published) < len(outcomes):
            log.info("%s: %d event(s) refused by the fence (frames claimed by another consumer)", self.name,
                     len(outcomes) - len(published))

    def _publish(self, outcomes: list[Outcome]) -> list[bool]:
        wait = BACKOFF_S[0]
        while True:
            try:
                return self.sink.publish(outcomes)
            except SourceError as exc:
                if self._stop.is_set() and self._signals > 1:
                    raise
                log.warning("%s: publish failed (%s); retrying in %.1f s", self.name, exc, wait)
                self.stats.add(reconnects=1)
                time.sleep(wait)
                wait = min(wait * 2, BACKOFF_S[1])

    # -- drivers -----------------------------------------------------------------------------------------
    def step(self) -> int:
        """One batch end to end in this thread; returns the number of entries handled (0 = idle)."""
        self.backend.activate()
        entries = self._read()
        if entries:
            self._finish(self._prepare(entries))
        return len(entries)

    def stop(self) -> None:
        """Warm stop: finish the batches in flight, publish, ack, return."""
        self._stop.set()

    def run(self, burst: bool = False, max_batches: int | None = None, handle_signals: bool = True,
            report_every_s: float = 5.0) -> Stats:
        """Run until stop() / SIGTERM (or, with burst, until the source has nothing new)."""
        if handle_signals:
            self._install_signals()
        if not self._signals:
            self._stop.clear()  # run() may be called again after a burst
        self.backend.activate()
        log.info("%s: running %s on %s (batch %d, max wait %.0f ms)", self.name, self.backend.model_id,
                 self.backend.device, self.cfg.batching.batch_size, self.cfg.batching.max_wait_ms)
        handoff: queue.Queue[Batch | None] = queue.Queue(maxsize=max(1, self.cfg.batching.ring_depth - 1))
        producer = threading.Thread(target=self._guard, args=(self._produce, handoff, burst, max_batches),
                                    name="producer", daemon=True)
        consumer = threading.Thread(target=self._guard, args=(self._consume, handoff), name="consumer",
                                    daemon=True)
        producer.start()
        consumer.start()
        next_report = time.monotonic() + report_every_s
        try:
            while consumer.is_alive():
                consumer.join(timeout=0.2)
                if time.monotonic() >= next_report:
                    self.sink.report(self.stats.snapshot())
                    log.info("%s: %s", self.name, self.stats.line())
                    next_report = time.monotonic() + report_every_s
        finally:
            self._stop.set()
            deadline = time.monotonic() + 30
            while producer.is_alive() and time.monotonic() < deadline:  # unblock a producer left waiting
                with contextlib.suppress(queue.Empty):
                    left = handoff.get_nowait()
                    if left is not None and left.slot is not None:
                        self.ring.release(left.slot)  # its frames stay pending: re-read on restart
                producer.join(timeout=0.1)
            self.sink.report(self.stats.snapshot())
            log.info("%s: stopped: %s", self.name, self.stats.line())
        if self._failure is not None:
            raise self._failure
        return self.stats

    def _guard(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        except BaseException as exc:  # a dying thread must stop the other and surface in run()
            log.exception("%s: %s thread failed", self.name, threading.current_thread().name)
            self._failure = exc
            self._stop.set()

    def _produce(self, handoff: queue.Queue[Batch | None], burst: bool, max_batches: int | None) -> None:
        batches = 0
        wait = BACKOFF_S[0]
        try:
            while not self._stop.is_set() and (max_batches is None or batches < max_batches):
                try:
                    entries = self._read()
                except SourceError as exc:
                    log.warning("%s: %s; retrying in %.1f s", self.name, exc, wait)
                    self.stats.add(reconnects=1)
                    self.source.recover()
                    self._stop.wait(wait)
                    wait = min(wait * 2, BACKOFF_S[1])
                    continue
                wait = BACKOFF_S[0]
                if not entries:
                    if burst:
                        break
                    continue
                handoff.put(self._prepare(entries))
                batches += 1
        finally:
            handoff.put(None)

    def _consume(self, handoff: queue.Queue[Batch | None]) -> None:
        while (batch := handoff.get()) is not None:
            self._finish(batch)

    def _install_signals(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals == 1:
                log.info("%s: %s: finishing the batches in flight (send again to exit at once)", self.name,
                         signal.Signals(signum).name)
                self._stop.set()
            else:
                log.warning("%s: second signal: exiting now; unfinished frames stay pending and are re-read "
                            "on restart", self.name)
                os._exit(128 + signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)



def from_config(config: Config, streams: object | None = None) -> Pipeline:
    """Load the engine named by the config and wire a pipeline to Redis (or to `streams`, e.g. MemoryStreams)."""
    engine = engines.load(config.engine.path)
    backend = create(engine, config.engine.backend, config.engine.device, config.engine.threads, config.engine.fp16)
    if (engine.manifest.height, engine.manifest.width) != (config.camera.height, config.camera.width):
        log.warning("engine expects %dx%d frames, camera config says %dx%d: frames of the camera size will be "
                    "rejected", engine.manifest.height, engine.manifest.width, config.camera.height,
                    config.camera.width)
    params = PostprocessParams.resolve(config.postprocess, engine.manifest.postprocess)
    if streams is None:
        from inspector.io.redis_streams import RedisStreams

        streams = RedisStreams(config.redis)
    return Pipeline(streams, streams, backend, params, config)  # type: ignore[arg-type]
