"""The mask rules per class, CPU reference: foreground where p > threshold (strict), drop components smaller
than min_component_area, empty the class when its kept area < min_class_area or presence < its threshold."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import cv2
import numpy as np

from inspector.postprocess.components import label_areas_cpu, label_cpu

T = TypeVar("T")


def clean_class(prob: np.ndarray, threshold: float, min_component_area: int, min_class_area: int = 0,
                presence: float | None = None, presence_threshold: float = 0.0,
                boxes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One class map -> (bool mask, kept components): stats rows [k, 5] (x, y, w, h, area) with `boxes`,
    else their areas [k] (half the labelling cost)."""
    empty = np.zeros(prob.shape, dtype=bool), np.zeros((0, 5) if boxes else (0,), dtype=np.int32)
    if presence is not None and np.float32(presence) < np.float32(presence_threshold):
        return empty
    mask = prob > np.float32(threshold)
    if cv2.countNonZero(mask.view(np.uint8)) < max(min_class_area, 1):  # dropping components only shrinks it
        return empty
    if boxes:
        labels, stats = label_cpu(mask)
        areas = stats[:, 4]
    else:
        labels, areas = label_areas_cpu(mask)
    keep = areas >= min_component_area
    keep[0] = False
    kept_area = int(areas[keep].sum())
    if kept_area < max(min_class_area, 1):
        return empty
    if not keep[1:].all():
        mask = np.take(keep, labels)  # lookup table: one pass over the pixels, not one per component
    return mask, (stats[keep] if boxes else areas[keep]).astype(np.int32)


def clean(probs: np.ndarray, thresholds: Sequence[float], min_component_areas: Sequence[int],
          min_class_areas: Sequence[int] | None = None, *, presence: np.ndarray | None = None,
          presence_thresholds: Sequence[float] | None = None, threads: int | None = None) -> np.ndarray:
    """Bool masks of the same shape as `probs` ((C, H, W) or (N, C, H, W) float32), per-class rules.

    Maps are cleaned on the post-processing pool; `threads=1` does them one after the other in this thread."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 3:
        pres = None if presence is None else np.asarray(presence)[None]
        return clean(probs[None], thresholds, min_component_areas, min_class_areas, presence=pres,
                     presence_thresholds=presence_thresholds, threads=threads)[0]
    if probs.ndim != 4:
        raise ValueError(f"clean expects (C, H, W) or (N, C, H, W) probabilities, got shape {probs.shape}")
    n, c = probs.shape[:2]
    class_areas = min_class_areas if min_class_areas is not None else [0] * c
    out = np.zeros(probs.shape, dtype=bool)

    def one(i: int, k: int) -> None:
        out[i, k] = clean_class(probs[i, k], thresholds[k], min_component_areas[k], class_areas[k],
                                None if presence is None else float(presence[i, k]),
                                0.0 if presence_thresholds is None else presence_thresholds[k], boxes=False)[0]

    for_each_map(one, n, c, threads)
    return out


_POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="postprocess")


def for_each_map(fn: Callable[[int, int], T], n: int, c: int, threads: int | None = None) -> list[T]:
    """fn(frame, class) for every map, on a small thread pool (OpenCV and NumPy release the GIL);
    threads=1: one after the other in this thread.

    `fn` must not submit to this pool itself (clean(..., threads=1) inside it): nested waits would deadlock."""
    maps = [(i, k) for i in range(n) for k in range(c)]
    if threads == 1:
        return [fn(i, k) for i, k in maps]
    return list(_POOL.map(lambda ik: fn(*ik), maps))
