"""Synthetic coils as the line service sees them: events-stream entries with coil, position and components, for
tests, the benchmark and the demo's checks. A pure function of its arguments (and seed)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inspector.config import CameraPlacement
from inspector.protocol import EVENT_FIELD, Defect, Event

Box = tuple[int, int, int, int, int]  # class_id, x, y, w, h (camera pixels); area = w * h


def event(camera: str, coil: str | None, pos_mm: float | None, boxes: Sequence[Box] = (), status: str = "ok",
          seq: int = 0, error: str | None = None) -> dict[bytes, bytes]:
    """One events-stream entry, as the worker writes it."""
    by_class: dict[int, list[list[int]]] = {}
    for cls, x, y, w, h in boxes:
        by_class.setdefault(cls, []).append([x, y, w, h, w * h])
    defects = [Defect(cls, "1 1", sum(c[4] for c in comps), 0.9, sorted(comps, key=lambda c: (c[1], c[0])))
               for cls, comps in sorted(by_class.items())]
    now = time.time()
    ev = Event(f"{camera}-{seq}", f"0-{seq}", camera, seq, now, now, "synthetic", status, error,
               defects if status == "ok" else [], coil=coil, pos_mm=pos_mm)
    return {EVENT_FIELD: ev.pack()}


@dataclass(frozen=True)
class Mark:
    """A roll mark to plant: `class_id` at `x_mm` across (on cameras that see it), every `pitch_mm` from
    `first_mm`."""

    class_id: int
    x_mm: float
    pitch_mm: float
    first_mm: float
    size_px: int = 12


def coil(name: str, cameras: Mapping[str, CameraPlacement], frames: int, rows: int = 256, width: int = 1600,
         defects_per_frame: float = 2.0, seed: int = 0, mark: Mark | None = None) -> Iterator[dict[bytes, bytes]]:
    """Frames 0..frames-1 of every camera, in capture order; random small defects (Poisson per frame), and `mark`
    where it falls."""
    rng = np.random.default_rng(seed)
    seqs = dict.fromkeys(cameras, 0)
    for k in range(frames):
        for cam_name, cam in cameras.items():
            along = rows * cam.mm_per_px_along
            pos = k * along
            boxes: list[Box] = []
            for _ in range(int(rng.poisson(defects_per_frame))):
                w, h = int(rng.integers(3, 40)), int(rng.integers(3, 40))
                boxes.append((int(rng.choice(4, p=[0.15, 0.05, 0.6, 0.2])) + 1, int(rng.integers(0, width - w)),
                              int(rng.integers(0, rows - h)), w, h))
            if mark is not None:
                x = round((mark.x_mm - cam.x_offset_mm) / cam.mm_per_px_across)
                n = 0
                while mark.first_mm + n * mark.pitch_mm < pos + along:
                    y_mm = mark.first_mm + n * mark.pitch_mm
                    y = round((y_mm - pos) / cam.mm_per_px_along)
                    s = mark.size_px
                    if y_mm >= pos and x - s // 2 >= 0 and x + s // 2 < width and y + s <= rows:
                        boxes.append((mark.class_id, x - s // 2, y, s, s))
                    n += 1
            yield event(cam_name, name, pos, boxes, seq=seqs[cam_name])
            seqs[cam_name] += 1
