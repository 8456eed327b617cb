import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from inspector.rle import TABLE_LIMIT, decode, encode, join_ints


@settings(max_examples=200, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 60)), elements=st.integers(0, 1)))
def test_round_trip_any_mask(mask: np.ndarray) -> None:
    rle = encode(mask)
    assert np.array_equal(decode(rle, mask.shape), mask)
    assert rle == kernel_mask2rle(mask)  # the widely used Kaggle kernel's encoder, as an independent oracle
    assert encode(np.asfortranarray(mask)) == encode(mask.astype(bool)) == rle  # any layout, any dtype


def kernel_mask2rle(img: np.ndarray) -> str:
    pixels = np.concatenate([[0], img.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 30)), max_size=20))
def test_round_trip_canonical_strings(gaps_and_lengths: list[tuple[int, int]]) -> None:
    """Any canonical string (runs separated by at least one pixel) survives decode -> encode unchanged."""
    pos, tokens = 1, []
    for gap, length in gaps_and_lengths:
        pos += gap + (1 if tokens else 0)
        if pos + length - 1 > 32 * 50:
            break
        tokens += [pos, length]
        pos += length
    rle = " ".join(map(str, tokens))
    assert encode(decode(rle, (32, 50))) == rle


def test_real_train_csv_rows_round_trip(sample_dir) -> None:
    rows = list(csv.DictReader((sample_dir / "train.csv").read_text().splitlines()))
    assert len(rows) == 48
    for row in rows:
        mask = decode(row["EncodedPixels"])
        assert mask.shape == (256, 1600) and mask.dtype == np.uint8
        assert encode(mask) == row["EncodedPixels"], row["ImageId"]


def test_convention_is_column_major_and_one_indexed() -> None:
    # pixel 1 = (row 0, col 0); pixel 2 = (row 1, col 0); pixel 257 = (row 0, col 1)
    mask = decode("1 2 257 1")
    assert mask[0, 0] == mask[1, 0] == mask[0, 1] == 1 and mask.sum() == 3
    assert encode(mask) == "1 2 257 1"


def test_known_real_row_sum(sample_dir) -> None:
    """The starter decoder without -1 shifts every run by one pixel; pin the first run of a real row."""
    rows = csv.DictReader((sample_dir / "train.csv").read_text().splitlines())
    row = next(r for r in rows if r["ImageId"] == "002fc4e19.jpg")
    start, length = map(int, row["EncodedPixels"].split()[:2])  # 146021 3
    mask = decode(row["EncodedPixels"])
    col, r = divmod(start - 1, 256)
    assert mask[r:r + length, col].all() and mask[r - 1, col] == 0


def test_empty() -> None:
    assert encode(np.zeros((256, 1600), np.uint8)) == ""
    assert decode("").sum() == 0 and decode(float("nan")).sum() == 0


@pytest.mark.parametrize("rle, message", [
    ("1 2 3", "odd number"),                 # a start without a length
    ("1 x", "not an integer"),               # garbage token
    ("0 5", "outside"),                      # pixel numbers start at 1
    ("409600 2", "outside"),                 # runs past the last pixel
    ("10 5 12 3", "overlap"),                # second run starts inside the first
    ("10 0", "positive"),                    # empty run
])
def test_decode_errors_name_the_problem(rle: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(rle)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**15), max_size=50) | st.lists(st.integers(0, TABLE_LIMIT - 1), max_size=50))
def test_join_ints_is_str_join(values: list[int]) -> None:
    """Both paths: the lookup table (every value below TABLE_LIMIT) and digit by digit (any larger one)."""
    assert join_ints(np.array(values, dtype=np.int64)) == " ".join(map(str, values))


def test_join_ints_refuses_negative_values() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        join_ints(np.array([3, -1]))
