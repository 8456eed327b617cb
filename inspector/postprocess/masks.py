"""The mask rules per class (`rules.py`), CPU reference: the specification the device path is held to.

OpenCV labels the components once; everything after that works on column runs (`runs.py`): areas, the kept
mask, boxes and the RLE come from a few thousand runs, not from passes over 409,600 pixels per component.
`clean_class` starts from a probability map; `clean_runs` starts from a map's runs (found on a device) and
applies the same rules (`kept_runs`), so the device path's host labelling is the reference's own code.

Called from any thread (the post-processing pool's included): the temporaries are per-thread scratch buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from inspector.postprocess import rules
from inspector.postprocess.components import label_type
from inspector.postprocess.pool import for_each_map, on_pool
from inspector.postprocess.rules import f32
from inspector.postprocess.runs import boxes, column_runs, covered, kaggle_runs
from inspector.rle import from_runs
from inspector.scratch import scratch

__all__ = ["CleanMap", "clean", "clean_class", "clean_runs", "for_each_map", "kept_runs", "on_pool"]


class CleanMap(NamedTuple):
    """One class map after the rules: the kept pixels as a mask (None when cleaned from runs) and as column runs
    (flat column-major [start, end), one column each), with each run's component label and the pixel count per
    label."""

    mask: np.ndarray | None
    starts: np.ndarray
    ends: np.ndarray
    labels: np.ndarray
    label_areas: np.ndarray
    height: int

    @classmethod
    def empty(cls, out: np.ndarray) -> CleanMap:
        out[...] = False
        none = np.zeros(0, dtype=np.int64)
        return cls(out, none, none, none, none, out.shape[0])

    @property
    def area(self) -> int:
        return int((self.ends - self.starts).sum())

    def rle(self) -> str:
        """Kaggle RLE of the mask, straight from the runs: equal to rle.encode(self.mask)."""
        return from_runs(*kaggle_runs(self.starts, self.ends))

    def components(self) -> np.ndarray:
        """int32 rows [x, y, w, h, area], one per kept component, in label order."""
        ids, box = boxes(self.starts, self.ends, self.labels, self.height, len(self.label_areas))
        return np.concatenate([box, self.label_areas[ids, None]], axis=1).astype(np.int32)


def clean_class(prob: np.ndarray, threshold: float, min_component_area: int, min_class_area: int = 0,
                presence: float | None = None, presence_threshold: float = 0.0,
                out: np.ndarray | None = None) -> CleanMap:
    """One (H, W) float32 class map -> its CleanMap. The mask is stored column-major (Kaggle's pixel order, so
    the RLE needs no transpose): in `out` when given (bool (H, W), e.g. `np.empty((W, H), bool).T`), else in a
    new array. Column-major storage lets the mask itself be the transposed image the runs are read from."""
    if out is None:
        out = np.empty(prob.shape[::-1], dtype=bool).T
    elif out.shape != prob.shape or out.dtype != np.bool_ or not out.T.flags.c_contiguous:
        raise ValueError(f"clean_class writes into a column-major bool array of shape {prob.shape} "
                         f"(np.empty({prob.shape[::-1]}, bool).T), got {out.dtype} {out.shape}")
    if presence is not None and not rules.present(f32(presence), f32(presence_threshold)):
        return CleanMap.empty(out)
    binary = np.greater(prob, f32(threshold), out=scratch("clean.binary", prob.shape, np.bool_))  # rules.foreground
    foreground = cv2.countNonZero(binary.view(np.uint8))
    if not rules.keep_class(foreground, min_class_area):  # dropping components only shrinks it
        return CleanMap.empty(out)
    height, width = prob.shape
    columns = out.T  # row j = column j of the frame
    cv2.transpose(binary.view(np.uint8), dst=columns.view(np.uint8))
    starts, ends = column_runs(columns.view(np.uint8))
    ltype = label_type(foreground)
    labels = scratch("clean.labels", (width, height), np.uint16 if ltype == cv2.CV_16U else np.int32)
    cv2.connectedComponents(columns.view(np.uint8), labels=labels, connectivity=8, ltype=ltype)
    run_labels = labels.reshape(-1)[starts]  # a run lies in one component: its first pixel names it
    rules_say = kept_runs(run_labels, ends - starts, min_component_area, min_class_area)
    if rules_say is None:
        return CleanMap.empty(out)
    kept, label_areas = rules_say
    if not kept.all():
        columns.reshape(-1)[covered(starts[~kept], ends[~kept])] = False  # clear only the dropped pixels
        starts, ends, run_labels = starts[kept], ends[kept], run_labels[kept]
    return CleanMap(out, starts, ends, run_labels, label_areas, height)


def kept_runs(run_labels: np.ndarray, lengths: np.ndarray, min_component_area: int,
              min_class_area: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The component and class rules on labelled runs: (which runs stay, pixels per label), or None when the class
    is emptied. Label 0 has no runs: area 0, never counted."""
    label_areas = np.bincount(run_labels, weights=lengths).astype(np.int64)
    keep = rules.keep_components(label_areas, min_component_area)
    if not rules.keep_class(int(label_areas[keep].sum()), min_class_area):
        return None
    return keep[run_labels], label_areas


