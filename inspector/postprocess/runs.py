"""Column runs: a mask's foreground as vertical runs, in Kaggle's column-major pixel order.

A run never leaves its column, so every run lies inside one 8-connected component: labelling a run is one
lookup at its first pixel, a component's area is the sum of its runs, and the cleaned mask's RLE is the kept
runs, merged where one column's run ends on the last row and the next column's starts on the first. The
post-processing never walks the pixels once per component, nor twice for the RLE.

Positions are 0-based flat indices into the transposed mask (row j = column j of the frame): Kaggle's pixel
number minus one.
"""

from __future__ import annotations

import numpy as np

from inspector.scratch import scratch


def column_runs(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of every run of non-zero values in each row of `columns` ((W, H) uint8 0/1, a transposed
    mask), in order. Rows are padded with a zero at both ends, so no run crosses from one column to the next."""
    width, height = columns.shape
    padded = scratch("column_runs.padded", (width, height + 2), np.uint8)
    padded[:, 0] = 0
    padded[:, -1] = 0
    padded[:, 1:-1] = columns
    flat = padded.reshape(-1)
    changed = np.not_equal(flat[1:], flat[:-1], out=scratch("column_runs.changed", (flat.size - 1,), np.bool_))
    edges = np.flatnonzero(changed)  # rises and falls alternate within each padded row
    column, row = np.divmod(edges, height + 2)
    position = column * height + row
    return position[0::2], position[1::2]


def covered(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Every position inside the runs, in order: work in proportion to their pixels, not the frame's."""
    lengths = ends - starts
    first = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return first + np.arange(len(first))


def kaggle_runs(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column runs -> Kaggle's runs: a run that ends where the next one starts (last row, then first row of the
    next column) is one run in the flat column-major order."""
    if len(starts) > 1:
        joined = ends[:-1] == starts[1:]
        if joined.any():
            return starts[np.r_[True, ~joined]], ends[np.r_[~joined, True]]
    return starts, ends


def boxes(starts: np.ndarray, ends: np.ndarray, labels: np.ndarray, height: int,
          count: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels present among the runs (ascending) and their boxes [k, 4] (x, y, w, h) in frame coordinates;
    `labels` holds each run's label, `count` bounds them."""
    x = starts // height
    top, bottom = starts % height, (ends - 1) % height
    extremes = []
    for values, reduce, fill in ((x, np.minimum, np.iinfo(np.int64).max), (top, np.minimum, np.iinfo(np.int64).max),
                                 (x, np.maximum, -1), (bottom, np.maximum, -1)):
        out = np.full(count, fill, dtype=np.int64)
        reduce.at(out, labels, values)
        extremes.append(out)
    x0, y0, x1, y1 = extremes
    ids = np.flatnonzero(x1 >= 0)
    return ids, np.stack([x0[ids], y0[ids], x1[ids] - x0[ids] + 1, y1[ids] - y0[ids] + 1], axis=1)
