import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inspector.postprocess import clean
from inspector.postprocess.components import label_cpu
from inspector.postprocess.masks import clean_class
from inspector.rle import encode

H, W = 64, 96


def one_class(mask: np.ndarray, value: float = 0.9) -> np.ndarray:
    probs = np.zeros((4, *mask.shape), np.float32)
    probs[0] = np.where(mask, value, 0.1)
    return probs


@pytest.mark.parametrize("value, threshold, kept", [
    (0.5, 0.5, False),   # strict: p == threshold is background
    (0.5001, 0.5, True),
])
def test_threshold_is_strict(value: float, threshold: float, kept: bool) -> None:
    m = np.zeros((H, W), bool)
    m[10:20, 10:20] = True
    out = clean(one_class(m, value), [threshold] * 4, [0] * 4)
    assert out[0].any() == kept


@pytest.mark.parametrize("area, min_area, kept", [
    (100, 100, True),    # exactly the minimum is kept
    (99, 100, False),    # one pixel short is dropped
])
def test_min_component_area_boundary(area: int, min_area: int, kept: bool) -> None:
    m = np.zeros((H, W), bool)
    m.flat[np.arange(area)] = True  # first rows, row-major: one component
    out = clean(one_class(m), [0.5] * 4, [min_area] * 4)
    assert out[0].sum() == (area if kept else 0)


def test_diagonal_pixels_are_one_component() -> None:
    """8-connectivity: a diagonal staircase is one component of 20 pixels, kept at minimum 20."""
    m = np.zeros((H, W), bool)
    idx = np.arange(20)
    m[idx, idx] = True
    assert clean(one_class(m), [0.5] * 4, [20] * 4)[0].sum() == 20


def test_small_components_dropped_big_kept() -> None:
    m = np.zeros((H, W), bool)
    m[5:25, 5:25] = True  # 400 px
    m[40, 40] = True      # 1 px
    out = clean(one_class(m), [0.5] * 4, [10] * 4)
    assert out[0].sum() == 400 and not out[0, 40, 40]


def test_class_area_and_presence_gates() -> None:
    m = np.zeros((H, W), bool)
    m[5:15, 5:15] = True  # 100 px
    probs = one_class(m)
    assert not clean(probs, [0.5] * 4, [0] * 4, [101] * 4)[0].any()   # below the class minimum
    assert clean(probs, [0.5] * 4, [0] * 4, [100] * 4)[0].sum() == 100
    pres = np.array([0.69, 0.9, 0.9, 0.9], np.float32)
    gated = clean(probs, [0.5] * 4, [0] * 4, presence=pres, presence_thresholds=[0.7] * 4)
    assert not gated[0].any()


def test_batched_shape() -> None:
    probs = np.random.default_rng(0).random((3, 4, H, W), dtype=np.float32)
    out = clean(probs, [0.5] * 4, [5] * 4, [0] * 4)
    assert out.shape == probs.shape and out.dtype == bool


# --- the run-based reference against the plain per-component rule -------------------------------------------

def per_component(prob: np.ndarray, threshold: float, min_area: int, min_class: int) -> tuple[np.ndarray, list]:
    """The rule written the slow, obvious way: label the frame, keep each big enough component, then gate."""
    labels, stats = label_cpu(prob > np.float32(threshold))
    mask = np.zeros(prob.shape, bool)
    rows = []
    for c in range(1, len(stats)):
        if stats[c, 4] >= min_area:
            mask |= labels == c
            rows.append([int(v) for v in stats[c]])
    if mask.sum() < max(min_class, 1):
        return np.zeros(prob.shape, bool), []
    return mask, sorted(rows)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), height=st.integers(1, 40), width=st.integers(1, 40),
       density=st.floats(0.05, 0.95), min_area=st.integers(0, 12), min_class=st.integers(0, 60))
def test_clean_class_matches_the_per_component_rule(seed: int, height: int, width: int, density: float,
                                                    min_area: int, min_class: int) -> None:
    """Random masks (runs that end on the last row next to runs starting on the first row of the next column,
    one-pixel frames, full frames): same mask, RLE and boxes as labelling and keeping components one by one."""
    prob = (np.random.default_rng(seed).random((height, width)) < density).astype(np.float32)
    kept = clean_class(prob, 0.5, min_area, min_class)
    mask, rows = per_component(prob, 0.5, min_area, min_class)
    assert np.array_equal(kept.mask, mask)
    assert kept.rle() == encode(mask)
    assert sorted(map(list, kept.components().tolist())) == rows
    assert kept.area == int(mask.sum())


def test_results_do_not_share_the_per_thread_scratch() -> None:
    """clean_class reuses per-thread buffers: an earlier result must survive a later call."""
    rng = np.random.default_rng(5)
    a, b = (rng.random((2, 48, 80)) < 0.4).astype(np.float32)
    first = clean_class(a, 0.5, 3)
    expected = per_component(a, 0.5, 3, 0)[0]
    clean_class(b, 0.5, 3)
    assert np.array_equal(first.mask, expected) and first.rle() == encode(expected)
    both = clean(np.stack([a, b]), [0.5, 0.5], [3, 3])
    assert np.array_equal(both[0], expected) and np.array_equal(both[1], per_component(b, 0.5, 3, 0)[0])