def clean_runs(starts: np.ndarray, ends: np.ndarray, height: int, min_component_area: int,
               min_class_area: int) -> tuple[CleanMap, np.ndarray] | None:
    """One map's foreground given as its column runs (flat column-major [start, end), in order) -> its CleanMap
    (mask None) and which of the runs it kept, or None when the rules empty it. The runs are drawn into a uint8
    crop of their extent (columns as rows, as `clean_class` labels them) and OpenCV labels that: work in
    proportion to the crop, not the frame."""
    lengths = ends - starts
    if not len(starts) or not rules.keep_class(int(lengths.sum()), min_class_area):
        return None
    cols, top = np.divmod(starts, height)
    c0, r0 = int(cols[0]), int(top.min())  # runs come in column-major order: the first is in the first column
    width, rows = int(cols[-1]) + 1 - c0, int(((ends - 1) % height).max()) + 1 - r0
    crop = scratch("clean_runs.crop", (width, rows), np.uint8)
    crop.fill(0)
    pixels = covered(starts, ends)
    crop.reshape(-1)[(pixels // height - c0) * rows + pixels % height - r0] = 1
    labels = scratch("clean_runs.labels", (width, rows), np.int32)
    cv2.connectedComponents(crop, labels=labels, connectivity=8, ltype=cv2.CV_32S)
    run_labels = labels[cols - c0, top - r0].astype(np.int64)
    rules_say = kept_runs(run_labels, lengths, min_component_area, min_class_area)
    if rules_say is None:
        return None
    kept, label_areas = rules_say
    return CleanMap(None, starts[kept], ends[kept], run_labels[kept], label_areas, height), kept


def clean(probs: np.ndarray, thresholds: Sequence[float], min_component_areas: Sequence[int],
          min_class_areas: Sequence[int] | None = None, *, presence: np.ndarray | None = None,
          presence_thresholds: Sequence[float] | None = None, threads: int | None = None) -> np.ndarray:
    """Bool masks of the same shape as `probs` ((C, H, W) or (N, C, H, W) float32), per-class rules.

    Each (H, W) mask is stored column-major, Kaggle's pixel order: `encode` reads it without a transpose.
    `np.ascontiguousarray` gives row-major masks where a library needs them.

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
    out = np.empty((n, c, *probs.shape[:1:-1]), dtype=bool).transpose(0, 1, 3, 2)  # column-major maps

    def one(i: int, k: int) -> None:
        clean_class(probs[i, k], thresholds[k], min_component_areas[k], class_areas[k],
                    None if presence is None else float(presence[i, k]),
                    0.0 if presence_thresholds is None else presence_thresholds[k], out=out[i, k])

    for_each_map(one, n, c, threads)
    return out
