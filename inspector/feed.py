"""The camera side: push frames into the frames stream from a folder of images or the synthetic generator."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import redis
from redis.exceptions import RedisClusterException

from inspector import synth
from inspector.decode import encode
from inspector.errors import ConfigError, SourceRefused, SourceUnavailable
from inspector.io.client import slot_client, topology_changed
from inspector.io.redis_streams import classify
from inspector.protocol import FRAME_FIELD, FrameMessage

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}


def image_folder(folder: str | Path) -> Path:
    """The folder of frames: `folder` itself, or its images/ (train_images/) when it is a dataset root as
    `trainer --data` takes it; ConfigError in one line when neither holds a .jpg/.png."""
    root = Path(folder)
    for candidate in (root, root / "images", root / "train_images"):
        if candidate.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in candidate.iterdir()):
            return candidate
    raise ConfigError(f"--folder {root}: no .jpg/.png images in it nor in its images/ or train_images/: give a folder "
                      "of frames, or a dataset root (images/ + train.csv)")


def folder_payloads(folder: str | Path, encoding: str = "original") -> list[tuple[Any, ...]]:
    """(payload, encoding, height, width, file stem) for each image in `folder` (or its images/, see
    image_folder); `original` sends the files' own bytes. The stem goes into each frame id."""
    files = sorted(p for p in image_folder(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    out = []
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ConfigError(f"{path} cannot be read as an image: remove it from --folder")
        if encoding == "original":
            out.append((path.read_bytes(), IMAGE_SUFFIXES[path.suffix.lower()], *image.shape, path.stem))
        else:
            out.append((encode(image, encoding), encoding, *image.shape, path.stem))
    return out


def synthetic_payloads(seed: int = 0, count: int = 32, encoding: str = "gray8") -> list[tuple[Any, ...]]:
    """A pool of synthetic frames (cycled by the feeder: generating each frame live would bound the rate)."""
    enc = "gray8" if encoding == "original" else encoding
    return [(encode(synth.frame(seed, i).image, enc), enc, synth.HEIGHT, synth.WIDTH) for i in range(count)]


def messages(payloads: list[tuple[Any, ...]], camera: str = "cam-0", start_seq: int = 0,
             clock: Callable[[], float] = time.time) -> Iterator[FrameMessage]:
    """Endless frames cycling over the payloads, with consecutive seq numbers and capture time = now; the frame id
    is CAMERA-STEM-SEQ when a payload names its file (folder_payloads), else CAMERA-SEQ."""
    for seq, (data, encoding, height, width, *name) in zip(itertools.count(start_seq), itertools.cycle(payloads)):
        frame_id = f"{camera}-{name[0]}-{seq}" if name else f"{camera}-{seq}"
        yield FrameMessage(frame_id, camera, seq, clock(), height, width, encoding, data)


def feed(add: Callable[[list[dict[bytes, bytes]]], None], frames: Iterator[FrameMessage], count: int,
         fps: float = 0.0, stop: Callable[[], bool] = lambda: False,
         progress: Callable[[int], None] = lambda sent: None) -> int:
    """Send `count` frames through `add` (a batch of entries' fields) at `fps` (0 = as fast as possible).

    Frames due at the same moment go out together (one pipelined round trip), so the offered rate holds
    even when one XADD takes longer than the frame interval.
    """
    sent = 0
    start = time.monotonic()
    while sent < count and not stop():
        if fps > 0:
            due = int((time.monotonic() - start) * fps) + 1
            n = min(due - sent, count - sent)
            if n <= 0:
                time.sleep(min(1.0 / fps, (sent + 1) / fps - (time.monotonic() - start)))
                continue
        else:
            n = min(16, count - sent)
        add([{FRAME_FIELD: m.pack()} for m in itertools.islice(frames, n)])
        sent += n
        progress(sent)
    return sent


def redis_adder(client: Any, key: str, wait_replicas: int = 0, wait_ms: int = 1000, outage_s: float = 0.0,
                where: str = "the frames stream's server") -> Callable[[list[dict[bytes, bytes]]], None]:
    """`add` for feed(): XADD a batch with one pipelined round trip, on the node that holds `key`; never trims.

    wait_replicas N > 0: WAIT N in the same round trip (one connection), and wait again until N replicas hold
    the batch. outage_s > 0: a lost connection or a failover is retried that long, visibly, and the batch sent
    again: a frame may then reach the stream twice (same camera and seq), never zero times."""
    return _RedisAdder(client, key, wait_replicas, wait_ms, outage_s, where)


class _RedisAdder:
    """The batch-sending state behind redis_adder (one feeding thread)."""

    def __init__(self, client: Any, key: str, wait_replicas: int, wait_ms: int, outage_s: float,
                 where: str) -> None:
        self.client, self.key, self.where = client, key, where
        self.wait_replicas, self.wait_ms, self.outage_s = wait_replicas, wait_ms, outage_s

    def __call__(self, batch: list[dict[bytes, bytes]]) -> None:
        failed_since, wait, logged = None, 0.05, 0.0
        while True:
            try:
                return self._send(batch)
            except (SourceRefused, _Unconfirmed):
                raise
            except SourceUnavailable as exc:
                now = time.monotonic()
                failed_since = failed_since or now
                if self.outage_s <= 0 or now - failed_since > self.outage_s:
                    raise SourceUnavailable(f"{exc} (gave up after {now - failed_since:.0f} s)") from None
                if now - logged >= 5.0:  # the first failure of an outage, then every 5 s
                    log.warning("feed: %s; sending the %d frame(s) again (retrying for up to %g s; a frame may "
                                "arrive twice)", exc, len(batch), self.outage_s)
                    logged = now
                time.sleep(wait)  # a retry costs one connection attempt: keep them frequent (a camera buffers)
                wait = min(wait * 2, 0.5)
                topology_changed(self.client)  # the slot map as it is now, not as it was at the failure

    def _pipeline(self) -> Any:
        return self._guard(lambda: slot_client(self.client, self.key).pipeline(transaction=False))

    def _guard(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (redis.RedisError, RedisClusterException) as exc:
            raise classify(exc, self.where, "adding frames") from None

    def _send(self, batch: list[dict[bytes, bytes]]) -> None:
        pipe = self._pipeline()
        for fields in batch:
            pipe.xadd(self.key, fields)
        if self.wait_replicas:
            pipe.client_id()
            pipe.wait(self.wait_replicas, self.wait_ms)
        reply = self._guard(pipe.execute)
        if self.wait_replicas:
            self._confirm(len(batch), *reply[-2:])

    def _confirm(self, n: int, connection: int, acked: int) -> None:
        """WAIT again on the same connection (WAIT counts that connection's writes) until enough replicas hold the
        batch; on another connection the batch is sent again."""
        since = time.monotonic()
        while acked < self.wait_replicas:
            if time.monotonic() - since > max(self.outage_s, 0.0):
                raise _Unconfirmed(f"{self.where}: {n} frames held by {acked} of {self.wait_replicas} "
                                   f"replicas (--wait-replicas) after {time.monotonic() - since:.0f} s")
            log.warning("feed: %d frames held by %d of %d replicas after %d ms: waiting for them", n, acked,
                        self.wait_replicas, self.wait_ms)
            pipe = self._pipeline()
            pipe.client_id()
            pipe.wait(self.wait_replicas, self.wait_ms)
            again, acked = self._guard(pipe.execute)
            if again != connection:
                raise SourceUnavailable(f"{self.where}: the connection that wrote {n} frames closed before "
                                        f"{self.wait_replicas} replicas confirmed them")


class _Unconfirmed(SourceUnavailable):
    """Replicas did not confirm a batch in time: the frames are on the master, sending them again would not help."""


def corrupt(kind: str) -> dict[bytes, bytes]:
    """Malformed entries of each kind the worker must reject (demo and tests)."""
    msg = FrameMessage("bad", "cam-bad", 0, time.time(), 256, 1600, "gray8", np.zeros(256 * 1600, np.uint8).tobytes())
    if kind == "truncated":
        return {FRAME_FIELD: FrameMessage(**{**msg.__dict__, "data": msg.data[:1000]}).pack()}
    if kind == "wrong_size":
        return {FRAME_FIELD: FrameMessage(**{**msg.__dict__, "height": 128, "width": 800,
                                             "data": msg.data[:128 * 800]}).pack()}
    if kind == "unknown_encoding":
        return {FRAME_FIELD: FrameMessage(**{**msg.__dict__, "encoding": "bmp"}).pack()}
    if kind == "not_msgpack":
        return {FRAME_FIELD: b"\xc1\xc1 this is not msgpack"}
    raise ValueError(f"unknown corruption {kind}")
