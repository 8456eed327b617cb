"""Per-frame defects (class, RLE, area, score, components) from probability maps: the CPU reference.

`analyse_cpu` is the specification; `device.analyse_device` must return exactly what it returns. Components are
listed sorted by (y, x, w, h, area), so any labelling order gives the same event.
"""

from __future__ import annotations

import numpy as np

from inspector.postprocess.masks import CleanMap, clean_class
from inspector.postprocess.params import PostprocessParams
from inspector.postprocess.pool import for_each_map
from inspector.protocol import Defect
from inspector.scratch import scratch


def sorted_components(rows: np.ndarray) -> list[list[int]]:
    """Rows [x, y, w, h, area] as plain lists, sorted by (y, x, w, h, area)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    order = np.lexsort((rows[:, 4], rows[:, 3], rows[:, 2], rows[:, 0], rows[:, 1]))  # last key sorts first
    return rows[order].tolist()


def defect_of_map(prob: np.ndarray, k: int, presence: float | None, params: PostprocessParams) -> Defect | None:
    """One (H, W) float32 map of class index k -> its Defect, or None when the rules leave it empty.

    The score is the mean probability over the kept pixels, summed in float64: exact for FP16 maps and for
    float32 maps whenever the threshold is >= 2**-11, so any summation order (a GPU's too) gives the same bits."""
    kept = clean_class(prob, params.thresholds[k], params.min_component_area[k], params.min_class_area[k], presence,
                       params.presence_threshold[k], out=scratch("analyse.mask", prob.shape[::-1], np.bool_).T)
    if not kept.area:
        return None
    return defect_of(kept, k, prob.T[kept.mask.T].sum(dtype=np.float64))  # the mask is column-major


def defect_of(kept: CleanMap, k: int, score_sum: float) -> Defect:
    """A cleaned, non-empty map of class index k and the sum of its probabilities over the kept pixels (float64)
    -> its Defect."""
    area = kept.area
    return Defect(k + 1, kept.rle(), area, float(score_sum / area), sorted_components(kept.components()))


def analyse_cpu(probs: np.ndarray, presence: np.ndarray | None, params: PostprocessParams) -> list[list[Defect]]:
    """probs (N, C, H, W) (any float dtype, computed in float32), presence (N, C) or None -> defects per frame."""
    probs = np.asarray(probs, dtype=np.float32)
    n, c = probs.shape[:2]
    results = for_each_map(lambda i, k: defect_of_map(probs[i, k], k, None if presence is None
                                                      else float(presence[i, k]), params), n, c)
    return [[d for d in results[i * c:(i + 1) * c] if d is not None] for i in range(n)]
