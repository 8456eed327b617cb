"""The runner of the pipeline's stages: `step()` for one batch in the caller's thread (tests, bench warm-up),
`run()` for the service, `stop()` for a warm stop, `close()` on every exit path.

`run()` drives the stages (inspector.pipeline) with two threads and a supervisor:

    producer    health beat; swap.switch() before each read; pipeline.read (retried while Redis is away);
                pipeline.prepare (decode, stage, launch the engine); hand-off queue -> consumer
    consumer    pipeline.finish (post-process, outcomes); publish (retried; a warm stop gives up after
                worker.stop_timeout_s, the frames stay pending); accounting.batch; pipeline.tap; swap.retire
    supervisor  the calling thread: Redis heartbeat, systemd watchdog and status, probes (health.redis_*, the
                gauges), the stats report, swap.due() -> swap.load_in_background() (the engine-loader thread)
    signals     SIGTERM / SIGINT: first a warm stop (`_stop`), then exit at once; SIGHUP: swap.request_reload()

so the engine on batch k overlaps the post-processing of batch k-1. Who owns what:

    _stop, _abort       threading.Events: set by stop(), the signal handler, a dying thread and run()'s end;
                        read by the producer's loop and the publish retry
    _signals            the signal handler only (it runs on the main thread)
    _failure            the first thread to die writes it (under _lock), run() raises it after the threads end
    _running            run() only (reset_stats() refuses while it is set)
    the engine          serving.EngineSwap (its docstring); `engine` reads it under the swap's lock
    counts and logs     accounting.Accounting (one lock)
    stage state         pipeline.Pipeline (the producer's and the consumer's parts never overlap)

Settings: the runner's own come from the config's `worker:` section (cfg.worker.stop_timeout_s); the rest of
the config it reads only to wire and pace what it drives (batching.ring_depth sizes the hand-off, the supervisor
keeps metrics.report_every_s and engine.watch_every_s).

Retry has one policy, here: capped exponential backoff (redis-py's ExponentialBackoff, as the coils service and
the Redis client use), from BACKOFF_S[0] up to BACKOFF_S[1], counted in `reconnects` and logged by accounting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from redis.backoff import ExponentialBackoff

from inspector.accounting import Accounting
from inspector.batching import split_isolated
from inspector.config import Config
from inspector.errors import SourceRefused, SourceUnavailable
from inspector.health import Health
from inspector.io import EventSink, FrameSource, Outcome, Published
from inspector.metrics import Metrics
from inspector.notify import Notifier
from inspector.pipeline import Batch, Pipeline
from inspector.serving import ActiveEngine, EngineSwap
from inspector.stats import Stats
from inspector.taps import Tap

log = logging.getLogger(__name__)

BACKOFF_S = (0.1, 5.0)  # first and largest wait between attempts while Redis is away
PROBE_EVERY_S = 2.0  # lag / pending / readiness sampling
_BACKOFF = ExponentialBackoff(cap=BACKOFF_S[1], base=BACKOFF_S[0])


def backoff_s(failures: int) -> float:
    """The wait before the next attempt after `failures` failures in a row (0: the first failure)."""
    return _BACKOFF.compute(failures)


@dataclass
class Retire:
    """Handed to the consumer after the last batch of an engine that was swapped out."""

    engine: ActiveEngine


class Worker:
    def __init__(self, source: FrameSource, sink: EventSink, engine: ActiveEngine, config: Config,
                 stats: Stats | None = None, health: Health | None = None, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.time, taps: Sequence[Tap] = ()) -> None:
        self.source, self.sink, self.cfg = source, sink, config
        self.name = source.name
        self.health = health or Health(config.metrics.live_timeout_s)
        self.notifier = notifier or Notifier({})
        self.accounting = Accounting(self.name, config.camera.max_clock_skew_s, stats)
        self.pipeline = Pipeline(config, engine.backend.device, engine.backend.input_shape, source.block_ms,
                                 self.accounting, taps, clock)
        self.swap = EngineSwap(engine, config, self.accounting, self.name, self.pipeline.streams.use_device)
        self._stop = threading.Event()
        self._abort = threading.Event()  # second signal: stop waiting for anything
        self._signals = 0
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._running = False

    # -- what callers read -------------------------------------------------------------------------------
    @property
    def engine(self) -> ActiveEngine:
        """The engine in service now."""
        return self.swap.current

    @property
    def stats(self) -> Stats:
        return self.accounting.stats

    @property
    def taps(self) -> list[Tap]:
        return self.pipeline.taps

    @taps.setter
    def taps(self, taps: Sequence[Tap]) -> None:  # before run() / step(): the consumer reads the list
        self.pipeline.taps = list(taps)

    @property
    def post_why(self) -> str:
        return self.pipeline.post_why

    def reset_stats(self, metrics: Metrics | None = None) -> Stats:
        """Counts and timings from zero (bench, between its warm-up and the timed runs); not while running."""
        if self._running:
            raise RuntimeError("reset_stats() while run() is running: the threads are counting")
        return self.accounting.restart(metrics)

    def request_reload(self) -> None:
        """Load engine.path anew (SIGHUP, or it now points elsewhere), check it, switch between two batches."""
        self.swap.request_reload()

    # -- the runner's own step: publish, retried --------------------------------------------------------
    def _publish(self, outcomes: list[Outcome], beat: str) -> Published | SourceUnavailable:
        """Publish, retrying while Redis is away; during a warm stop give up after worker.stop_timeout_s and
        return the last error (the frames stay pending and are re-read on restart). SourceRefused is not retried."""
        failures = 0
        give_up: float | None = None
        while True:
            try:
                return self.sink.publish(outcomes)
            except SourceUnavailable as exc:
                self.health.beat(beat)  # waiting on Redis is not a hang
                if self._stop.is_set():
                    give_up = give_up or time.monotonic() + self.cfg.worker.stop_timeout_s
                    if time.monotonic() >= give_up or self._abort.is_set():
                        return exc
                wait = backoff_s(failures)
                self.accounting.retrying("publish", exc, wait, BACKOFF_S[1], first=failures == 0)
                self._abort.wait(wait)
                failures += 1

    def _finish(self, batch: Batch, beat: str) -> SourceUnavailable | None:
        """Finish, publish, account and tap one batch; the error a warm stop gave up on, or None when published."""
        outcomes = self.pipeline.finish(batch)
        t0 = time.perf_counter()
        result = self._publish(outcomes, beat)
        if isinstance(result, SourceUnavailable):
            return result
        self.accounting.timed("publish", time.perf_counter() - t0)
        self.accounting.batch(batch.records, outcomes, result, batch.engine.model_id, batch.done_ts)
        self.pipeline.tap(batch, result.done)
        return None

    # -- drivers -----------------------------------------------------------------------------------------
    def step(self) -> int:
        """One batch end to end in this thread; returns the number of entries handled (0 = idle)."""
        self.engine.backend.activate()
        folder = self.swap.due()
        if folder is not None:
            self.swap.load(folder)
        old = self.swap.switch()
        if old is not None:
            self.swap.retire(old)
        entries = self.pipeline.read(self.source)
        for group in split_isolated(entries):
            self._finish(self.pipeline.prepare(group, self.engine), "consumer")
        return len(entries)

    def stop(self) -> None:
        """Warm stop: finish the batches in flight, publish, ack, return."""
        self._stop.set()

    def run(self, burst: bool = False, max_batches: int | None = None, handle_signals: bool = True) -> Stats:
        """Run until stop() / SIGTERM (or, with burst, until the source has nothing new)."""
        previous = self._install_signals() if handle_signals else {}
        if not self._signals:
            self._stop.clear()  # run() may be called again after a burst
        engine = self.engine
        engine.backend.activate()
        self.health.engine_loaded = True
        self.accounting.engine_in_service(engine)
        b = engine.backend
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
        self._running = True
        try:
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
        finally:
            self._running = producer.is_alive() or consumer.is_alive()
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
                    folder = self.swap.due()
                    if folder is not None:
                        self.swap.load_in_background(folder)

    def _probe(self) -> None:
        state = self.source.probe()
        self.health.redis_ok = state.reachable and state.group_exists
        self.health.redis_error = state.error
        m = self.accounting.metrics
        if m is not None:
            m.redis_up.set(1 if state.reachable else 0)
            m.ready.set(1 if self.health.ready()[0] else 0)
            for gauge, value in ((m.lag, state.lag), (m.pending, state.pending), (m.stream_length, state.length)):
                if value is not None:
                    gauge.set(value)

    def _drain(self, producer: threading.Thread, handoff: queue.Queue[Batch | Retire | None]) -> None:
        """Unblock a producer left waiting on a full hand-off: its batches stay pending, re-read on restart."""
        deadline = time.monotonic() + self.cfg.worker.stop_timeout_s + 5
        while producer.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                left = handoff.get_nowait()
                if isinstance(left, Retire):
                    self.swap.retire(left.engine)
            producer.join(timeout=0.1)

    def _guard(self, who: str, target: Callable[..., None], *args: object) -> None:
        self.pipeline.streams.use_device()
        try:
            target(*args)
        except BaseException as exc:  # a dying thread must stop the other and surface in run()
            if isinstance(exc, SourceRefused):
                log.error("%s: %s", self.name, exc)
            else:
                log.exception("%s: %s thread failed", self.name, who)
            with self._lock:
                if self._failure is None:
                    self._failure = exc
            self._stop.set()

    def _produce(self, handoff: queue.Queue[Batch | Retire | None], burst: bool, max_batches: int | None) -> None:
        batches = 0
        failures = 0
        try:
            while not self._stop.is_set() and (max_batches is None or batches < max_batches):
                self.health.beat("producer")
                old = self.swap.switch()
                if old is not None:
                    handoff.put(Retire(old))
                try:
                    entries = self.pipeline.read(self.source)
                except SourceUnavailable as exc:
                    wait = backoff_s(failures)
                    self.accounting.retrying("read", exc, wait, BACKOFF_S[1], first=failures == 0)
                    self.source.recover()
                    self._stop.wait(wait)
                    failures += 1
                    continue
                failures = 0
                if not entries:
                    if burst:
                        break
                    continue
                for group in split_isolated(entries):
                    batch = self.pipeline.prepare(group, self.engine)
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
                self.swap.retire(item.engine)
                continue
            gave_up = self._finish(item, "consumer")
            if gave_up is not None:
                left = 1 + sum(isinstance(x, Batch) for x in list(handoff.queue))
                log.warning("%s: warm stop: Redis still away after %g s (%s): %d batch(es) left pending, re-read on "
                            "restart", self.name, self.cfg.worker.stop_timeout_s, gave_up, left)
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
        """Release the engine(s), the decode pool, the taps and the source's connections (every exit path)."""
        self.swap.close()
        self.pipeline.close()
        self.source.close()
        self.notifier.close()


__all__ = ["BACKOFF_S", "Worker", "backoff_s"]
