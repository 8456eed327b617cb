"""Evidence crops and captured images, rendered from a frame's payload: run in the capture writer thread only.

A crop is the component's box plus capture.evidence_margin_px on each side (clipped to the frame), in colour,
with the outline of its class's mask drawn in the class colour (the colours of `trainer evaluate --overlays`),
encoded as JPEG. The payload is decoded here again (the staging slot it was decoded into is long reused):
OpenCV decodes and encodes outside the GIL, so the pipeline's threads keep running.
"""

from __future__ import annotations

import cv2
import numpy as np

from inspector.protocol import Defect, FrameMessage
from inspector.rle import decode

COLOURS = [(0, 0, 255), (0, 200, 0), (255, 80, 0), (0, 220, 255)]  # BGR per class 1..4, as trainer/evaluate.py


def image_bytes(message: FrameMessage) -> bytes:
    """What goes to images/: the camera's own JPEG or PNG bytes as they came, gray8 as a PNG."""
    if message.encoding != "gray8":
        return message.data
    ok, png = cv2.imencode(".png", gray(message))
    if not ok:
        raise ValueError("PNG encoding failed")
    return png.tobytes()


def gray(message: FrameMessage) -> np.ndarray:
    """The frame as (H, W) uint8 (the decoder already accepted it once)."""
    if message.encoding == "gray8":
        return np.frombuffer(message.data, np.uint8).reshape(message.height, message.width)
    image = cv2.imdecode(np.frombuffer(message.data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"{message.encoding} payload does not decode")
    return image


def crops(message: FrameMessage, defects: list[Defect], margin: int, quality: int) -> list[tuple[str, bytes]]:
    """(path, JPEG bytes) of each component that `names.annotate` gave a path, in the event's order."""
    wanted = [(d, j, path) for d in defects for j, path in enumerate(d.evidence or []) if path is not None]
    if not wanted:
        return []
    image = gray(message)
    height, width = image.shape
    masks: dict[int, np.ndarray] = {}
    out = []
    for d, j, path in wanted:
        mask = masks.get(d.class_id)
        if mask is None:
            mask = masks[d.class_id] = decode(d.rle, (height, width))
        x, y, w, h, _ = d.components[j]
        x0, y0 = max(0, x - margin), max(0, y - margin)
        x1, y1 = min(width, x + w + margin), min(height, y + h + margin)
        crop = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_GRAY2BGR)
        contours, _ = cv2.findContours(np.ascontiguousarray(mask[y0:y1, x0:x1]), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(crop, contours, -1, COLOURS[(d.class_id - 1) % 4], 1)
        ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        out.append((path, jpeg.tobytes()))
    return out
