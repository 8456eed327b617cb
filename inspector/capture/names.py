"""File names of captures and evidence crops: pure functions of the frame, so any thread (and a redelivered
frame) derives the same path.

A frame id comes from a camera and may be anything a msgpack string holds (`../x`, `/etc/passwd`, NUL, 256
characters). `safe_name` keeps an id that is already a plain file name as it is, and turns any other into a
sanitised prefix plus `~` plus 16 hex digits of its SHA-256: a kept id never contains `~`, so a kept and a made
name never meet, and two made names meet only if their hashes' first 64 bits do.

The day is the frame's own capture time in UTC (not the wall clock), so a frame redelivered after midnight lands
where its first delivery did and overwrites it.
"""

from __future__ import annotations

import hashlib
import re
import time

from inspector.protocol import Defect

PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a name kept as it is: no separators, no leading dot
UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
PREFIX_CHARS = 48
LAST_TS = 253402300799.0  # 9999-12-31T23:59:59Z: a later capture time files under that day
EVIDENCE = "evidence"  # the evidence crops' folder under capture.folder
EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "gray8": ".png"}  # gray8 is written as PNG


def safe_name(frame_id: str) -> str:
    """A file-name stem for `frame_id` that cannot leave its folder and no other id maps to."""
    if PLAIN.fullmatch(frame_id):
        return frame_id
    digest = hashlib.sha256(frame_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    prefix = UNSAFE.sub("_", frame_id[:PREFIX_CHARS]).lstrip(".-")  # no hidden files, no option-like names
    return f"{prefix or 'id'}~{digest}"


def day_of(ts: float) -> str:
    """yyyy-mm-dd (UTC) of a capture time; ts is finite and >= 0 (protocol.py checked it)."""
    return time.strftime("%Y-%m-%d", time.gmtime(min(max(ts, 0.0), LAST_TS)))


def image_name(frame_id: str, encoding: str) -> str:
    """The captured frame's file name under <day>/images/, also its ImageId in predicted.csv."""
    return safe_name(frame_id) + EXTENSIONS[encoding]


def evidence_ranks(defects: list[Defect], per_frame: int) -> list[tuple[int, int]]:
    """(defect index, component index) of the crops to write, largest component first, at most `per_frame`
    (ties: class, then the components' (y, x) order)."""
    every = [(-comp[4], d.class_id, j, i) for i, d in enumerate(defects) for j, comp in enumerate(d.components)]
    return [(i, j) for _, _, j, i in sorted(every)[:per_frame]]


def annotate(frame_id: str, ts: float, defects: list[Defect], per_frame: int) -> None:
    """Set each defect's `evidence` list (parallel to its components): the crop path under capture.folder, or
    None for a component past the first `per_frame`. Called before the event is built: the crop itself is
    written later by the capture writer, and may never be (queue full, cap reached; README)."""
    base = f"{EVIDENCE}/{day_of(ts)}/{safe_name(frame_id)}"
    for d in defects:
        d.evidence = [None] * len(d.components)
    for k, (i, j) in enumerate(evidence_ranks(defects, per_frame)):
        defects[i].evidence[j] = f"{base}/{defects[i].class_id}_{k}.jpg"  # type: ignore[index]
