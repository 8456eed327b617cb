"""Events in, records out: what one event contributes to its coil, in the compact form the state stores.

A record is what the report needs of one frame and nothing more: the event's stream time, the camera, the frame's
strip position, whether it was inspected (ok) and its components as flat ints (class_id, x, y, w, h, area per
component, camera pixels). Stored as a 4-byte big-endian length and a msgpack array, appended to the coil's log
string by the fold script; `decode_log` reads a whole log back. About 6 bytes per small component and 20 per
frame (benchmarks/coils.py measures it).

The events stream is input like any other: every key is checked here (types, ranges, sizes) and a bad event is
acked with a reason, never an exception. Pure functions; the service's loop thread calls them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import msgpack

from inspector.errors import describe
from inspector.protocol import EVENT_FIELD, MAX_CAMERA_CHARS, MAX_COIL_CHARS

STORE, UNKNOWN_CAMERA, UNPLACED, ACK = "store", "unknown_camera", "unplaced", "ack"
MAX_EVENT_BYTES = 16_000_000
MAX_PX = 65_535
_HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class Folding:
    """What to do with one events-stream entry: store a record in `coil`, count it there, or only ack it."""

    entry_id: str
    ms: int  # the entry's stream time (Redis server clock, ms)
    kind: str  # STORE | UNKNOWN_CAMERA | UNPLACED | ACK
    coil: str | None = None
    camera: str = ""
    record: bytes = b""
    reason: str | None = None  # ACK of a bad event: what is wrong with it ("no coil" is not bad)


@dataclass(frozen=True)
class Record:
    ms: int
    camera: str
    pos_mm: float
    ok: bool
    comps: tuple[int, ...]  # class_id, x, y, w, h, area, class_id, ...

    def sort_key(self) -> tuple[Any, ...]:
        """Order by content only (never by stream time): replays with other entry ids sort the same."""
        return self.camera, self.pos_mm, self.ok, self.comps


def entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def parse(entry_id: str, fields: dict[bytes, bytes] | None, cameras: Container[str]) -> Folding:
    """One events-stream entry as a Folding; never raises on its content."""
    ms = entry_ms(entry_id)
    try:
        event = _event(fields)
        coil = event.get("coil")
        if coil is None:
            return Folding(entry_id, ms, ACK)
        if not isinstance(coil, str) or not 1 <= len(coil) <= MAX_COIL_CHARS:
            raise ValueError(f"coil must be a string of 1..{MAX_COIL_CHARS} characters")
        camera = event.get("camera")
        if not isinstance(camera, str) or not 1 <= len(camera) <= MAX_CAMERA_CHARS:
            raise ValueError(f"camera must be a string of 1..{MAX_CAMERA_CHARS} characters")
        status = event.get("status")
        if status not in ("ok", "rejected"):
            raise ValueError(f"status must be ok or rejected, got {str(status)[:20]!r}")
        pos = event.get("pos_mm")
        if camera not in cameras:
            return Folding(entry_id, ms, UNKNOWN_CAMERA, coil, camera)
        if pos is None:
            return Folding(entry_id, ms, UNPLACED, coil, camera)
        if isinstance(pos, bool) or not isinstance(pos, int | float) or not (math.isfinite(pos) and pos >= 0):
            raise ValueError("pos_mm must be a finite number >= 0")
        comps = _components(event.get("defects")) if status == "ok" else []
        body = msgpack.packb([ms, camera, float(pos), status == "ok", comps], use_bin_type=True)
        return Folding(entry_id, ms, STORE, coil, camera, _HEADER.pack(len(body)) + body)
    except ValueError as exc:
        return Folding(entry_id, ms, ACK, reason=str(exc))


def _event(fields: dict[bytes, bytes] | None) -> dict[str, Any]:
    payload = (fields or {}).get(EVENT_FIELD)
    if not isinstance(payload, bytes) or len(payload) > MAX_EVENT_BYTES:
        raise ValueError(f"entry must have a field 'e' of at most {MAX_EVENT_BYTES} bytes")
    try:
        event = msgpack.unpackb(payload, raw=False, strict_map_key=False, max_bin_len=MAX_EVENT_BYTES,
                                max_str_len=MAX_EVENT_BYTES, max_array_len=1_000_000, max_map_len=64)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"field 'e' is not msgpack: {describe(exc, 120)}") from None
    if not isinstance(event, dict):
        raise ValueError("field 'e' must be a msgpack map")
    return event


def _components(defects: Any) -> list[int]:
    """The event's components as flat ints, checked: class_id 1..4, x, y, w, h, area in 0..65535."""
    if not isinstance(defects, list):
        raise ValueError("defects must be a list")
    flat: list[int] = []
    for d in defects:
        if not isinstance(d, dict):
            raise ValueError("each defect must be a map")
        cls, comps = d.get("class_id"), d.get("components")
        if isinstance(cls, bool) or not isinstance(cls, int) or not 1 <= cls <= 4:
            raise ValueError("defect class_id must be 1..4")
        if not isinstance(comps, list):
            raise ValueError("defect components must be a list")
        for c in comps:
            if not (isinstance(c, list) and len(c) == 5
                    and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_PX * MAX_PX
                            for v in c) and max(c[:4]) <= MAX_PX):
                raise ValueError("each component must be [x, y, w, h, area] of ints in range")
            flat += [cls, *c]
    return flat


def decode_log(blob: bytes) -> list[Record]:
    """Every record of a coil's log, sorted by content (the fold order is anyone's)."""
    out: list[Record] = []
    view, i = memoryview(blob), 0
    while i + _HEADER.size <= len(blob):
        (n,) = _HEADER.unpack_from(view, i)
        ms, camera, pos, ok, comps = msgpack.unpackb(view[i + _HEADER.size:i + _HEADER.size + n], raw=False)
        out.append(Record(ms, camera, pos, ok, tuple(comps)))
        i += _HEADER.size + n
    out.sort(key=Record.sort_key)
    return out


COIL_END_FIELD = b"c"


def parse_end(fields: dict[bytes, bytes] | None) -> tuple[str, float | None]:
    """A coil-ends entry's (coil, length_mm or None); ValueError says what is wrong with a bad one."""
    payload = (fields or {}).get(COIL_END_FIELD)
    if not isinstance(payload, bytes) or len(payload) > 4096:
        raise ValueError("entry must have a field 'c' of at most 4096 bytes")
    try:
        body = msgpack.unpackb(payload, raw=False, max_str_len=4096, max_bin_len=4096, max_array_len=64,
                               max_map_len=64)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"field 'c' is not msgpack: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise ValueError("field 'c' must be a msgpack map {coil, length_mm}")
    coil, length = body.get("coil"), body.get("length_mm")
    if not isinstance(coil, str) or not 1 <= len(coil) <= MAX_COIL_CHARS:
        raise ValueError(f"coil must be a string of 1..{MAX_COIL_CHARS} characters")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int | float)
                               or not (math.isfinite(length) and length >= 0)):
        raise ValueError("length_mm must be a finite number >= 0")
    return coil, None if length is None else float(length)


def pack_end(coil: str, length_mm: float | None) -> dict[bytes, bytes]:
    """A coil-ends entry, as the tracking system sends it (demo, tests, benchmarks)."""
    return {COIL_END_FIELD: msgpack.packb({"coil": coil, "length_mm": length_mm}, use_bin_type=True)}
