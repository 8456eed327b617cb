"""What the operator's screen shows, read from Redis each round, and the alarms that reading fires and clears.

    poll()  previews (GET per camera)  -> the latest JPEG and what it shows
            events stream (XREAD from where the last round stopped) -> each camera's last event, the last defects
            coils service's state (cameras hash, the current coil's meta + the new tail of its log, GETRANGE)
                -> report.build on the coil so far: strip map data, running grade, counts, coverage, roll marks
            workers (heartbeat keys, stats hashes, XINFO GROUPS) -> ready, lag, fps
            coils stream (XREVRANGE) -> the last reports
            alarms.evaluate -> AlarmBook -> each transition written once (ALARM script: HSETNX / HDEL on the active
                hash, XADD MAXLEN ~ on the alarms stream, atomically: two screens never fire one alarm twice)

A LineView belongs to one thread (the screen's poll thread): it keeps the cursor on the events stream, the
current coil's log so far and the alarm book. `poll()` returns a Snapshot: immutable JSON-ready data plus the
preview JPEGs, handed to the web and OPC UA side whole. Cost per round: a few small reads, plus report.build over
the current coil when its log grew (linear in its records; a coil's log is capped by coils.max_coil_bytes).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from inspector import alarms, preview
from inspector.alarms import AlarmBook, Facts, Transition
from inspector.config import CLASS_KEYS, SURFACES, Config
from inspector.io.keys import line_key
from inspector.line import report
from inspector.line.keys import LineKeys as CoilKeys
from inspector.line.store import CoilState
from inspector.protocol import EVENT_FIELD

log = logging.getLogger(__name__)
MAX_EVENTS_PER_ROUND = 5000  # events read per round at most (the rest next round): a round stays bounded
MAX_BOXES = 4000  # strip-map boxes sent to the page at most (the largest kept)
SEED_EVENTS = 200  # at start: the last defects are taken from this many newest events
MAX_CAMERAS = 256  # camera names tracked at most (for their last event and the silent-camera rule)

ALARM = r"""#!lua
-- KEYS: active hash, alarms stream. ARGV: fired|cleared, id, text, entry (msgpack), maxlen
-- A transition is written once whoever writes it: fired only if the id was not active, cleared only if it was.
local changed
if ARGV[1] == 'fired' then
  changed = redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
else
  changed = redis.call('HDEL', KEYS[1], ARGV[2])
end
if changed == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'a', ARGV[4])
end
return changed
"""


def alarms_key(cfg: Config) -> str:
    return cfg.alarms.key or line_key(cfg.redis.line, "alarms")


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Snapshot:
    """One round's picture of the line: `data` is what the page and OPC UA read, `previews` the JPEGs."""

    data: dict[str, Any]
    previews: dict[str, bytes] = field(default_factory=dict)
    transitions: tuple[Transition, ...] = ()


