"""The wire format shared with cameras and downstream systems, in one place (README "Protocol").

Frames stream entry: one field `f` = msgpack map {id, camera, seq, ts, height, width, encoding, data}.
Events stream entry: one field `e` = msgpack map {frame_id, camera, seq, ts, done_ts, model, status, error,
defects: [{class_id, rle, area, score, components: [[x, y, w, h, area], ...]}]}.
Dead-letter entry: the frame entry's original fields plus `error`, `source_id`, `consumer`, `deliveries`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from inspector.errors import DecodeError

PROTOCOL_VERSION = 1
FRAME_FIELD = b"f"
EVENT_FIELD = b"e"
ENCODINGS = ("gray8", "jpeg", "png")
_REQUIRED = {"id": str, "camera": str, "seq": int, "ts": (int, float), "height": int, "width": int,
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

    def pack(self) -> bytes:
        return msgpack.packb({"id": self.id, "camera": self.camera, "seq": self.seq, "ts": self.ts,
                              "height": self.height, "width": self.width, "encoding": self.encoding,
                              "data": self.data}, use_bin_type=True)


@dataclass
class Defect:
    """One class with a non-empty mask in one frame."""

    class_id: int  # 1..4
    rle: str
    area: int
    score: float  # mean probability over the mask's pixels
    components: list[list[int]]  # [x, y, w, h, area], sorted

    def as_dict(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "rle": self.rle, "area": self.area, "score": self.score,
                "components": self.components}


@dataclass
class Event:
    """Exactly one per frame, accepted or rejected."""

    frame_id: str
    camera: str
    seq: int
    ts: float
    done_ts: float
    model: str
    status: str  # ok | rejected
    error: str | None = None
    defects: list[Defect] = field(default_factory=list)

    def pack(self) -> bytes:
        body: dict[str, Any] = {"frame_id": self.frame_id, "camera": self.camera, "seq": self.seq, "ts": self.ts,
                                "done_ts": self.done_ts, "model": self.model, "status": self.status,
                                "defects": [d.as_dict() for d in self.defects]}
        if self.error is not None:
            body["error"] = self.error
        return msgpack.packb(body, use_bin_type=True)


def unpack_event(payload: bytes) -> dict[str, Any]:
    """Read an event entry's `e` field (for consumers, tests and the demo's live summary)."""
    return msgpack.unpackb(payload, raw=False)


def parse_frame(fields: dict[bytes, bytes] | None) -> FrameMessage:
    """Validate a frames-stream entry and return its message; DecodeError says what is wrong."""
    if not fields or FRAME_FIELD not in fields:
        raise DecodeError(f"entry has no '{FRAME_FIELD.decode()}' field (fields: "
                          f"{sorted(k.decode(errors='replace') for k in (fields or {}))})")
    try:
        body = msgpack.unpackb(fields[FRAME_FIELD], raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"field 'f' is not msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(body, dict):
        raise DecodeError(f"field 'f' must be a msgpack map, got {type(body).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in body:
            raise DecodeError(f"frame is missing key '{key}'")
        if not isinstance(body[key], kind) or isinstance(body[key], bool):
            raise DecodeError(f"frame key '{key}' has type {type(body[key]).__name__}")
    if body["encoding"] not in ENCODINGS:
        raise DecodeError(f"unknown encoding '{body['encoding']}': expected one of {', '.join(ENCODINGS)}")
    return FrameMessage(**{k: body[k] for k in _REQUIRED})


def identity(fields: dict[bytes, bytes] | None) -> tuple[str, str, int, float]:
    """Best-effort (id, camera, seq, ts) of a possibly malformed entry, for its rejected event."""
    try:
        body = msgpack.unpackb((fields or {}).get(FRAME_FIELD, b""), raw=False, strict_map_key=False)
    except Exception:
        body = None
    body = body if isinstance(body, dict) else {}

    def pick(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = body.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else default

    return pick("id", str, ""), pick("camera", str, ""), pick("seq", int, -1), float(pick("ts", (int, float), 0.0))
