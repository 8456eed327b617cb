"""The wire format shared with cameras and downstream systems, in one place (README "Protocol").

Frames stream entry: exactly one field `f` = msgpack map {id, camera, seq, ts, height, width, encoding, data}, and
optionally {coil, pos_mm}: where on the strip the frame's row 0 is (the line service places defects with them).
Events stream entry: one field `e` = msgpack map {v, frame_id, entry_id, camera, seq, ts, done_ts, model, status,
error, coil, pos_mm, defects: [{class_id, rle, area, score, components: [[x, y, w, h, area], ...]}]}; with
capture.evidence on, each defect also has `evidence`: per component, the crop's path under capture.folder or null.
Dead-letter entry: the frame entry's original fields plus `error`, `source_id`, `consumer`, `deliveries`.

Everything a camera sends is checked here before any decoding: sizes, types and ranges, so a hostile entry costs
a few comparisons and becomes one rejected event, never an exception that ends the worker.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack

from inspector.errors import DecodeError, describe

PROTOCOL_VERSION = 2  # 2: frames may carry coil and pos_mm, events echo both (null when absent)
FRAME_FIELD = b"f"
EVENT_FIELD = b"e"
ENCODINGS = ("gray8", "jpeg", "png")
MAX_SEQ = 2**53  # seq must be an integer in [0, 2**53): exact in every JSON / Lua / float consumer
MAX_ID_CHARS = 256
MAX_CAMERA_CHARS = 128
MAX_COIL_CHARS = 64
MAX_DEAD_FIELDS = 64  # an entry with more fields is dead-lettered as one packed `fields` value
DEAD_LETTER_KEYS = (b"error", b"source_id", b"consumer", b"deliveries", b"fields", b"truncated")  # added by us
# The most field/value items one dead letter can have (the original fields, at most MAX_DEAD_FIELDS, plus ours):
# PUBLISH refuses an outcome that claims more, so its Lua never unpacks an unbounded list onto its stack.
MAX_DEAD_ITEMS = 2 * (MAX_DEAD_FIELDS + len(DEAD_LETTER_KEYS))
_TYPES = {"id": str, "camera": str, "seq": int, "ts": (int, float), "height": int, "width": int,
          "encoding": str, "data": bytes}


@dataclass(frozen=True)
class FrameMessage:
    """One camera frame as it travels on the frames stream."""

    id: str
    camera: str
    seq: int
    ts: float  # capture time, unix seconds
    height: int
    width: int
    encoding: str  # gray8 | jpeg | png
    data: bytes
    coil: str | None = None  # the coil id from the mill's tracking, 1..MAX_COIL_CHARS characters
    pos_mm: float | None = None  # strip length position of row 0, from the coil's head end, >= 0

    def pack(self) -> bytes:
        body = {"id": self.id, "camera": self.camera, "seq": self.seq, "ts": self.ts, "height": self.height,
                "width": self.width, "encoding": self.encoding, "data": self.data}
        body.update({k: v for k, v in (("coil", self.coil), ("pos_mm", self.pos_mm)) if v is not None})
        return msgpack.packb(body, use_bin_type=True)


@dataclass
class Defect:
    """One class with a non-empty mask in one frame."""

    class_id: int  # 1..4
    rle: str
    area: int
    score: float  # mean probability over the mask's pixels
    components: list[list[int]]  # [x, y, w, h, area], sorted
    evidence: list[str | None] | None = None  # parallel to components: crop path under capture.folder, or None

    def as_dict(self) -> dict[str, Any]:
        body = {"class_id": self.class_id, "rle": self.rle, "area": self.area, "score": self.score,
                "components": self.components}
        if self.evidence is not None:
            body["evidence"] = self.evidence
        return body


@dataclass
class Event:
    """Exactly one per frame, accepted or rejected."""

    frame_id: str
    entry_id: str  # the frames-stream entry it answers (matches its dead letter's source_id)
    camera: str
    seq: int  # -1 when the frame carried no valid seq
    ts: float  # 0.0 when the frame carried no valid capture time
    done_ts: float
    model: str
    status: str  # ok | rejected
    error: str | None = None
    defects: list[Defect] = field(default_factory=list)
    coil: str | None = None  # echoed from the frame (None: absent or invalid)
    pos_mm: float | None = None

    def pack(self) -> bytes:
        body: dict[str, Any] = {"v": PROTOCOL_VERSION, "frame_id": self.frame_id, "entry_id": self.entry_id,
                                "camera": self.camera, "seq": self.seq, "ts": self.ts, "done_ts": self.done_ts,
                                "model": self.model, "status": self.status, "coil": self.coil,
                                "pos_mm": self.pos_mm, "defects": [d.as_dict() for d in self.defects]}
        if self.error is not None:
            body["error"] = self.error
        return msgpack.packb(body, use_bin_type=True)


def unpack_event(payload: bytes) -> dict[str, Any]:
    """Read an event entry's `e` field (for consumers, tests and the demo's live summary)."""
    return msgpack.unpackb(payload, raw=False)


def _name(key: bytes | str) -> str:
    """A field name as repr, so an empty, blank or binary name is visible: 'f', ' ', b'\\xff', '' (an empty name)."""
    if isinstance(key, bytes):
        with contextlib.suppress(UnicodeDecodeError):  # shown as text when it is text, else as bytes
            key = key.decode()
    text = repr(key)
    if not key:
        return f"{text} (an empty name)"
    return text if len(text) <= 40 else text[:37] + "..."


def _unpack(payload: bytes, max_bytes: int) -> Any:
    """msgpack with every length bounded by the payload limit: a 20-byte header cannot ask for gigabytes."""
    return msgpack.unpackb(payload, raw=False, strict_map_key=False, max_bin_len=max_bytes, max_str_len=max_bytes,
                           max_array_len=1024, max_map_len=64, max_ext_len=1024)


def parse_frame(fields: dict[bytes, bytes] | None, max_payload_bytes: int = 4_000_000) -> FrameMessage:
    """Validate a frames-stream entry and return its message; DecodeError says what is wrong."""
    if fields is None:
        raise DecodeError("entry was deleted from the frames stream while pending (its fields are gone)")
    if set(fields) != {FRAME_FIELD}:
        names = ", ".join(_name(k) for k in list(fields)[:5]) + (", ..." if len(fields) > 5 else "")
        raise DecodeError(f"entry must have exactly one field 'f', got {len(fields)} field(s)"
                          + (f": {names}" if fields else ""))
    payload = fields[FRAME_FIELD]
    if len(payload) > max_payload_bytes:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds camera.max_payload_bytes ({max_payload_bytes})")
    try:
        body = _unpack(payload, max_payload_bytes)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"field 'f' is not msgpack: {describe(exc, 120)}") from None
    if not isinstance(body, dict):
        raise DecodeError(f"field 'f' must be a msgpack map, got {type(body).__name__}")
    for key, kind in _TYPES.items():
        if key not in body:
            raise DecodeError(f"frame is missing key '{key}'")
        if not isinstance(body[key], kind) or isinstance(body[key], bool):
            raise DecodeError(f"frame key '{key}' has type {type(body[key]).__name__}, expected "
                              f"{'number' if key == 'ts' else kind.__name__}")  # type: ignore[union-attr]
    _check_ranges(body)
    coil, pos_mm = _placement(body, strict=True)
    return FrameMessage(**{k: body[k] for k in _TYPES}, coil=coil, pos_mm=pos_mm)


def _placement(body: dict[str, Any], strict: bool) -> tuple[str | None, float | None]:
    """The optional (coil, pos_mm) of a frame map; strict: DecodeError on a bad one, else None for it."""
    coil, pos = body.get("coil"), body.get("pos_mm")
    problem = None
    if coil is not None and not (isinstance(coil, str) and 1 <= len(coil) <= MAX_COIL_CHARS):
        problem = (f"frame key 'coil' must be a string of 1..{MAX_COIL_CHARS} characters, got "
                   + (f"{len(coil)} characters" if isinstance(coil, str) else type(coil).__name__))
        coil = None
    if pos is not None and (isinstance(pos, bool) or not isinstance(pos, int | float)
                            or not (math.isfinite(pos) and pos >= 0)):
        problem = problem or ("frame key 'pos_mm' must be a finite number >= 0, got "
                              + (repr(pos)[:40] if isinstance(pos, int | float) else type(pos).__name__))
        pos = None
    if strict and problem:
        raise DecodeError(problem)
    return coil, None if pos is None else float(pos)


def placement(fields: dict[bytes, bytes] | None, max_payload_bytes: int = 4_000_000) -> tuple[str | None,
                                                                                             float | None]:
    """Best-effort (coil, pos_mm) of a possibly malformed entry, for its rejected event: None for each one that
    is missing, mistyped or out of range."""
    body = _best_effort(fields, max_payload_bytes)
    return _placement(body, strict=False)


def _check_ranges(body: dict[str, Any]) -> None:
    if not 1 <= len(body["id"]) <= MAX_ID_CHARS:
        raise DecodeError(f"frame id must have 1..{MAX_ID_CHARS} characters, got {len(body['id'])}")
    if not 1 <= len(body["camera"]) <= MAX_CAMERA_CHARS:
        raise DecodeError(f"camera name must have 1..{MAX_CAMERA_CHARS} characters, got {len(body['camera'])}")
    if not 0 <= body["seq"] < MAX_SEQ:
        raise DecodeError(f"seq {body['seq']} is outside 0..2**53-1")
    ts = body["ts"]
    if not (math.isfinite(ts) and ts >= 0):
        raise DecodeError(f"ts {ts} is not a capture time (finite unix seconds >= 0)")
    if body["encoding"] not in ENCODINGS:
        raise DecodeError(f"unknown encoding '{body['encoding'][:40]}': expected one of {', '.join(ENCODINGS)}")
    if not (0 < body["height"] <= 65535 and 0 < body["width"] <= 65535):
        raise DecodeError(f"frame size {body['height']}x{body['width']} is not an image size")


def identity(fields: dict[bytes, bytes] | None, max_payload_bytes: int = 4_000_000) -> tuple[str, str, int, float]:
    """Best-effort (id, camera, seq, ts) of a possibly malformed entry, for its rejected event: each value that
    is missing, mistyped or out of range becomes "", "", -1 or 0.0 (an over-long id is cut)."""
    body = _best_effort(fields, max_payload_bytes)

    def text(key: str, limit: int) -> str:
        value = body.get(key)
        return value[:limit] if isinstance(value, str) else ""

    seq = body.get("seq")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < MAX_SEQ else -1
    ts = body.get("ts")
    ts = float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts) and ts >= 0 \
        else 0.0
    return text("id", MAX_ID_CHARS), text("camera", MAX_CAMERA_CHARS), seq, ts


def _best_effort(fields: dict[bytes, bytes] | None, max_payload_bytes: int) -> dict[Any, Any]:
    """The frame map of an entry, or {} when there is none to read."""
    payload = (fields or {}).get(FRAME_FIELD, b"")
    body: Any = None
    if isinstance(payload, bytes) and len(payload) <= max_payload_bytes:
        try:
            body = _unpack(payload, max_payload_bytes)
        except Exception:
            body = None
    return body if isinstance(body, dict) else {}


def dead_letter_fields(fields: dict[bytes, bytes] | None, error: str, source_id: str, consumer: str,
                       deliveries: int, max_bytes: int) -> list[bytes]:
    """The dead-letter entry as a flat field/value list, the same for Redis and the in-memory twin.

    The original fields come first, unchanged, so the frame can be re-sent as it was. Bounds keep one hostile
    entry from costing unbounded memory or a Lua stack overflow: more than MAX_DEAD_FIELDS fields are kept as one
    msgpack map in `fields`, and a value longer than `max_bytes` is cut (its length goes to `truncated`)."""
    original = dict(fields or {})
    cut = {k: len(v) for k, v in original.items() if len(v) > max_bytes}
    original = {k: v[:max_bytes] for k, v in original.items()}
    out: list[bytes] = []
    reserved = set(DEAD_LETTER_KEYS)
    if len(original) > MAX_DEAD_FIELDS or reserved & set(original):
        packed = msgpack.packb(original, use_bin_type=True)
        if len(packed) > 4 * max_bytes:  # too big to keep whole: keep what it was made of
            packed = msgpack.packb({k: len(v) for k, v in original.items()}, use_bin_type=True)
            cut = {b"fields": len(packed)}
        out += [b"fields", packed]
    else:
        for key, value in original.items():
            out += [key, value]
    out += [b"error", error.encode(), b"source_id", source_id.encode(), b"consumer", consumer.encode(),
            b"deliveries", str(deliveries).encode()]
    if cut:
        out += [b"truncated", msgpack.packb({k: n for k, n in list(cut.items())[:MAX_DEAD_FIELDS]},
                                            use_bin_type=True)]
    return out