class LineView:
    def __init__(self, cfg: Config, client: Any, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.client, self.clock = cfg, client, clock
        self.keys, self.coil_keys = cfg.redis.keys(), CoilKeys.from_config(cfg)
        self.preview_prefix, self.alarms_key = preview.prefix(cfg), alarms_key(cfg)
        self.active_key = f"{self.alarms_key}:active"
        self._alarm = client.register_script(ALARM)
        self.started = clock()
        self.cursor: str | None = None  # events stream position
        self.last_seen: dict[str, float] = {}
        self.last_event_ts: float | None = None
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=cfg.screen.defects_shown)
        self.coil: str | None = None
        self.coil_log = b""
        self.coil_meta: dict[str, str] = {}
        self.coil_data: dict[str, Any] = {}
        self.coil_facts: dict[str, Any] = {}
        self._built_at: tuple[str | None, int, str] = (None, -1, "")
        self.fps: dict[str, tuple[float, float, float]] = {}  # consumer -> (uptime_s, frames, fps) last seen
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=30)
        self.book: AlarmBook | None = None  # loaded from the active hash on the first round that reaches Redis

    # -- one round ---------------------------------------------------------------------------------------
    def poll(self) -> Snapshot:
        now = self.clock()
        if self.book is None:
            self.book = AlarmBook(self._active(), {r.name: r.clear_after_s for r in self.cfg.alarms.rules})
            for _id, fields in reversed(self.client.xrevrange(self.alarms_key, count=self.history.maxlen)):
                with contextlib.suppress(Exception):  # the log so far, as a restarted screen shows it
                    self.history.append(msgpack.unpackb(fields[b"a"], raw=False))
        previews, cams = self._previews()
        self._events()
        self._current_coil()
        workers = self._workers()
        reports = self._reports()
        live = sum(1 for w in workers if w["ready"])
        transitions = self._alarms(now, live)
        book = self.book
        cameras = sorted({*self.cfg.line.cameras, *cams, *self.last_seen})
        data = {
            "line": self.cfg.redis.line, "ts": now,
            "cameras": [{"name": c, "surface": getattr(self.cfg.line.cameras.get(c), "surface", None),
                         "last_event_ts": self.last_seen.get(c), "preview": cams.get(c)} for c in cameras],
            "coil": self.coil_data, "defects": list(self.recent)[::-1], "workers": workers, "reports": reports,
            "alarms": [{"id": i, "rule": rule, "text": text} for i, (rule, text) in sorted(book.active.items())],
            "alarm_log": list(self.history)[::-1], "last_event_ts": self.last_event_ts,
        }
        return Snapshot(data, previews, tuple(transitions))

    # -- previews ----------------------------------------------------------------------------------------
    def _previews(self) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
        names = sorted(self.cfg.line.cameras)
        if not names:  # no placement configured: whatever cameras have a preview (bounded SCAN)
            n = len(self.preview_prefix) + 1
            names = sorted({_text(k)[n:] for k in self.client.scan_iter(match=_glob(self.preview_prefix) + ":*",
                                                                         count=200)})[:64]
        values = [self.client.get(f"{self.preview_prefix}:{name}") for name in names] if names else []
        jpegs, meta = {}, {}
        for name, value in zip(names, values, strict=True):
            if not value:
                continue
            try:
                body = msgpack.unpackb(value, raw=False)
                jpegs[name] = body.pop("jpeg")
            except Exception:  # a foreign value under our key: shown as no preview
                continue
            meta[name] = {k: body.get(k) for k in ("seq", "ts", "coil", "pos_mm", "classes", "width", "height")}
        return jpegs, meta

    # -- events ------------------------------------------------------------------------------------------
    def _events(self) -> None:
        if self.cursor is None:
            newest = self.client.xrevrange(self.keys.events, count=SEED_EVENTS)
            self.cursor = _text(newest[0][0]) if newest else "0-0"
            for entry_id, fields in reversed(newest):
                self._event(_text(entry_id), fields)
            return
        reply = self.client.xread({self.keys.events: self.cursor}, count=MAX_EVENTS_PER_ROUND)
        read = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.cursor = _text(entry_id)
                self._event(self.cursor, fields)
                read += 1
        if read == MAX_EVENTS_PER_ROUND:  # faster than a round can read: jump to now rather than fall behind
            newest = self.client.xrevrange(self.keys.events, count=1)
            self.cursor = _text(newest[0][0]) if newest else self.cursor

    def _event(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            ev = msgpack.unpackb(fields[EVENT_FIELD], raw=False)
            camera, done = str(ev["camera"])[:128], float(ev["done_ts"])
        except Exception:  # the line service counts bad events; the screen only skips them
            return
        if camera in self.last_seen or len(self.last_seen) < MAX_CAMERAS:  # camera names are input
            self.last_seen[camera] = max(done, self.last_seen.get(camera, 0.0))
        self.last_event_ts = max(done, self.last_event_ts or 0.0)
        for d in ev.get("defects") or []:
            comps = d.get("components") or []
            evidence = [p for p in (d.get("evidence") or []) if isinstance(p, str)]
            x, y, w, h, _a = comps[0] if comps else (0, 0, 0, 0, 0)
            self.recent.append({"camera": camera, "coil": ev.get("coil"), "pos_mm": ev.get("pos_mm"), "ts": done,
                                "class_id": d.get("class_id"), "area_px": d.get("area"), "parts": len(comps),
                                "score": round(float(d.get("score") or 0), 3), "box": [x, y, w, h],
                                "evidence": evidence[:4], "entry_id": entry_id})

    # -- the current coil --------------------------------------------------------------------------------
    def _current_coil(self) -> None:
        newest = self.client.hgetall(self.coil_keys.cameras)  # camera -> '<entry id> <coil>'
        best = max((tuple(map(int, _text(v).split(" ", 1)[0].split("-"))), _text(v).split(" ", 1)[1])
                   for v in newest.values()) if newest else None
        coil = best[1] if best else None
        if coil != self.coil:
            self.coil, self.coil_log, self._built_at = coil, b"", (None, -1, "")
        if coil is None:
            self.coil_data, self.coil_facts = {}, {}
            return
        meta = {_text(k): _text(v) for k, v in self.client.hgetall(self.coil_keys.meta(coil)).items()}
        tail = self.client.getrange(self.coil_keys.log(coil), len(self.coil_log), -1)
        if tail:
            self.coil_log += tail
        if meta:
            self.coil_meta = meta
        if self._built_at == (coil, len(self.coil_log), self.coil_meta.get("v", "")):
            return
        self._built_at = (coil, len(self.coil_log), self.coil_meta.get("v", ""))
        self._build(CoilState(coil, dict(self.coil_meta), self.coil_log))

    def _build(self, state: CoilState) -> None:
        meta = dict(state.meta)
        meta.pop("end_ms", None)  # the live picture: every event counts, the length is how far frames reach
        meta.pop("length_mm", None)
        rep = report.build(CoilState(state.coil, meta, state.log), self.cfg, "live")
        s = rep.summary
        boxes = sorted(rep.defects, key=lambda d: -d.area_mm2)[:MAX_BOXES]
        self.coil_data = {
            "coil": state.coil, "status": state.meta.get("status", "open"), "length_mm": s["length_mm"],
            "grade": s["grade"], "decided_by": s["decided_by"], "defects": s["defects"], "coverage": s["coverage"],
            "gaps_mm": s["gaps_mm"], "periodic": s["periodic"], "cameras": rep.cameras, "surfaces": list(SURFACES),
            "boxes": [[d.class_id, SURFACES.index(d.surface), round(d.x0, 1), round(d.x1, 1), round(d.y0, 1),
                       round(d.y1, 1), round(d.area_mm2, 1)] for d in boxes],
            "boxes_left_out": len(rep.defects) - len(boxes),
        }
        self.coil_facts = {"defects": rep.defects, "findings": rep.findings, "coverage": s["coverage"],
                           "length_mm": s["length_mm"]}

    # -- workers and reports -----------------------------------------------------------------------------
    def _workers(self) -> list[dict[str, Any]]:
        alive_prefix = self.keys.alive("")
        alive = {_text(k)[len(alive_prefix):] for k in self.client.scan_iter(match=_glob(alive_prefix) + "*",
                                                                               count=200)}
        stats_prefix = self.keys.stats("")
        names = alive | {_text(k)[len(stats_prefix):] for k in
                         self.client.scan_iter(match=_glob(stats_prefix) + "*", count=200)}
        lag = pending = None
        try:
            for g in self.client.xinfo_groups(self.keys.frames):
                if _text(g["name"]) == self.keys.group:
                    lag, pending = g.get("lag"), g.get("pending")
        except Exception:  # no frames stream yet
            pass
        out = []
        for name in sorted(names)[:64]:
            stats = {_text(k): _text(v) for k, v in self.client.hgetall(self.keys.stats(name)).items()}
            out.append({"name": name, "ready": name in alive, "fps": self._fps(name, stats),
                        "frames": _num(stats.get("frames")), "latency_ms_p50": _num(stats.get("latency_ms_p50")),
                        "latency_ms_p99": _num(stats.get("latency_ms_p99")), "rejected": _num(stats.get("rejected")),
                        "lag": lag, "pending": pending})
        return out

    def _fps(self, name: str, stats: dict[str, str]) -> float | None:
        """Frames per second between the worker's last two stats reports (the hash's own fps is over its uptime)."""
        uptime, frames = _num(stats.get("uptime_s")), _num(stats.get("frames"))
        if uptime is None or frames is None or uptime <= 0:
            return None
        before = self.fps.get(name)
        if before is not None and uptime == before[0]:
            return before[2]  # no new report since the last round
        rate = (frames - before[1]) / (uptime - before[0]) if before is not None and uptime > before[0] \
            else frames / uptime
        self.fps[name] = (uptime, frames, round(rate, 2))
        return round(rate, 2)

    def _reports(self) -> list[dict[str, Any]]:
        if not self.cfg.screen.reports_shown:
            return []
        out = []
        for entry_id, fields in self.client.xrevrange(self.coil_keys.coils, count=self.cfg.screen.reports_shown):
            try:
                e = msgpack.unpackb(fields[b"c"], raw=False)
                out.append({"coil": e["coil"], "grade": e["grade"], "length_mm": e["length_mm"],
                            "defects": e["defects"], "closed_ts": e.get("closed_ts"),
                            "report": Path(str(e["report"])).name + ".html", "entry_id": _text(entry_id)})
            except Exception:  # a foreign entry: not listed
                continue
        return out

    # -- alarms ------------------------------------------------------------------------------------------
    def _active(self) -> dict[str, tuple[str, str]]:
        """The alarms active when this screen starts (so a restart neither fires nor forgets them)."""
        out = {}
        for k, v in self.client.hgetall(self.active_key).items():
            text = _text(v)
            out[_text(k)] = (text.split(":", 1)[0], text)
        return out

    def _alarms(self, now: float, live: int) -> list[Transition]:
        f = self.coil_facts
        facts = Facts(now=now, started=self.started, coil=self.coil, length_mm=f.get("length_mm", 0.0),
                      defects=f.get("defects", ()), findings=f.get("findings", ()), coverage=f.get("coverage", {}),
                      cameras=sorted(self.cfg.line.cameras), last_seen=dict(self.last_seen), workers_live=live)
        assert self.book is not None
        transitions = self.book.update(alarms.evaluate(self.cfg.alarms.rules, facts), now)
        for t in transitions:
            entry = msgpack.packb(t.as_dict(), use_bin_type=True)
            written = self._alarm(keys=[self.active_key, self.alarms_key],
                                  args=[t.state, t.id, t.text, entry, self.cfg.alarms.maxlen])
            self.history.append({**t.as_dict(), "written": bool(written)})
            log.info("alarm %s: %s", t.state, t.text)
        return transitions


def empty(line: str) -> dict[str, Any]:
    """A snapshot's data before the first successful round."""
    return {"line": line, "ts": time.time(), "cameras": [], "coil": {}, "defects": [], "workers": [], "reports": [],
            "alarms": [], "alarm_log": [], "last_event_ts": None}


def _num(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _glob(text: str) -> str:
    """`text` with SCAN's pattern characters escaped."""
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)


def counts(data: dict[str, Any]) -> dict[str, int]:
    """Defects per class on the current coil (0 when none yet), for OPC UA."""
    got = (data.get("coil") or {}).get("defects") or {}
    return {k: int(got.get(k, 0)) for k in CLASS_KEYS}


def rules_text(rules: Iterable[Any]) -> list[str]:
    return [f"{r.name} ({r.kind})" for r in rules]
