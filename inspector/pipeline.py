"""The worker, wired from its stages:

    source (Redis XREADGROUP) -> batch (size or deadline) -> decode (pool, into a pinned staging slot)
        -> stage (H2D, copy stream) -> engine (engine stream) -> post-process (post stream: threshold,
        components, RLE) -> events (one fenced Lua call: XADD events + dead letters + XACK + seq gaps + trim)

`run()` drives it with two threads and a supervisor: the producer reads, decodes, stages and launches the engine;
the consumer post-processes and publishes, so the engine on batch k overlaps the post-processing of batch k-1;
the calling thread supervises (Redis heartbeat, systemd watchdog and status, stats, probes, engine swaps).
`step()` does one batch end to end in the caller's thread, for tests.

Every frame read gets exactly one event: malformed frames become rejected events and dead letters, and nothing is
acked without its event. A batch is a list of `FrameRecord`s, one per entry, read top to bottom.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np
import torch

from inspector import engines, preview
from inspector.backends import EngineOutput
from inspector.batching import Batcher, split_isolated
from inspector.capture.names import annotate
from inspector.config import Config
from inspector.decode import DecodePool
from inspector.errors import ConfigError, DecodeError, EngineError, SourceRefused, SourceUnavailable
from inspector.health import Health
from inspector.io import Entry, EventSink, FrameSource, Outcome, Published
from inspector.metrics import Metrics
from inspector.notify import Notifier
from inspector.postprocess import analyse, prepare
from inspector.protocol import Defect, Event, FrameMessage, identity, parse_frame, placement
from inspector.serving import ActiveEngine, check_compatible, check_gate, load_engine
from inspector.staging import Slot, StagingRing
from inspector.stats import Stats
from inspector.streams import DeviceStreams
from inspector.taps import Tap

log = logging.getLogger(__name__)

BACKOFF_S = (0.1, 5.0)  # first and largest wait between attempts while Redis is away
PROBE_EVERY_S = 2.0  # lag / pending / readiness sampling


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


@dataclass
class Retire:
    """Handed to the consumer after the last batch of an engine that was swapped out."""

    engine: ActiveEngine


class _GiveUp(Exception):
    """A warm stop ran out of time while Redis was away: the batch stays pending."""


class Pipeline:
    def __init__(self, source: FrameSource, sink: EventSink, engine: ActiveEngine, config: Config,
                 stats: Stats | None = None, health: Health | None = None, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.time, taps: Sequence[Tap] = ()) -> None:
        self.source, self.sink, self.engine, self.cfg = source, sink, engine, config
        self.taps = list(taps)  # consumer thread only (finished), closed by close()
        self.stats = stats or Stats()
        self.health = health or Health(config.metrics.live_timeout_s)
        self.notifier = notifier or Notifier({})
        self.clock = clock
        self.name = source.name
        self.batcher = Batcher(config.batching.batch_size, config.batching.max_wait_ms, source.block_ms)
        device = engine.backend.device
        height, width = engine.backend.input_shape
        self.ring = StagingRing(config.batching.ring_depth, config.batching.batch_size, height, width, device)
        self.streams = DeviceStreams(device)
        self.decoder = DecodePool(config.batching.decode_threads)
        self.post_why = prepare(device, config.batching.decode_threads)  # pool size, labeller: for the start-up line
        self._stop = threading.Event()
        self._abort = threading.Event()  # second signal: stop waiting for anything
        self._signals = 0
        self._failure: BaseException | None = None
        self._next: ActiveEngine | None = None  # loaded and checked, switched in before the next batch
        self._swap_lock = threading.Lock()
        self._reload = threading.Event()  # SIGHUP
        self._loading: threading.Thread | None = None
        self._refused: Path | None = None
        self._logged: dict[str, float] = {}

    # -- producer stages ---------------------------------------------------------------------------------
    def _read(self) -> list[Entry]:
        t0 = time.perf_counter()
        entries = self.batcher.collect(self.source.read)
        self.stats.time("read", time.perf_counter() - t0)
        return entries

    def _prepare(self, entries: list[Entry]) -> Batch:
        """Parse and decode into a staging slot, upload, launch the engine; rejects are marked, never raised."""
        batch = Batch([FrameRecord(e) for e in entries], self.engine)
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
                rec.error = f"frame cannot be parsed: {type(exc).__name__}: {str(exc)[:160]}"
        todo = [r for r in batch.records if r.error is None]
        if not todo:
            self.stats.time("decode", time.perf_counter() - t0)
            return batch
        slot = self.ring.acquire()
        errors = self.decoder.decode([r.message for r in todo], [slot.frame(i) for i in range(len(todo))])
        for rec, error in zip(todo, errors, strict=True):
            rec.error = error
        rows = [i for i, error in enumerate(errors) if error is None]
        slot.compact(rows)
        batch.staged = [todo[i] for i in rows]
        t1 = time.perf_counter()
        self.stats.time("decode", t1 - t0)
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
        self.stats.time("stage", time.perf_counter() - t0)  # the enqueue of the copy (CPU: a view)
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
            self.stats.inferred(n, time.perf_counter() - t0)

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
                self.stats.inferred(len(batch.staged), start.elapsed_time(done) / 1000.0)
        self.stats.time("postprocess", time.perf_counter() - t0)
        for rec, found in zip(batch.staged, defects, strict=True):
            rec.defects = found
        batch.output = None  # free the device memory now, not when the batch object goes

    def _finish(self, batch: Batch) -> None:
        """Post-process, then one event per record, published and acked together, then the counts."""
        self._postprocess(batch)
        if self.cfg.capture.enabled and self.cfg.capture.evidence:  # crop paths travel in the event (capture/)
            for rec in batch.staged:
                m = rec.message
                annotate(m.id, m.ts, rec.defects, self.cfg.capture.evidence_per_frame)  # type: ignore[union-attr]
        now = self.clock()
        max_bytes = self.cfg.camera.max_payload_bytes
        outcomes = [rec.outcome(batch.engine.model_id, now, max_bytes) for rec in batch.records]
        t0 = time.perf_counter()
        result = self._publish(outcomes)
        self.stats.time("publish", time.perf_counter() - t0)
        self._account(batch, outcomes, result, now)
        if self.taps:
            self._tap([r for r, ok in zip(batch.records, result.done, strict=True) if ok], batch.engine)

    def _tap(self, records: list[FrameRecord], engine: ActiveEngine) -> None:
        """Hand the published records to each tap; a tap's failure is counted and logged, never the batch's."""
        for tap in self.taps:
            try:
                tap.finished(records, engine)
            except Exception as exc:
                self.stats.add(tap_errors=1)
                if self._due(f"tap-{type(tap).__name__}"):
                    log.warning("%s: %s failed (%s: %s); events are unaffected (at most once a second, all counted "
                                "in tap_errors)", self.name, type(tap).__name__, type(exc).__name__,
                                str(exc) or "no message")

    def _account(self, batch: Batch, outcomes: list[Outcome], result: Published, now: float) -> None:
        done = result.done
        records = [r for r, ok in zip(batch.records, done, strict=True) if ok]
        rejected = [r for r in records if r.error is not None]
        for r in rejected:
            log.debug("%s: frame %s rejected: %s", self.name, r.entry.id, r.error)
        self.stats.add(frames=len(records), ok=len(records) - len(rejected), rejected=len(rejected),
                       dead_lettered=len(rejected), batches=1, fenced_out=len(done) - len(records),
                       event_bytes=sum(len(o.event) for o, ok in zip(outcomes, done, strict=True) if ok))
        self.stats.defects([d.class_id for r in records for d in r.defects])
        ok = [r for r in records if r.error is None]
        self.stats.inspected(batch.engine.model_id, len(ok),
                             collections.Counter(c for r in ok for c in {d.class_id for d in r.defects}))
        skew = self.cfg.camera.max_clock_skew_s
        implausible = 0
        for r in records:
            if r.error is None and r.message is not None:
                if abs(now - r.message.ts) <= skew:
                    self.stats.published(r.message.ts, now)
                else:
                    implausible += 1
        if implausible:
            self.stats.add(implausible_ts=implausible)
            log.debug("%s: %d frame(s) with a capture time over %g s from this clock: not in latency figures",
                      self.name, implausible, skew)
        gaps = [g for g in result.gaps if g.kind == "gap"]
        resets = [g for g in result.gaps if g.kind == "reset"]
        self.stats.add(seq_gaps=sum(g.missing for g in gaps), seq_resets=len(resets))
        for g in gaps[:1] if self._due("gap") else []:  # a broken camera must not flood the journal: counted
            log.warning("%s: camera %s: %d frame(s) missing between seq %d and %d (never reached the stream; "
                        "more lines like this at most once a second, all counted in seq_gaps)", self.name, g.camera,
                        g.missing, g.after, g.before)
        for g in resets[:1] if self._due("reset") else []:
            log.warning("%s: camera %s: seq went from %d to %d (camera restart or implausible jump): not a gap "
                        "(at most once a second, all counted in seq_resets)", self.name, g.camera, g.after, g.before)
        if len(records) < len(done):
            log.info("%s: %d event(s) refused by the fence (their frames were claimed by another worker after "
                     "this one stopped heartbeating)", self.name, len(done) - len(records))

    def _due(self, kind: str, every_s: float = 1.0) -> bool:
        """True at most once every `every_s` per kind of log line."""
        now = time.monotonic()
        if now - self._logged.get(kind, -every_s) < every_s:
            return False
        self._logged[kind] = now
        return True

    def _publish(self, outcomes: list[Outcome]) -> Published:
        """Publish, retrying while Redis is away; during a warm stop give up after metrics.stop_timeout_s (the
        frames stay pending and are re-read on restart). SourceRefused is not retried."""
        wait = BACKOFF_S[0]
        give_up: float | None = None
        while True:
            try:
                return self.sink.publish(outcomes)
            except SourceUnavailable as exc:
                self.health.beat("consumer")  # waiting on Redis is not a hang
                if self._stop.is_set():
                    give_up = give_up or time.monotonic() + self.cfg.metrics.stop_timeout_s
                    if time.monotonic() >= give_up or self._abort.is_set():
                        raise _GiveUp(str(exc)) from None
                self._retrying("publish", exc, wait)
                self._abort.wait(wait)
                wait = min(wait * 2, BACKOFF_S[1])

    def _retrying(self, what: str, exc: Exception, wait: float) -> None:
        self.stats.add(reconnects=1)
        if self._due(what, 30.0) or wait == BACKOFF_S[0]:  # the first failure of an outage, then every 30 s
            log.warning("%s: %s failed: %s; retrying (backoff now %.1f s, at most 5 s; counted in reconnects)",
                        self.name, what, exc, wait)

    # -- engine swap -------------------------------------------------------------------------------------
    def request_reload(self) -> None:
        """Load engine.path anew (SIGHUP, or it now points elsewhere), check it, switch between two batches."""
        self._reload.set()

    def _maybe_load(self) -> None:
        if (self._loading is not None and self._loading.is_alive()) or self._next is not None:
            return  # one load at a time, and a loaded engine is switched in before the next is looked at
        target = Path(self.cfg.engine.path).resolve()
        if not self._reload.is_set() and (not self.cfg.engine.watch or target in (self.engine.folder, self._refused)):
            return
        self._reload.clear()
        if target == self.engine.folder:
            log.info("%s: %s is already the engine in service", self.name, target)
            return
        self._loading = threading.Thread(target=self._load_next, args=(target,), name="engine-loader", daemon=True)
        self._loading.start()

    def _load_next(self, folder: Path) -> None:
        self.streams.use_device()
        try:
            candidate = load_engine(self.cfg, folder)
            try:
                check_compatible(candidate, self.engine, self.cfg)
                check_gate(candidate, self.cfg)
            except EngineError:
                candidate.backend.close()
                raise
        except (EngineError, ConfigError, OSError) as exc:
            self.stats.add(engine_swaps_refused=1)
            self._refused = folder  # not tried again until it changes or SIGHUP asks
            log.error("%s: new engine %s refused, %s keeps serving: %s (fix it, then `systemctl reload inspector` "
                      "or point engines/current elsewhere)", self.name, folder, self.engine.model_id, exc)
            return
        with self._swap_lock:
            self._next = candidate
        log.info("%s: engine %s loaded and checked; switching before the next batch", self.name, candidate.model_id)

    def _swap(self) -> ActiveEngine | None:
        """Switch to the loaded engine; returns the one to retire after its last batch."""
        with self._swap_lock:
            if self._next is None:
                return None
            old, self.engine, self._next = self.engine, self._next, None
        self.stats.add(engine_swaps=1)
        if self.stats.metrics is not None:
            b = self.engine.backend
            self.stats.metrics.engine(b.model_id, b.name, str(b.device), b.manifest.versions)
        log.info("%s: engine %s in service (was %s)", self.name, self.engine.model_id, old.model_id)
        return old

    # -- drivers -----------------------------------------------------------------------------------------
    def step(self) -> int:
        """One batch end to end in this thread; returns the number of entries handled (0 = idle)."""
        self.engine.backend.activate()
        self._maybe_load()
        if self._loading is not None:
            self._loading.join()
        old = self._swap()
        if old is not None:
            old.backend.close()
        entries = self._read()
        for group in split_isolated(entries):
            self._finish(self._prepare(group))
        return len(entries)

    def stop(self) -> None:
        """Warm stop: finish the batches in flight, publish, ack, return."""
        self._stop.set()

    def run(self, burst: bool = False, max_batches: int | None = None, handle_signals: bool = True) -> Stats:
        """Run until stop() / SIGTERM (or, with burst, until the source has nothing new)."""
        previous = self._install_signals() if handle_signals else {}
        if not self._signals:
            self._stop.clear()  # run() may be called again after a burst
        self.engine.backend.activate()
        self.health.engine_loaded = True
        b = self.engine.backend
        if self.stats.metrics is not None:
            self.stats.metrics.engine(b.model_id, b.name, str(b.device), b.manifest.versions)
        log.info("%s: running %s on %s %s (%s; batch %d, max wait %.0f ms; %s)", self.name, b.model_id, b.name,
                 b.device, b.why or "as configured", self.cfg.batching.batch_size, self.cfg.batching.max_wait_ms,
                 self.post_why)
        handoff: queue.Queue[Batch | Retire | None] = queue.Queue(maxsize=max(1, self.cfg.batching.ring_depth - 1))
        producer = threading.Thread(target=self._guard, args=("producer", self._produce, handoff, burst,
                                                              max_batches), name="producer", daemon=True)
        consumer = threading.Thread(target=self._guard, args=("consumer", self._consume, handoff), name="consumer",
                                    daemon=True)
        for who in ("producer", "consumer"):
            self.health.beat(who)
        producer.start()
        consumer.start()
        self._probe()
        self.notifier.ready(f"serving {b.model_id} on {b.name} {b.device}")
        try:
            self._supervise(consumer)
        finally:
            self._stop.set()
            self.notifier.stopping()
            self._drain(producer, handoff)
            self.health.forget("producer")
            self.health.forget("consumer")
            self.sink.report(self.stats.snapshot())
            log.info("%s: stopped: %s", self.name, self.stats.line())
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self._failure is not None:
            raise self._failure
        return self.stats

    def _supervise(self, consumer: threading.Thread) -> None:
        """The calling thread's loop while the workers run: heartbeat, watchdog, probes, stats, engine swaps."""
        cfg = self.cfg
        due = dict.fromkeys(("beat", "watchdog", "probe", "report", "watch"), 0.0)
        every = {"beat": self.source.heartbeat_every_s, "watchdog": self.notifier.watchdog_every_s or 1e9,
                 "probe": PROBE_EVERY_S, "report": cfg.metrics.report_every_s, "watch": cfg.engine.watch_every_s}
        due["report"] = time.monotonic() + every["report"]
        while consumer.is_alive():
            consumer.join(timeout=0.1)
            now = time.monotonic()
            live, why = self.health.live()
            for task, at in due.items():
                if now < at:
                    continue
                due[task] = now + every[task]
                if task == "beat" and live:
                    with contextlib.suppress(SourceUnavailable, SourceRefused):
                        self.source.heartbeat()
                elif task == "watchdog":
                    if live:
                        self.notifier.watchdog()
                    else:
                        log.error("%s: %s: watchdog pings stopped", self.name, why)
                elif task == "probe":
                    self._probe()
                elif task == "report":
                    self.sink.report(self.stats.snapshot())
                    line = self.stats.line()
                    log.info("%s: %s", self.name, line)
                    self.notifier.status(line)
                elif task == "watch":
                    self._maybe_load()

    def _probe(self) -> None:
        state = self.source.probe()
        self.health.redis_ok = state.reachable and state.group_exists
        self.health.redis_error = state.error
        m = self.stats.metrics
        if m is not None:
            m.redis_up.set(1 if state.reachable else 0)
            m.ready.set(1 if self.health.ready()[0] else 0)
            for gauge, value in ((m.lag, state.lag), (m.pending, state.pending), (m.stream_length, state.length)):
                if value is not None:
                    gauge.set(value)

    def _drain(self, producer: threading.Thread, handoff: queue.Queue[Batch | Retire | None]) -> None:
        """Unblock a producer left waiting on a full hand-off: its batches stay pending, re-read on restart."""
        deadline = time.monotonic() + self.cfg.metrics.stop_timeout_s + 5
        while producer.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                left = handoff.get_nowait()
                if isinstance(left, Retire):
                    left.engine.backend.close()
            producer.join(timeout=0.1)

    def _guard(self, who: str, target: Callable[..., None], *args: object) -> None:
        self.streams.use_device()
        try:
            target(*args)
        except BaseException as exc:  # a dying thread must stop the other and surface in run()
            if isinstance(exc, SourceRefused):
                log.error("%s: %s", self.name, exc)
            else:
                log.exception("%s: %s thread failed", self.name, who)
            self._failure = exc
            self._stop.set()

    def _produce(self, handoff: queue.Queue[Batch | Retire | None], burst: bool, max_batches: int | None) -> None:
        batches = 0
        wait = BACKOFF_S[0]
        try:
            while not self._stop.is_set() and (max_batches is None or batches < max_batches):
                self.health.beat("producer")
                old = self._swap()
                if old is not None:
                    handoff.put(Retire(old))
                try:
                    entries = self._read()
                except SourceUnavailable as exc:
                    self._retrying("read", exc, wait)
                    self.source.recover()
                    self._stop.wait(wait)
                    wait = min(wait * 2, BACKOFF_S[1])
                    continue
                wait = BACKOFF_S[0]
                if not entries:
                    if burst:
                        break
                    continue
                for group in split_isolated(entries):
                    batch = self._prepare(group)
                    while True:  # beat while waiting for the consumer, so a slow consumer is not a hung producer
                        try:
                            handoff.put(batch, timeout=1.0)
                            break
                        except queue.Full:
                            self.health.beat("producer")
                    batches += 1
        finally:
            handoff.put(None)

    def _consume(self, handoff: queue.Queue[Batch | Retire | None]) -> None:
        while True:
            self.health.beat("consumer")
            try:
                item = handoff.get(timeout=1.0)
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, Retire):
                item.engine.backend.close()
                log.info("%s: engine %s released", self.name, item.engine.model_id)
                continue
            try:
                self._finish(item)
            except _GiveUp as exc:
                left = 1 + sum(isinstance(x, Batch) for x in list(handoff.queue))
                log.warning("%s: warm stop: Redis still away after %g s (%s): %d batch(es) left pending, re-read on "
                            "restart", self.name, self.cfg.metrics.stop_timeout_s, exc, left)
                return

    def _install_signals(self) -> dict[int, object]:
        """SIGTERM / SIGINT: warm stop (twice: exit now); SIGHUP: reload the engine. Returns what they were."""

        def on_stop(signum: int, _frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals == 1:
                log.info("%s: %s: finishing the batches in flight (send again to exit at once)", self.name,
                         signal.Signals(signum).name)
                self._stop.set()
            else:
                self._abort.set()
                log.warning("%s: second signal: exiting now; unfinished frames stay pending and are re-read "
                            "on restart: %s", self.name, self.stats.line())
                with contextlib.suppress(Exception):
                    self.sink.report(self.stats.snapshot())
                os._exit(128 + signum)

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            log.info("%s: SIGHUP: reloading %s", self.name, self.cfg.engine.path)
            self.request_reload()

        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        return previous

    def close(self) -> None:
        """Release the engine(s), the decode pool and the source's connections (every exit path calls this)."""
        self.engine.backend.close()
        with self._swap_lock:
            if self._next is not None:
                self._next.backend.close()
                self._next = None
        self.decoder.close()
        for tap in self.taps:
            with contextlib.suppress(Exception):
                tap.close()
        self.source.close()
        self.notifier.close()


def from_config(config: Config, streams: object | None = None, health: Health | None = None,
                metrics: Metrics | None = None, notifier: Notifier | None = None, taps: Sequence[Tap] = ()) -> Pipeline:
    """Load the engine named by the config and wire a pipeline to Redis (or to `streams`, e.g. MemoryStreams),
    with `taps` and those the config turns on (capture). With Redis, waits up to redis.startup_wait_s for it (one
    clear error after that)."""
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
    pipe = Pipeline(streams, streams, engine, config, Stats(metrics=metrics), health, notifier,  # type: ignore[arg-type]
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
