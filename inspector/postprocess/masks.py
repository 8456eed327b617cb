"""The mask rules per class, CPU reference: foreground where p > threshold (strict), drop components smaller
than min_component_area, empty the class when its kept area < min_class_area or presence < its threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inspector.postprocess.components import label_cpu


def clean_class(prob: np.ndarray, threshold: float, min_component_area: int, min_class_area: int = 0,
                presence: float | None = None, presence_threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One class map -> (bool mask, kept component stats [k, 5] as x, y, w, h, area)."""
    empty = np.zeros(prob.shape, dtype=bool), np.zeros((0, 5), dtype=np.int32)
    if presence is not None and np.float32(presence) < np.float32(presence_threshold):
        return empty
    mask = prob > np.float32(threshold)
    if np.count_nonzero(mask) < max(min_class_area, 1):  # dropping components only shrinks the area
        return empty
    labels, stats = label_cpu(mask)
    keep = stats[:, 4] >= min_component_area
    keep[0] = False
    kept = stats[keep]
    if int(kept[:, 4].sum()) < max(min_class_area, 1):
        return empty
    if not keep[1:].all():
        mask = keep[labels]  # lookup table: one pass over the pixels, not one per component
    return mask, kept.astype(np.int32)


def clean(probs: np.ndarray, thresholds: Sequence[float], min_component_areas: Sequence[int],
          min_class_areas: Sequence[int] | None = None, *, presence: np.ndarray | None = None,
          presence_thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Bool masks of the same shape as `probs` ((C, H, W) or (N, C, H, W) float32), per-class rules."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 3:
        pres = None if presence is None else np.asarray(presence)[None]
        return clean(probs[None], thresholds, min_component_areas, min_class_areas, presence=pres,
                     presence_thresholds=presence_thresholds)[0]
    if probs.ndim != 4:
        raise ValueError(f"clean expects (C, H, W) or (N, C, H, W) probabilities, got shape {probs.shape}")
    n, c = probs.shape[:2]
    class_areas = min_class_areas if min_class_areas is not None else [0] * c
    out = np.zeros(probs.shape, dtype=bool)
    for i in range(n):
        for k in range(c):
            out[i, k] = clean_class(
                probs[i, k], thresholds[k], min_component_areas[k], class_areas[k],
                None if presence is None else float(presence[i, k]),
                0.0 if presence_thresholds is None else presence_thresholds[k])[0]
    return out
