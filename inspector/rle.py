"""Kaggle run-length encoding: column-major, 1-indexed `start length` pairs, "" for an empty mask.

Shared by the worker (events) and the trainer (train.csv, submissions). Pixel 1 is (row 0, col 0), pixel 2 is
(row 1, col 0): runs count down each column first. A widely copied decoder forgets the -1 on the start and
shifts every run by one pixel; tests pin the convention with real train.csv rows.
"""

from __future__ import annotations

import numpy as np

SHAPE = (256, 1600)


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (any dtype, non-zero = foreground) as a Kaggle RLE string."""
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D mask, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    return runs_to_string(*runs(flat))


def runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-indexed starts and lengths of the runs of True in a flat boolean array."""
    padded = np.zeros(flat.size + 2, dtype=np.int8)
    padded[1:-1] = flat
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts = edges[::2]
    return starts + 1, edges[1::2] - starts


def runs_to_string(starts: np.ndarray, lengths: np.ndarray) -> str:
    """Interleave starts and lengths as `s l s l ...`."""
    if len(starts) == 0:
        return ""
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


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
