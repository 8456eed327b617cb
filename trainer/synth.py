"""`trainer synth`: a synthetic dataset in the Kaggle layout (images/ + train.csv, modern form)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
from tqdm import tqdm

from inspector import synth
from inspector.rle import encode


def write_dataset(out: str | Path, images: int, seed: int = 0, start: int = 0, progress: bool = True) -> Path:
    """Frames start..start+images-1 of the seeded generator; a pure function of (seed, index)."""
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in tqdm(range(start, start + images), desc="synth", disable=not progress, unit="frame"):
        frame = synth.frame(seed, index)
        name = f"s{seed:03d}_{index:06d}.png"
        cv2.imwrite(str(root / "images" / name), frame.image)
        for cls in range(4):
            if frame.masks[cls].any():
                rows.append((name, cls + 1, encode(frame.masks[cls])))
    with open(root / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ImageId", "ClassId", "EncodedPixels"])
        writer.writerows(rows)
    return root
