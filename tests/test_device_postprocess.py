"""analyse_device against the CPU reference: bit for bit on masks (RLE), boxes, areas and scores, for every path
(gated; labelled with the OpenCV twin of CV-CUDA's labeller; labelled with CV-CUDA on a GPU), on adversarial
shapes, real Severstal masks and a real backend's channels-last FP16 output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inspector.postprocess import PostprocessParams, analyse_cpu, analyse_device
from inspector.postprocess.components import label_maps_cpu

H, W = 64, 96
PARAMS = PostprocessParams(thresholds=(0.55, 0.6, 0.5, 0.65), min_component_area=(3, 8, 1, 20),
                           min_class_area=(10, 30, 0, 50), presence_threshold=(0.3, 0.5, 0.0, 0.7))


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
    zigzag = np.zeros((h, w), bool)  # a frame-wide zigzag: one component whose path visits every row
    for x in range(w):
        if x % 4 == 0:
            zigzag[:, x] = True  # a bar, joined to the next at the bottom, then at the top, ...
        else:
            zigzag[h - 1 if (x // 4) % 2 == 0 else 0, x] = True
    crossing = np.zeros((h, w), bool)  # a one-pixel scratch crossing a vertical mark
    crossing[:, w // 2] = True
    crossing[np.arange(h), (np.arange(h) * w // h) % w] = True
    diagonal = np.zeros((h, w), bool)  # 8-connected only through corners
    diagonal[np.arange(h), np.arange(h) % w] = True
    diagonal[np.arange(h), (w - 1 - np.arange(h)) % w] = True
    return {"spiral": spiral(h, w), "zigzag": zigzag, "crossing_scratch": crossing, "diagonals": diagonal,
            "checkerboard": (yy + xx) % 2 == 0, "full": np.ones((h, w), bool), "empty": np.zeros((h, w), bool),
            "column_wrap": (xx * h + yy) % 7 < 3}  # runs ending on the last row next to runs on the first


def shaped_probs(shapes: list[np.ndarray]) -> np.ndarray:
    """Each shape in class 1, its complement in class 2 (touching classes), a shifted copy in class 3, noise in 4."""
    h, w = shapes[0].shape
    rng = np.random.default_rng(0)
    probs = np.full((len(shapes), 4, h, w), 0.1, np.float32)
    for i, m in enumerate(shapes):
        probs[i, 0][m] = 0.9
        probs[i, 1][~m] = 0.8
        probs[i, 2] = np.where(np.roll(m, 1, axis=1), 0.7, 0.2)
        probs[i, 3] = rng.random((h, w), dtype=np.float32)
    return probs


def assert_same(want: list, got: list) -> None:
    """Bit for bit: RLE (the mask), area, components (boxes and areas) and score."""
    assert len(want) == len(got)
    for fa, fb in zip(want, got, strict=True):
        assert [d.class_id for d in fa] == [d.class_id for d in fb]
        for da, db in zip(fa, fb, strict=True):
            assert (da.rle, da.area, da.components, da.score) == (db.rle, db.area, db.components, db.score)


PATHS = {
    "gated": {},
    "gated, compact copies (the path CUDA without CV-CUDA takes)": {"compact": True},
    "labelled": {"labeller": label_maps_cpu},
    "labelled, tiny max_labels (overflow to the CPU)": {"labeller": label_maps_cpu, "max_labels": 4},
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_adversarial_shapes(path: str, dtype: torch.dtype) -> None:
    probs = torch.from_numpy(shaped_probs(list(adversarial(H, W).values()))).to(dtype)
    want = analyse_cpu(probs.float().numpy(), None, PARAMS)
    assert_same(want, analyse_device(probs, None, PARAMS, **PATHS[path]))
    assert sum(len(f) for f in want) > 10  # the shapes do produce defects


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("seed", range(3))
def test_random_maps_and_presence(path: str, seed: int) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    probs = np.empty((3, 4, H, W), np.float32)
    for i in range(3):
        for k in range(4):
            m = cv2.GaussianBlur(rng.random((H, W)).astype(np.float32), (0, 0), 3)
            probs[i, k] = (m - m.min()) / (m.max() - m.min())
    presence = rng.random((3, 4)).astype(np.float32)
    want = analyse_cpu(probs, presence, PARAMS)
    assert_same(want, analyse_device(torch.from_numpy(probs), torch.from_numpy(presence), PARAMS, **PATHS[path]))


def test_real_severstal_masks(sample_dir) -> None:
    from trainer.data import load_dataset, masks_of

    samples = [s for s in load_dataset(sample_dir) if s.rles][:6]
    masks = np.stack([masks_of(s) for s in samples]).astype(bool)
    noise = np.random.default_rng(1).random(masks.shape, dtype=np.float32) * 0.3
    probs = np.where(masks, 0.7, 0.0).astype(np.float32) + noise  # real shapes, ragged at the edges
    params = PostprocessParams(thresholds=(0.5,) * 4, min_component_area=(50,) * 4, min_class_area=(200,) * 4,
                               presence_threshold=(0.0,) * 4)
    for dtype in (torch.float32, torch.float16):
        maps = torch.from_numpy(probs).to(dtype)
        want = analyse_cpu(maps.float().numpy(), None, params)
        assert sum(len(f) for f in want) >= 6
        for path in PATHS.values():
            assert_same(want, analyse_device(maps, None, params, **path))


def test_real_backend_channels_last_fp16_output(tiny_engine, sample_dir) -> None:
    """The torch backend's output as it leaves a CUDA engine (FP16, channels-last) equals the CPU reference."""
    from inspector import backends, engines
    from trainer.data import load_dataset, read_image

    frames = torch.from_numpy(np.stack([read_image(s.path) for s in load_dataset(sample_dir)[:4]]))[:, None]
    with backends.load(engines.load(tiny_engine), "torch", "cpu") as runner:
        out = runner.infer(frames)
    probs = out.probs.half().contiguous(memory_format=torch.channels_last)
    presence = out.presence.half()
    assert not probs.is_contiguous()
    params = PostprocessParams(thresholds=(0.5,) * 4, min_component_area=(10,) * 4, min_class_area=(20,) * 4,
                               presence_threshold=(0.0,) * 4)
    want = analyse_cpu(probs.float().numpy(), presence.float().numpy(), params)
    assert sum(len(f) for f in want) > 0  # the untrained tiny model marks something at 0.5
    for path in PATHS.values():
        assert_same(want, analyse_device(probs, presence, params, **path))


