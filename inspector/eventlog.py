"""`inspector events`: the events stream as a person reads it, one line per event, filtered, optionally followed.

    XREVRANGE (the last N, shown oldest first) -> filter (camera, status) -> one line each
    --follow: then XREAD BLOCK from the last id shown, until Ctrl-C

Reads only (never acks, trims or joins a group), from the CLI's one thread; what it prints is the README's events
table: frame id, camera, seq, status, the engine (`model`), and per defect class its area and mean score.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from inspector.protocol import EVENT_FIELD, unpack_event


@dataclass(frozen=True)
class Filter:
    camera: str | None = None
    status: str | None = None  # ok | rejected

    def keeps(self, event: dict[str, Any]) -> bool:
        return ((self.camera is None or event.get("camera") == self.camera)
                and (self.status is None or event.get("status") == self.status))


def _decoded(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for entry_id, fields in entries:
        eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        try:
            yield eid, unpack_event(fields[EVENT_FIELD])
        except Exception as exc:  # a foreign or damaged entry is shown, never fatal
            yield eid, {"status": "unreadable", "error": f"{type(exc).__name__}: {exc}"}


def last(client: Any, key: str, count: int, keep: Filter, scan: int = 1000) -> list[tuple[str, dict[str, Any]]]:
    """The last `count` events that pass `keep`, oldest first; looks back `scan` entries at a time."""
    found: list[tuple[str, dict[str, Any]]] = []
    upper = "+"
    while len(found) < count:
        page = client.xrevrange(key, max=upper, min="-", count=scan)
        if not page:
            break
        found += [(eid, ev) for eid, ev in _decoded(page) if keep.keeps(ev)]
        oldest = page[-1][0].decode() if isinstance(page[-1][0], bytes) else page[-1][0]
        upper = "(" + oldest
        if len(page) < scan:
            break
    return list(reversed(found[:count]))


def follow(client: Any, key: str, after: str, keep: Filter, block_ms: int = 1000,
           stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[str, dict[str, Any]]]:
    """Events added after entry `after` ("$": from now), as they come."""
    cursor = after
    while not stop():
        reply = client.xread({key: cursor}, block=block_ms, count=100)
        for _, entries in reply or []:
            for eid, event in _decoded(entries):
                cursor = eid
                if keep.keeps(event):
                    yield eid, event


def line(entry_id: str, event: dict[str, Any]) -> str:
    """One event as one line: time, camera, frame id, seq, status, engine, then each defect class."""
    done = event.get("done_ts") or 0.0
    when = time.strftime("%H:%M:%S", time.localtime(done)) + f".{int(done * 1000) % 1000:03d}" if done else "-"
    head = (f"{when}  {event.get('camera') or '-'}  {event.get('frame_id') or '-'}  seq {event.get('seq', '-')}  "
            f"{event.get('status') or '-'}")
    if event.get("status") != "ok":
        return f"{head}  {event.get('error') or ''}  (entry {entry_id})"
    defects = event.get("defects") or []
    what = ", ".join(f"class {d['class_id']}: {d['area']} px in {len(d.get('components') or [])} part(s), score "
                     f"{d['score']:.2f}" for d in defects) or "no defect"
    where = f"  coil {event['coil']} at {event['pos_mm']:.0f} mm" if event.get("coil") else ""
    return f"{head}  {what}  [{event.get('model', '?')}]{where}"
