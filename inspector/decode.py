"""Frame payload -> uint8 image, written straight into a staging slot; DecodeError on anything malformed."""

from __future__ import annotations

import cv2
import numpy as np

from inspector.errors import DecodeError
from inspector.protocol import FrameMessage


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
    image = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DecodeError(f"{msg.encoding} data ({len(msg.data)} bytes) cannot be decoded (truncated or corrupt)")
    if image.shape != (height, width):
        raise DecodeError(f"wrong size: {msg.encoding} image is {image.shape[0]}x{image.shape[1]}, "
                          f"declared and expected {height}x{width}")
    out[...] = image


def decode(msg: FrameMessage, height: int = 256, width: int = 1600) -> np.ndarray:
    """Decode into a fresh array (feeder, tests); the worker uses decode_into a staging buffer."""
    out = np.empty((height, width), dtype=np.uint8)
    decode_into(msg, out)
    return out


def encode(image: np.ndarray, encoding: str) -> bytes:
    """The camera side: uint8 (H, W) image -> payload bytes in `encoding`."""
    if encoding == "gray8":
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    ok, buf = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", image)
    if not ok:
        raise ValueError(f"cannot encode image as {encoding}")
    return buf.tobytes()