def test_fp16_threshold_is_compared_in_float32() -> None:
    """0.55 is 0.5498 in FP16: a map at exactly fp16(0.5498) must stay background, as on the CPU."""
    value = torch.tensor(0.55, dtype=torch.float16)
    probs = torch.full((1, 4, 8, 8), float(value), dtype=torch.float16)
    params = PostprocessParams(thresholds=(0.55,) * 4, min_component_area=(0,) * 4, min_class_area=(0,) * 4,
                               presence_threshold=(0.0,) * 4)
    assert analyse_device(probs, None, params) == analyse_cpu(probs.float().numpy(), None, params) == [[]]


# -- on a GPU --------------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cvcuda_labelled_path_matches_cpu_full_frames() -> None:
    pytest.importorskip("cvcuda")
    from inspector.postprocess.components import label_maps_cuda

    shapes = adversarial(256, 1600)
    probs = torch.from_numpy(shaped_probs(list(shapes.values()))).cuda().half()
    want = analyse_cpu(probs.float().cpu().numpy(), None, PARAMS)
    assert_same(want, analyse_device(probs, None, PARAMS, labeller=label_maps_cuda))
    assert_same(want, analyse_device(probs, None, PARAMS))  # the default on CUDA with CV-CUDA installed


@pytest.mark.gpu
def test_gated_path_on_cuda_matches_cpu() -> None:
    probs = torch.from_numpy(shaped_probs(list(adversarial(256, 1600).values()))).cuda()
    want = analyse_cpu(probs.cpu().numpy(), None, PARAMS)
    assert_same(want, analyse_device(probs, None, PARAMS))  # whichever path this machine takes
    from inspector.postprocess import device

    assert_same(want, device._gated(probs, None, PARAMS, device._constants(PARAMS, probs.device), True))
