"""The worker's previews (README "The operator's screen"): per camera at most one small JPEG per `preview.every_s`,
the frame just finished with each class's mask in its colour, stored as the camera's latest preview under one
Redis key with a TTL (`prefix()`): no history, no stream growth.

    consumer thread:  PreviewTap.finished(records) -> per camera, due? -> (message, defects) onto a bounded queue
                      (full: dropped and counted); a dict lookup and a clock read per record, nothing else
    render thread:    decode the payload again (the staged copy belongs to the ring) -> downscale -> masks (RLE)
                      blended in the class colours, component boxes outlined -> JPEG -> store.put (SET ... EX ttl)

The render thread owns the store and the encoder; the consumer thread owns `_last` (when each camera's preview
was last taken); the counters are written by both under a lock. A stored preview is a msgpack map
{v, camera, seq, ts, coil, pos_mm, classes, width, height, jpeg}: what the screen shows beside the image.
Bounded: at most `preview.max_cameras` keys (camera names are input), each `width` px wide, each expiring.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
import numpy as np

from inspector import rle
from inspector.config import Config, PreviewConfig
from inspector.protocol import Defect, FrameMessage

if TYPE_CHECKING:
    from inspector.pipeline import FrameRecord
    from inspector.serving import ActiveEngine

log = logging.getLogger(__name__)
PREVIEW_VERSION = 1
CLASS_BGR = {1: (40, 39, 214), 2: (44, 160, 44), 3: (180, 119, 31), 4: (28, 159, 255)}  # render.CLASS_COLOURS


def prefix(cfg: Config) -> str:
    """Where the previews live: `<prefix>:<camera>`, by default beside the frames stream they come from, as the
    cameras' seq state is (`inspect:{<line>}:frames:preview:<camera>`): in the line's slot, under a tool's own
    keys when the tool has them (inspector/io/isolation.py), and under the old names for a config that keeps them."""
    return cfg.preview.key_prefix or f"{cfg.redis.keys().frames}:preview"


class PreviewStore(Protocol):
    def put(self, camera: str, value: bytes) -> None:
        """Replace the camera's preview."""

    def close(self) -> None: ...


class RedisPreviews:
    """One key per camera, SET with EX: a camera that stops leaves no preview behind after `ttl_s`."""

    def __init__(self, client: Any, key_prefix: str, ttl_s: int) -> None:
        self.client, self.prefix, self.ttl_s = client, key_prefix, ttl_s

    def put(self, camera: str, value: bytes) -> None:
        self.client.set(f"{self.prefix}:{camera}", value, ex=self.ttl_s)

    def close(self) -> None:
        from inspector.io import client as clients

        clients.close(self.client)


class MemoryPreviews:
    """The in-memory twin (offline bench, unit tests): the latest value per camera."""

    def __init__(self) -> None:
        self.latest: dict[str, bytes] = {}
        self.puts = 0

    def put(self, camera: str, value: bytes) -> None:
        self.latest[camera] = value
        self.puts += 1

    def close(self) -> None:
        pass


def render(msg: FrameMessage, defects: Sequence[Defect], cfg: PreviewConfig) -> bytes:
    """The downscaled frame with masks blended in their class colours and component boxes outlined, as JPEG."""
    import cv2

    from inspector.decode import decode

    gray = decode(msg, msg.height, msg.width)
    width = min(cfg.width, msg.width)
    height = max(1, round(msg.height * width / msg.width))
    small = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)
    out = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    sx, sy = width / msg.width, height / msg.height
    for d in defects:
        colour = CLASS_BGR.get(d.class_id, (255, 255, 255))
        mask = rle.decode(d.rle, (msg.height, msg.width))
        # INTER_AREA keeps a one-pixel scratch as a faint line: any coverage marks the preview pixel
        covered = cv2.resize(mask * 255, (width, height), interpolation=cv2.INTER_AREA) > 0
        if covered.any():
            tint = np.empty_like(out)
            tint[:] = colour
            blend = cv2.addWeighted(out, 1 - cfg.alpha, tint, cfg.alpha, 0)
            out[covered] = blend[covered]
        for x, y, w, h, _area in d.components:
            cv2.rectangle(out, (int(x * sx), int(y * sy)), (int((x + w) * sx), int((y + h) * sy)), colour, 1)
    ok, jpeg = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, cfg.quality])
    if not ok:
        raise ValueError(f"JPEG encoding of a {width}x{height} preview failed")
    return msgpack.packb({"v": PREVIEW_VERSION, "camera": msg.camera, "seq": msg.seq, "ts": msg.ts, "coil": msg.coil,
                          "pos_mm": msg.pos_mm, "classes": sorted({d.class_id for d in defects}), "width": width,
                          "height": height, "jpeg": jpeg.tobytes()}, use_bin_type=True)


class PreviewTap:
    """A Tap (inspector/taps.py): takes at most one finished frame per camera per `every_s`, renders elsewhere."""

    wants_scores = False

    def __init__(self, cfg: PreviewConfig, store: PreviewStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.store, self.clock = cfg, store, clock
        self._last: dict[str, float] = {}  # consumer thread only
        self._queue: queue.Queue[tuple[FrameMessage, list[Defect]] | None] = queue.Queue(maxsize=cfg.queue)
        self._lock = threading.Lock()
        self.counts = {"taken": 0, "dropped": 0, "rendered": 0, "failed": 0, "other_cameras": 0}
        self._logged = 0.0
        self._thread = threading.Thread(target=self._render_loop, name="preview", daemon=True)
        self._thread.start()

    def finished(self, records: Sequence[FrameRecord], engine: ActiveEngine) -> None:
        now = self.clock()
        for rec in records:
            msg = rec.message
            if rec.error is not None or msg is None or now - self._last.get(msg.camera, -1e18) < self.cfg.every_s:
                continue
            if msg.camera not in self._last and len(self._last) >= self.cfg.max_cameras:
                self._count("other_cameras")  # camera names are input: keys and renders stay bounded
                continue
            self._last[msg.camera] = now
            try:
                self._queue.put_nowait((msg, rec.defects))  # the message is frozen; the defects list is done
                self._count("taken")
            except queue.Full:
                self._count("dropped")

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _render_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            msg, defects = item
            try:
                self.store.put(msg.camera, render(msg, defects, self.cfg))
                self._count("rendered")
            except Exception as exc:  # a bad payload, Redis away: this preview is lost, the next one comes
                self._count("failed")
                if time.monotonic() - self._logged > 60:
                    self._logged = time.monotonic()
                    log.warning("preview of camera %s not stored (%s: %s); events are unaffected (at most once a "
                                "minute)", msg.camera[:64], type(exc).__name__, str(exc)[:200] or "no message")

    def close(self, timeout_s: float = 5.0) -> None:
        """Render what is queued (within `timeout_s`), stop the thread, release the store."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout=timeout_s)
        with contextlib.suppress(Exception):
            self.store.close()
        log.info("previews: %s", " ".join(f"{k}={v}" for k, v in self.counts.items()))


def taps(cfg: Config, redis: bool) -> list[PreviewTap]:
    """The preview tap the config asks for: storing in Redis (a client of its own) or, offline, in memory."""
    if not cfg.preview.enabled:
        return []
    if redis:
        from inspector.io import client as clients

        store: PreviewStore = RedisPreviews(clients.connect(cfg.redis), prefix(cfg), cfg.preview.ttl_s)
    else:
        store = MemoryPreviews()
    return [PreviewTap(cfg.preview, store)]


__all__ = ["MemoryPreviews", "PreviewTap", "RedisPreviews", "prefix", "render", "taps"]
