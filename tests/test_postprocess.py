import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inspector.postprocess import PostprocessParams, analyse_cpu, analyse_torch, clean
from inspector.postprocess.components import label_cpu, label_torch
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


# --- the torch twin against the reference --------------------------------------------------------------------

def spiral(h: int, w: int) -> np.ndarray:
    """One connected one-pixel-wide square spiral filling the frame (worst case for label propagation)."""
    m = np.zeros((h, w), bool)
    top, left, bottom, right = 0, 0, h - 1, w - 1
    while top <= bottom and left <= right:
        m[top, left:right + 1] = True
        m[top:bottom + 1, right] = True
        if bottom - top >= 2:
            m[bottom, left:right + 1] = True
        if right - left >= 2 and bottom - top >= 4:
            m[top + 2:bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        if top <= bottom and left - 2 >= 0:
            m[top - 1, left - 2] = True  # connect this ring to the next
    return m


def adversarial(h: int, w: int) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    line = np.zeros((h, w), bool)
    line[h // 2, :] = True
    vline = np.zeros((h, w), bool)
    vline[:, w // 3] = True
    diag = np.zeros((h, w), bool)
    diag[np.arange(h), (np.arange(h) * 3) % w] = True
    return {"spiral": spiral(h, w), "line_across": line, "vertical_line": vline, "diagonal_steps": diag,
            "checkerboard": (yy + xx) % 2 == 0, "full": np.ones((h, w), bool), "empty": np.zeros((h, w), bool)}


@pytest.mark.parametrize("name", list(adversarial(8, 8)))
def test_label_torch_matches_cv2_partition(name: str) -> None:
    m = adversarial(H, W)[name]
    ref, stats = label_cpu(m)
    got = label_torch(torch.from_numpy(m)[None])[0].numpy()
    assert ((got > 0) == m).all()
    # same partition: a bijection between labels
    pairs = np.unique(np.stack([ref[m], got[m]]), axis=1) if m.any() else np.zeros((2, 0))
    assert pairs.shape[1] == len(stats) - 1 == len(np.unique(got[m]))


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for fa, fb in zip(a, b, strict=True):
        assert [d.class_id for d in fa] == [d.class_id for d in fb]
        for da, db in zip(fa, fb, strict=True):
            assert da.rle == db.rle and da.area == db.area and da.components == db.components
            assert da.score == pytest.approx(db.score, rel=1e-5)


def random_maps(seed: int, n: int, h: int, w: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, 4, h, w), np.float32)
    for i in range(n):
        for k in range(4):
            m = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 3)
            out[i, k] = (m - m.min()) / (m.max() - m.min())
    return out


PARAMS = PostprocessParams(thresholds=(0.55, 0.6, 0.5, 0.65), min_component_area=(3, 8, 1, 20),
                           min_class_area=(10, 30, 0, 50), presence_threshold=(0.3, 0.5, 0.0, 0.7))


@pytest.mark.parametrize("seed", range(3))
def test_torch_twin_matches_cpu_on_random_maps(seed: int) -> None:
    probs = random_maps(seed, 2, H, W)
    presence = np.random.default_rng(seed).random((2, 4)).astype(np.float32)
    assert_same(analyse_cpu(probs, presence, PARAMS),
                analyse_torch(torch.from_numpy(probs), torch.from_numpy(presence), PARAMS))


def test_torch_twin_matches_cpu_on_adversarial_shapes_and_touching_classes() -> None:
    shapes = list(adversarial(H, W).values())
    probs = np.full((len(shapes), 4, H, W), 0.1, np.float32)
    for i, m in enumerate(shapes):
        probs[i, 0][m] = 0.9
        probs[i, 1][~m] = 0.8  # the complement in another class: touching classes
        probs[i, 2] = np.where(np.roll(m, 1, axis=1), 0.7, 0.2)
    assert_same(analyse_cpu(probs, None, PARAMS), analyse_torch(torch.from_numpy(probs), None, PARAMS))


@pytest.mark.gpu
def test_gpu_twin_matches_cpu_full_frames() -> None:
    probs = random_maps(7, 4, 256, 1600)
    shapes = adversarial(256, 1600)
    for i, name in enumerate(("spiral", "line_across", "checkerboard", "diagonal_steps")):
        probs[i, 3] = np.where(shapes[name], 0.95, 0.05)
    presence = np.random.default_rng(7).random((4, 4)).astype(np.float32)
    got = analyse_torch(torch.from_numpy(probs).cuda(), torch.from_numpy(presence).cuda(), PARAMS)
    assert_same(analyse_cpu(probs, presence, PARAMS), got)


@pytest.mark.gpu
def test_gpu_rle_matches_cpu_rle_fp16_maps() -> None:
    probs16 = torch.from_numpy(random_maps(3, 2, 256, 1600)).half()
    want = analyse_cpu(probs16.float().numpy(), None, PARAMS)
    assert_same(want, analyse_torch(probs16.cuda(), None, PARAMS))
