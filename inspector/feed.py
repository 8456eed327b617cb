"""The camera side: push frames into the frames stream from a folder of images or the synthetic generator."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from inspector import synth
from inspector.decode import encode
from inspector.protocol import FRAME_FIELD, FrameMessage

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}


def folder_payloads(folder: str | Path, encoding: str = "original") -> list[tuple[bytes, str, int, int]]:
    """(payload, encoding, height, width) for each image in `folder`; `original` sends the files' own bytes."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no .jpg/.png images in {folder}")
    out = []
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"{path} cannot be read as an image")
        if encoding == "original":
            out.append((path.read_bytes(), IMAGE_SUFFIXES[path.suffix.lower()], *image.shape))
        else:
            out.append((encode(image, encoding), encoding, *image.shape))
    return out


def synthetic_payloads(seed: int = 0, count: int = 32, encoding: str = "gray8") -> list[tuple[bytes, str, int, int]]:
    """A pool of synthetic frames (cycled by the feeder: generating each frame live would bound the rate)."""
    enc = "gray8" if encoding == "original" else encoding
    return [(encode(synth.frame(seed, i).image, enc), enc, synth.HEIGHT, synth.WIDTH) for i in range(count)]


def messages(payloads: list[tuple[bytes, str, int, int]], camera: str = "cam-0", start_seq: int = 0,
             clock: Callable[[], float] = time.time) -> Iterator[FrameMessage]:
    """Endless frames cycling over the payloads, with consecutive seq numbers and capture time = now."""
    for seq, (data, encoding, height, width) in zip(itertools.count(start_seq), itertools.cycle(payloads)):
        yield FrameMessage(f"{camera}-{seq}", camera, seq, clock(), height, width, encoding, data)


def feed(add: Callable[[list[dict[bytes, bytes]]], None], frames: Iterator[FrameMessage], count: int,
         fps: float = 0.0, stop: Callable[[], bool] = lambda: False) -> int:
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
    return sent


def redis_adder(client: object, key: str) -> Callable[[list[dict[bytes, bytes]]], None]:
    """`add` for feed(): XADD a batch with one pipelined round trip; never trims the stream."""

    def add(batch: list[dict[bytes, bytes]]) -> None:
        pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
        for fields in batch:
            pipe.xadd(key, fields)
        pipe.execute()

    return add


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
