"""Synthetic steel frames with labelled defects: the offline camera and the stand-in for the Kaggle set.

A frame is steel-like texture (vertical rolling marks, fine grain, slow shading), often with a dark strip
edge and margin as in the real Severstal frames, plus defects shaped like the four real classes:
1 small pits and spots in clusters, 2 thin short vertical marks, 3 scratches and irregular patches of many
sizes, 4 large dark regions. About 47% of frames are defect-free, as in the real set (5,902 of 12,568);
defect frames pick classes in the real proportions (897 / 247 / 5,150 / 801 images). Each frame is a pure
function of (seed, index), so a dataset is reproducible whatever its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

HEIGHT, WIDTH = 256, 1600
DEFECT_FREE = 5902 / 12568
CLASS_WEIGHTS = np.array([897, 247, 5150, 801], dtype=np.float64)


@dataclass
class SynthFrame:
    image: np.ndarray  # uint8 (H, W)
    masks: np.ndarray  # uint8 (4, H, W), at most one class per pixel


def frame(seed: int, index: int, height: int = HEIGHT, width: int = WIDTH) -> SynthFrame:
    rng = np.random.default_rng([seed, index])
    image = _texture(rng, height, width)
    owner = np.zeros((height, width), dtype=np.uint8)  # class id per pixel, 0 = none
    if rng.random() >= DEFECT_FREE:
        classes = {int(rng.choice(4, p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum())) + 1}
        while rng.random() < 0.2:  # about one defect frame in five carries a second class
            classes.add(int(rng.choice(4, p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum())) + 1)
        for cls in sorted(classes):
            for _ in range(int(rng.integers(1, 3 if cls != 4 else 2))):
                _DEFECTS[cls](rng, image, owner)
    _margin(rng, image, owner)
    masks = np.stack([(owner == c).astype(np.uint8) for c in range(1, 5)])
    return SynthFrame(np.clip(image, 0, 255).astype(np.uint8), masks)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.uniform(80, 135)
    cols = cv2.GaussianBlur(rng.normal(0, 1, (1, width)).astype(np.float32), (0, 0), rng.uniform(1, 4))
    marks = np.repeat(cols, height, axis=0) * rng.uniform(4, 12)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 0.8) * rng.uniform(3, 8)
    shade = cv2.resize(rng.normal(0, 1, (3, 12)).astype(np.float32), (width, height),
                       interpolation=cv2.INTER_CUBIC) * rng.uniform(3, 10)
    image = base + marks + grain + shade
    if rng.random() < 0.3:  # a bright rolling line
        x = int(rng.integers(0, width))
        image[:, x:x + int(rng.integers(2, 8))] += rng.uniform(20, 60)
    return image.astype(np.float32)


def _margin(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray) -> None:
    """Dark strip edge on one side in ~40% of frames (the strip is narrower than the camera's view)."""
    if rng.random() >= 0.4:
        return
    width = image.shape[1]
    edge = int(rng.integers(100, 600))
    cols = slice(0, edge) if rng.random() < 0.5 else slice(width - edge, width)
    image[:, cols] = rng.uniform(1, 8) + rng.normal(0, 1.5, image[:, cols].shape)
    owner[:, cols] = 0


def _paint(image: np.ndarray, owner: np.ndarray, shape: np.ndarray, delta: float | np.ndarray, cls: int,
           label: np.ndarray | None = None) -> None:
    """Darken/brighten where `shape` > 0 (soft edges) and label `label` (default: shape) as class `cls`."""
    soft = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 1.2)
    image += soft * delta
    owner[(label if label is not None else shape) > 0] = cls


def _pits(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray) -> None:
    h, w = image.shape
    cy, cx = int(rng.integers(20, h - 20)), int(rng.integers(60, w - 60))
    spread = rng.uniform(10, 30)
    spots = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(6, 25))):
        y, x = int(cy + rng.normal(0, spread)), int(cx + rng.normal(0, spread * 1.5))
        cv2.ellipse(spots, (x, y), (int(rng.integers(2, 6)), int(rng.integers(2, 5))), 0, 0, 360, 1, -1)
    region = cv2.dilate(spots, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)))
    _paint(image, owner, spots, rng.choice([-1, 1]) * rng.uniform(35, 70), 1, region)


def _vertical_marks(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray) -> None:
    h, w = image.shape
    x, length = int(rng.integers(30, w - 30)), int(rng.integers(40, 150))
    y = int(rng.integers(0, max(1, h - length)))
    marks = np.zeros((h, w), np.uint8)
    for k in range(int(rng.integers(1, 4))):
        dx = x + k * int(rng.integers(6, 14))
        cv2.line(marks, (dx, y), (dx + int(rng.integers(-4, 5)), y + length), 1, int(rng.integers(2, 5)))
    region = cv2.dilate(marks, np.ones((5, 7), np.uint8))
    _paint(image, owner, marks, -rng.uniform(40, 70), 2, region)


def _scratches_patches(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray) -> None:
    h, w = image.shape
    shape = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:  # scratches: long thin strokes, often several in parallel
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w - 200))
        length, angle = rng.uniform(100, 900), rng.uniform(-0.5, 0.5) + (np.pi / 2 if rng.random() < 0.3 else 0)
        for k in range(int(rng.integers(1, 4))):
            dy = k * int(rng.integers(6, 15))
            p1 = (x0, y0 + dy)
            p2 = (int(x0 + length * np.cos(angle)), int(y0 + dy + length * np.sin(angle)))
            cv2.line(shape, p1, p2, 1, int(rng.integers(2, 6)))
        region = cv2.dilate(shape, np.ones((9, 9), np.uint8))
    else:  # irregular patch of any size
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        size = rng.uniform(15, 110)
        n = int(rng.integers(7, 14))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = size * rng.uniform(0.5, 1.3, n)
        pts = np.stack([cx + 1.8 * radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
        cv2.fillPoly(shape, [pts], 1)
        region = shape
    texture = rng.uniform(30, 60) * (1 + 0.5 * rng.normal(0, 1, (h, w)).astype(np.float32))
    _paint(image, owner, shape, rng.choice([-1, 1]) * texture, 3, region)


def _dark_regions(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray) -> None:
    h, w = image.shape
    shape = np.zeros((h, w), np.uint8)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(100, w - 100))
    ry, rx = int(rng.integers(40, 140)), int(rng.integers(80, 350))
    n = 16
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    wobble = rng.uniform(0.6, 1.2, n)
    pts = np.stack([cx + rx * wobble * np.cos(angles), cy + ry * wobble * np.sin(angles)], 1).astype(np.int32)
    cv2.fillPoly(shape, [pts], 1)
    blotch = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 6) * 60
    _paint(image, owner, shape, -rng.uniform(35, 60) + blotch, 4)


_DEFECTS = {1: _pits, 2: _vertical_marks, 3: _scratches_patches, 4: _dark_regions}
