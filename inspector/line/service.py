"""`inspector coils`: the line service's loop, and everything around it an operator relies on.

    loop thread (run / step):  read events (own pending first, then stopped replicas', then new) -> parse ->
        fold + ack (one fenced Lua call) -> read coil ends -> fold them -> every coils.close_every_s: close the
        coils whose deadline has passed (report computed, entry published fenced, files written, state freed)
    supervisor thread:  heartbeat key (while the loop makes progress), systemd watchdog and STATUS=, the Redis
        probe behind /readyz, the stats hash and summary line every metrics.report_every_s
    HTTP thread (coils.metrics_address): /metrics, /healthz, /readyz

A coil closes (README "The line layer"): once its coil end has been folded and every event published before the
end + line.end_grace_s has been folded; or line.coil_idle_s after its last event once every camera that saw it
has an event of another coil; or, with --burst, when both inputs have nothing more. The loop thread owns the
store's readers, the parsing and the reports; the supervisor only writes the heartbeat, probes Redis (the same
thread-safe connection pool) and reads the stats (locked) and the health beats.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from redis.backoff import ExponentialBackoff

from inspector.config import Config, parse_address
from inspector.errors import SourceRefused, SourceUnavailable
from inspector.health import Health, app, serve
from inspector.line import records, report
from inspector.line.counters import LineMetrics, LineStats
from inspector.line.records import UNKNOWN_CAMERA
from inspector.line.store import LineStore
from inspector.notify import Notifier

log = logging.getLogger(__name__)
UNWRITTEN_AFTER_S = 30.0  # a closed coil without files this long after its close was left by a crash: rewrite


def consumer_name(cfg: Config) -> str:
    return cfg.coils.consumer or f"{socket.gethostname()}-coils-{cfg.redis.worker_id}"


class LineService:
    def __init__(self, cfg: Config, store: LineStore | None = None, stats: LineStats | None = None,
                 health: Health | None = None, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.clock = cfg, clock
        self.name = consumer_name(cfg)
        self.store = store or LineStore(cfg, self.name)
        self.stats = stats or LineStats()
        self.health = health or Health(cfg.metrics.live_timeout_s)
        self.health.engine_loaded = True  # no engine here: readiness is Redis alone
        self.notifier = notifier or Notifier({})
        self.cameras = frozenset(cfg.line.cameras)
        self._unknown_logged: set[str] = set()
        self._next_close = 0.0
        self._logged: dict[str, float] = {}
        self._stop = threading.Event()
        self._signals = 0

    # -- one round ---------------------------------------------------------------------------------------
    def step(self, block_ms: int | None = None) -> int:
        """Read and fold what is there (one batch of events, the coil ends), close what is due; returns the
        number of entries handled (0: idle)."""
        self.health.beat("loop")
        entries = self.store.read_events(self.cfg.coils.batch_size, block_ms)
        if entries:
            self._fold(entries)
        ends = self.store.read_ends(self.cfg.coils.batch_size)
        for entry_id, fields in ends:
            self._end(entry_id, fields)
        if time.monotonic() >= self._next_close:
            self._next_close = time.monotonic() + self.cfg.coils.close_every_s
            self.close_due()
            self.write_unwritten(UNWRITTEN_AFTER_S)
        return len(entries) + len(ends)

    def _fold(self, entries: list[tuple[str, dict[bytes, bytes] | None]]) -> None:
        items = [records.parse(entry_id, fields, self.cameras) for entry_id, fields in entries]
        for it in items:
            if it.kind == UNKNOWN_CAMERA:
                self.stats.unknown(it.camera)
                if it.camera not in self._unknown_logged and len(self._unknown_logged) < 1000:
                    self._unknown_logged.add(it.camera)
                    log.warning("%s: events of camera %r are not placed: it is missing from line.cameras (add it "
                                "there; counted in coils_unknown_camera_events_total, logged once per camera)",
                                self.name, it.camera[:128])
        bad = [it for it in items if it.reason]
        if bad and self._due("bad"):
            log.warning("%s: %d malformed event(s) acked without folding, e.g. %s: %s (at most once a second)",
                        self.name, len(bad), bad[0].entry_id, bad[0].reason)
        t0 = time.perf_counter()
        done = self.store.fold(items)
        if self.stats.metrics is not None:
            self.stats.metrics.fold_seconds.observe(time.perf_counter() - t0)
        self.stats.add(events=len(items), folded=done.folded, fenced_out=done.fenced_out, late=done.late,
                       dropped=done.dropped, bad_events=len(bad))
        if done.late and self._due("late"):
            log.warning("%s: %d event(s) of coils already reported: counted as late in their tombstones",
                        self.name, done.late)

    def _end(self, entry_id: str, fields: dict[bytes, bytes] | None) -> None:
        try:
            coil, length = records.parse_end(fields)
        except ValueError as exc:
            self.store.ack_end(entry_id)
            self.stats.ended("bad")
            log.warning("%s: coil end %s is malformed and was dropped: %s", self.name, entry_id, exc)
            return
        result = self.store.end(entry_id, records.entry_ms(entry_id), coil, length)
        if result == 1:
            self.stats.ended("ended")
        elif result == 2:
            self.stats.ended("late")
            log.warning("%s: coil end of %s arrived after its report (counted late_ends in its tombstone)",
                        self.name, coil)

    # -- closing -----------------------------------------------------------------------------------------
    def close_due(self, force: bool = False) -> int:
        """Close every open coil whose deadline has passed (force: every open coil); returns how many."""
        coils = self.store.open_coils()
        if self.stats.metrics is not None:
            self.stats.metrics.open.set(len(coils))
        if not coils:
            return 0
        metas, newest = self.store.metas(coils), self.store.cameras()
        now_ms, closed = int(self.clock() * 1000), 0
        for coil, meta in zip(coils, metas, strict=True):
            if meta.get("status") != "open":
                continue
            deadline: int | None
            if "end_ms" in meta:
                by, deadline = "coil-end", int(meta["end_ms"]) + int(self.cfg.line.end_grace_s * 1000)
            else:
                seen = [k[4:] for k in meta if k.startswith("cam:")]
                by, deadline = "idle", int(meta.get("last_ms", 0)) + int(self.cfg.line.coil_idle_s * 1000)
                if any(newest.get(cam) == coil for cam in seen) and not force:
                    continue  # a camera is still on this coil
            if force:
                by, deadline = ("coil-end" if by == "coil-end" else "burst"), None
            elif deadline is not None and now_ms <= deadline:
                continue
            closed += self._close(coil, by, deadline)
        return closed

    def _close(self, coil: str, by: str, deadline: int | None) -> int:
        t0 = time.perf_counter()
        try:
            state = self.store.state(coil)
            rep = report.build(state, self.cfg, by)
            self.health.beat("loop")  # a 200,000-defect coil takes seconds: progress, not a hang
            closed_ts = round(self.clock(), 3)
            rid = self.store.close(state, report.entry(rep, closed_ts), deadline, closed_ts, by)
            if not isinstance(rid, str):
                return 0  # changed meanwhile (tried again next round) or events before the deadline unfolded
            report.write_files(rep, closed_ts, rid, self.cfg)
            self.health.beat("loop")
            self.store.finish(coil)
        except (SourceUnavailable, SourceRefused):
            raise
        except Exception:  # one coil's report must not stop the line: counted, logged, tried again
            self.stats.add(report_errors=1)
            if self._due(f"report:{coil}", 60.0):
                log.exception("%s: report of coil %s failed (tried again every round)", self.name, coil)
            return 0
        seconds = time.perf_counter() - t0
        self.stats.reported(by, seconds)
        s = rep.summary
        log.info("%s: coil %s closed (%s): %.1f m, grade %s, defects %s, periodic %d, report %s (%.2f s)", self.name,
                 coil, by, s["length_mm"] / 1000, s["grade"], s["defects"], len(s["periodic"]), s["report"], seconds)
        return 1

    def write_unwritten(self, older_than_s: float = 0.0) -> int:
        """Files of coils reported but not confirmed written (a crash between the close and the files): the same
        files again, from the closed state."""
        written = 0
        for coil in self.store.unwritten():
            state = self.store.state(coil)
            if state.meta.get("status") != "closed":
                self.store.finish(coil)
                continue
            closed_ts = float(state.meta.get("closed_ts", 0))
            if self.clock() - closed_ts < older_than_s:
                continue  # probably being written by the replica that closed it
            try:
                rep = report.build(state, self.cfg, state.meta.get("closed_by", ""))
                report.write_files(rep, closed_ts, state.meta.get("report_id", ""), self.cfg)
            except (SourceUnavailable, SourceRefused):
                raise
            except Exception:  # a full disk, a bug: counted, logged, tried again
                self.stats.add(report_errors=1)
                if self._due(f"files:{coil}", 60.0):
                    log.exception("%s: files of coil %s not written (tried again every round)", self.name, coil)
                continue
            self.store.finish(coil)
            written += 1
            log.info("%s: files of coil %s written again after a restart", self.name, coil)
        return written

    def _due(self, kind: str, every_s: float = 1.0) -> bool:
        now = time.monotonic()
        if now - self._logged.get(kind, -every_s) < every_s:
            return False
        self._logged[kind] = now
        return True

    # -- drivers -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, burst: bool = False, handle_signals: bool = True) -> LineStats:
        """Until stop() / SIGTERM (with burst: until both inputs are drained, then every open coil is closed)."""
        previous: dict[int, Any] = self._install_signals() if handle_signals else {}
        self.store.wait_ready(self.cfg.redis.startup_wait_s)
        self.write_unwritten()
        supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        supervisor.start()
        self.notifier.ready(f"folding {self.store.keys.events} into coils")
        log.info("%s: folding %s into coils (%d cameras placed, %d rolls), reports on %s and in %s", self.name,
                 self.store.keys.events, len(self.cameras), len(self.cfg.line.rolls_mm), self.store.keys.coils,
                 self.cfg.coils.reports_dir)
        backoff, failures = ExponentialBackoff(cap=5.0, base=0.1), 0
        try:
            while not self._stop.is_set():
                try:
                    handled = self.step(None if burst else self.cfg.coils.block_ms)
                    failures = 0
                    if burst and not handled:
                        self.close_due(force=True)
                        self.write_unwritten()
                        break
                except SourceUnavailable as exc:
                    failures += 1
                    wait = backoff.compute(failures)
                    self.stats.add(reconnects=1)
                    self.health.beat("loop")
                    if failures == 1 or self._due("redis", 30.0):
                        log.warning("%s: %s; retrying (backoff now %.1f s, at most 5 s)", self.name, exc, wait)
                    self._stop.wait(wait)
        finally:
            self._stop.set()
            self.notifier.stopping()
            supervisor.join(timeout=5)
            self.health.forget("loop")
            self.store.report(self.stats.snapshot())
            log.info("%s: stopped: %s", self.name, self.stats.line())
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.stats

    def _supervise(self) -> None:
        cfg = self.cfg
        every = {"beat": cfg.coils.heartbeat_ttl_ms / 3000.0, "watchdog": self.notifier.watchdog_every_s or 1e9,
                 "probe": 2.0, "report": cfg.metrics.report_every_s}
        due = dict.fromkeys(every, 0.0)
        due["report"] = time.monotonic() + every["report"]
        while not self._stop.wait(0.1):
            now = time.monotonic()
            live, why = self.health.live()
            for task, at in due.items():
                if now < at:
                    continue
                due[task] = now + every[task]
                if task == "beat" and live:
                    with contextlib.suppress(SourceUnavailable, SourceRefused):
                        self.store.heartbeat()
                elif task == "watchdog":
                    if live:
                        self.notifier.watchdog()
                    else:
                        log.error("%s: %s: watchdog pings stopped", self.name, why)
                elif task == "probe":
                    up, error, lag = self.store.probe()
                    self.health.redis_ok, self.health.redis_error = up, error
                    if self.stats.metrics is not None:
                        self.stats.metrics.redis_up.set(1 if up else 0)
                        if lag is not None:
                            self.stats.metrics.lag.set(lag)
                elif task == "report":
                    self.store.report(self.stats.snapshot())
                    line = self.stats.line()
                    log.info("%s: %s", self.name, line)
                    self.notifier.status(line)

    def _install_signals(self) -> dict[int, Any]:
        """SIGTERM / SIGINT: finish the round in flight and exit (twice: exit now)."""

        def on_stop(signum: int, _frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals == 1:
                log.info("%s: %s: finishing the round in flight (send again to exit at once)", self.name,
                         signal.Signals(signum).name)
                self._stop.set()
            else:
                log.warning("%s: second signal: exiting now; what was read and not folded stays pending: %s",
                            self.name, self.stats.line())
                os._exit(128 + signum)

        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        return previous

    def close(self) -> None:
        self.store.close_connections()
        self.notifier.close()


def run(cfg: Config, burst: bool = False) -> LineStats:
    """The service with its metrics/health server and systemd notify; teardown on every exit path."""
    health = Health(cfg.metrics.live_timeout_s)
    metrics = LineMetrics() if cfg.coils.metrics_address else None
    server = serve(parse_address(cfg.coils.metrics_address, "coils.metrics_address"), app(health, metrics.wsgi())) \
        if cfg.coils.metrics_address and metrics is not None else None
    service = LineService(cfg, stats=LineStats(metrics), health=health, notifier=Notifier())
    try:
        return service.run(burst=burst)
    finally:
        service.close()
        if server is not None:
            server.shutdown()
            server.server_close()
