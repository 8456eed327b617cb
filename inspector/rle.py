"""Kaggle run-length encoding: column-major, 1-indexed `start length` pairs, "" for an empty mask.

Shared by the worker (events) and the trainer (train.csv, submissions). Pixel 1 is (row 0, col 0), pixel 2 is
(row 1, col 0): runs count down each column first. A widely copied decoder forgets the -1 on the start and
shifts every run by one pixel; tests pin the convention with real train.csv rows.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from inspector.scratch import scratch

SHAPE = (256, 1600)


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (any dtype, non-zero = foreground) as a Kaggle RLE string."""
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D mask, got shape {mask.shape}")
    binary = mask.view(np.uint8) if mask.dtype == bool else (mask != 0).view(np.uint8)
    if binary.T.flags.c_contiguous:  # stored column-major (clean's masks, decode's): Kaggle's order already
        return runs_to_string(*runs(binary.T.reshape(-1)))
    columns = scratch("encode.columns", binary.shape[::-1], np.uint8)
    cv2.transpose(np.ascontiguousarray(binary), dst=columns)  # column-major order as one C-contiguous copy
    return runs_to_string(*runs(columns.reshape(-1)))


def runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-indexed starts and lengths of the runs of non-zero values in a flat 0/1 array."""
    changed = np.not_equal(flat[1:], flat[:-1], out=scratch("runs.changed", (max(flat.size - 1, 0),), np.bool_))
    edges = np.flatnonzero(changed) + 1  # rises and falls alternate
    if flat.size and flat[0]:
        edges = np.concatenate([[0], edges])
    if flat.size and flat[-1]:
        edges = np.concatenate([edges, [flat.size]])
    starts = edges[::2]
    return starts + 1, edges[1::2] - starts


def columns_first(masks: Any) -> Any:
    """A mask's (or a batch of masks') pixels in Kaggle's order when flattened: the last two axes swapped, for
    NumPy arrays and torch tensors alike (a view; `.reshape(..., -1)` then walks down each column first)."""
    return masks.swapaxes(-1, -2)


def from_runs(starts: np.ndarray, ends: np.ndarray) -> str:
    """0-based [start, end) runs in column-major flat order (as `columns_first` walks them) -> Kaggle RLE."""
    return runs_to_string(np.asarray(starts) + 1, np.asarray(ends) - np.asarray(starts))


def runs_to_string(starts: np.ndarray, lengths: np.ndarray) -> str:
    """Interleave starts and lengths as `s l s l ...`."""
    if len(starts) == 0:
        return ""
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts
    pairs[1::2] = lengths
    return join_ints(pairs)


_POWERS = 10 ** np.arange(1, 19, dtype=np.int64)
TABLE_LIMIT = 1 << 19  # above every pixel number and run length of a 256 x 1600 frame (409,600)
_table: np.ndarray | None = None


def join_ints(values: np.ndarray) -> str:
    """Non-negative integers as decimal text separated by spaces, formatted in bulk with NumPy.

    Equal to " ".join(map(str, values)), about 8x faster: a frame with thousands of runs per class would
    otherwise spend most of its post-processing time converting integers one by one. Each value becomes a
    fixed-width cell (NUL padding, digits, space); values below TABLE_LIMIT are looked up in a table of all
    such cells (3.7 MB, built on first use in 30 ms), larger ones are computed digit by digit. Dropping the
    NULs leaves the text.
    """
    if len(values) == 0:
        return ""
    values = np.asarray(values, dtype=np.int64)
    if values.min() < 0:
        raise ValueError(f"join_ints formats non-negative integers, got {int(values.min())}")
    cells = np.take(_digit_table(), values, axis=0) if values.max() < TABLE_LIMIT else _cells(values)
    return cells[cells != 0].tobytes()[:-1].decode("ascii")


def _digit_table() -> np.ndarray:
    global _table
    if _table is None:  # two threads may both build it: same result, either one is kept
        _table = _cells(np.arange(TABLE_LIMIT, dtype=np.int64))
    return _table


def _cells(values: np.ndarray) -> np.ndarray:
    """(n, width + 1) uint8: NUL padding, the decimal digits, a space; width fits the largest value."""
    digits = 1 + np.searchsorted(_POWERS, values, side="right")  # decimal digits of each value
    width = int(digits.max())
    cells = np.empty((width + 1, len(values)), dtype=np.uint8)  # digit position major: contiguous rows
    rest = values.astype(np.int32) if width < 10 else values
    for col in range(width - 1, -1, -1):
        quotient = rest // 10
        np.add(rest - quotient * 10, 48, out=cells[col], casting="unsafe")  # ASCII digit
        rest = quotient
    cells[width] = 32  # the separator
    cells[:width][np.arange(width)[:, None] < (width - digits)[None, :]] = 0  # leading zeros -> padding
    return np.ascontiguousarray(cells.T)


def decode(rle: str | float | None, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Decode a Kaggle RLE string into a uint8 mask of `shape` (rows, cols); "" or NaN give an empty mask.

    Raises ValueError naming what is wrong: odd token count, a non-integer, a run outside the image, runs
    that are not increasing or overlap.
    """
    height, width = shape
    flat = np.zeros(height * width, dtype=np.uint8)
    if rle is None or (isinstance(rle, float) and np.isnan(rle)) or not str(rle).strip():
        return flat.reshape(shape, order="F")
    tokens = str(rle).split()
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of tokens ({len(tokens)}): expected `start length` pairs")
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError as exc:
        raise ValueError(f"RLE holds a token that is not an integer: {exc}") from None
    starts, lengths = values[0::2] - 1, values[1::2]
    if (lengths <= 0).any():
        raise ValueError(f"RLE run length must be positive, got {int(lengths.min())}")
    if starts.min() < 0 or (starts + lengths).max() > flat.size:
        raise ValueError(f"RLE run lies outside the {height}x{width} image (pixels 1..{flat.size})")
    if len(starts) > 1 and (starts[1:] < starts[:-1] + lengths[:-1]).any():
        raise ValueError("RLE runs are not increasing or overlap")
    # Mark run boundaries and integrate: O(pixels), no Python loop over runs.
    marks = np.zeros(flat.size + 1, dtype=np.int32)
    np.add.at(marks, starts, 1)
    np.add.at(marks, starts + lengths, -1)
    flat[:] = np.cumsum(marks[:-1]) > 0
    return flat.reshape(shape, order="F")
