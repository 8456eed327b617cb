"""Frame payload -> uint8 image, written straight into a staging slot; DecodeError on anything malformed.

The image header is read before any decoding (`image_header`): a PNG or JPEG whose bytes contradict its
`encoding`, or that declares a size other than the frame's, never reaches the decoder, so a 60-byte PNG that
claims 20000 x 20000 pixels costs nothing. What is accepted on purpose:

    gray8   exactly height * width bytes, row-major
    jpeg    8-bit baseline or progressive, 1 or 3 components; 3-component frames are converted to gray (Severstal
            ships its frames as R = G = B JPEGs)
    png     8-bit gray, or 8-bit RGB converted to gray; 16-bit, palette and alpha PNGs are rejected (scaling or
            dropping them silently would change what the model sees)

Any exception a decoder raises on a frame is that frame's fault: it becomes a DecodeError, never a crash.
JPEG/PNG decoding runs on a small thread pool (`DecodePool`; OpenCV releases the GIL).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import cv2
import numpy as np

from inspector.errors import DecodeError, describe
from inspector.parallel import each
from inspector.protocol import FrameMessage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}


class Header(NamedTuple):
    height: int
    width: int
    channels: int
    bits: int


def _kind(data: bytes) -> str:
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    return "unknown bytes"


def image_header(data: bytes, encoding: str) -> Header:
    """Size, channels and bit depth from a PNG's IHDR or a JPEG's frame header, without decoding pixels."""
    kind = _kind(data)
    if kind != encoding:
        raise DecodeError(f"data is {'a ' + kind.upper() if kind != 'unknown bytes' else kind} but encoding says "
                          f"{encoding} ({len(data)} bytes)")
    if encoding == "png":
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise DecodeError("png data has no IHDR header (truncated or corrupt)")
        width, height, bits, colour = struct.unpack(">IIBB", data[16:26])
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 0)
        if colour not in (0, 2):
            raise DecodeError(f"png colour type {colour} (palette or alpha) is not accepted: send 8-bit gray")
        return Header(height, width, channels, bits)
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise DecodeError(f"jpeg data is corrupt at byte {pos} (expected a marker)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _SOF:
            if pos + 10 > len(data):
                break
            bits, height, width, channels = struct.unpack(">BHHB", data[pos + 4:pos + 10])
            return Header(height, width, channels, bits)
        if marker in (0xD9, 0xDA) or length < 2:  # end of image or scan data before any frame header
            break
        pos += 2 + length
    raise DecodeError(f"jpeg data ({len(data)} bytes) has no frame header (truncated or corrupt)")


def decode_into(msg: FrameMessage, out: np.ndarray) -> None:
    """Decode `msg` into `out` (a (H, W) uint8 view of a staging buffer) or raise DecodeError.

    The declared size must match the data and the engine's input size: a frame of another geometry is a
    camera misconfiguration, and resizing it silently would move every defect.
    """
    height, width = out.shape
    if (msg.height, msg.width) != (height, width):
        raise DecodeError(f"wrong size: frame declares {msg.height}x{msg.width}, the engine expects {height}x{width}")
    if msg.encoding == "gray8":
        if len(msg.data) != height * width:
            raise DecodeError(f"truncated data: gray8 {height}x{width} needs {height * width} bytes, "
                              f"got {len(msg.data)}")
        out[...] = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, width)
        return
    head = image_header(msg.data, msg.encoding)
    if (head.height, head.width) != (height, width):
        raise DecodeError(f"wrong size: {msg.encoding} header says {head.height}x{head.width}, declared and "
                          f"expected {height}x{width}")
    if head.bits != 8 or head.channels not in (1, 3):
        raise DecodeError(f"{msg.encoding} with {head.bits}-bit samples and {head.channels} channel(s) is not "
                          "accepted: send 8-bit gray (or 8-bit RGB, converted to gray)")
    try:
        image = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error as exc:
        lines = str(exc).strip().splitlines()  # OpenCV's text ends with the reason; keep that line
        raise DecodeError(f"{msg.encoding} data cannot be decoded: "
                          f"{lines[-1][:160] if lines else describe(exc)}") from None
    if image is None:
        raise DecodeError(f"{msg.encoding} data ({len(msg.data)} bytes) cannot be decoded (truncated or corrupt)")
    if image.shape != (height, width) or image.dtype != np.uint8:
        raise DecodeError(f"{msg.encoding} decoded to {image.dtype} {image.shape}, expected uint8 {height}x{width}")
    out[...] = image


def decode(msg: FrameMessage, height: int = 256, width: int = 1600) -> np.ndarray:
    """Decode into a fresh array (feeder, tests); the worker uses decode_into a staging buffer."""
    out = np.empty((height, width), dtype=np.uint8)
    decode_into(msg, out)
    return out


def _guarded(msg: FrameMessage, out: np.ndarray) -> str | None:
    """decode_into, with any exception turned into the frame's error text."""
    try:
        decode_into(msg, out)
    except DecodeError as exc:
        return str(exc)
    except Exception as exc:  # a decoder bug or an input no check foresaw: still this frame's fault
        return f"{msg.encoding} data cannot be decoded: {describe(exc)}"
    return None


class DecodePool:
    """Decodes a batch's frames on the calling thread plus `threads` pool threads (0: the caller alone)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 0 else None

    def decode(self, messages: Sequence[FrameMessage], outs: Sequence[np.ndarray]) -> list[str | None]:
        """Decode messages[i] into outs[i]; returns None or the error text of each frame."""
        pairs = list(zip(messages, outs, strict=True))
        compressed = sum(m.encoding != "gray8" for m in messages)  # gray8 is a copy: not worth a hand-off
        workers = 1 + self.threads if compressed > 1 else 1
        return each(lambda pair: _guarded(*pair), pairs, self._pool, workers)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def encode(image: np.ndarray, encoding: str) -> bytes:
    """The camera side: uint8 (H, W) image -> payload bytes in `encoding`."""
    if encoding == "gray8":
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    ok, buf = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", image)
    if not ok:
        raise ValueError(f"cannot encode image as {encoding}")
    return buf.tobytes()
