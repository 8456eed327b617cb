"""analyse_device against the CPU reference: bit for bit on masks (RLE), boxes, areas and scores, for every path
(host; runs without a labeller; labelled through CuPy's adapter with its scipy twin and through CV-CUDA's adapter
with an imitation of its kernels, spills included; CuPy and CV-CUDA themselves on a GPU), on adversarial shapes,
real Severstal masks and a real backend's channels-last FP16 output."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest
import torch

from inspector.postprocess import PostprocessParams, analyse_cpu, analyse_device
from inspector.postprocess.labellers import label_cvcuda_twin, label_scipy

H, W = 64, 96
PARAMS = PostprocessParams(thresholds=(0.55, 0.6, 0.5, 0.65), min_component_area=(3, 8, 1, 20),
                           min_class_area=(10, 30, 0, 50), presence_threshold=(0.3, 0.5, 0.0, 0.7))


@functools.cache
def _spiral(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    y, x, dy, dx = 0, 0, 0, 1
    m[0, 0] = True
    while True:
        for _ in range(2):  # straight on if it keeps a one-pixel gap to the arm before, else turn right once
            ny, nx, ay, ax = y + dy, x + dx, y + 2 * dy, x + 2 * dx
            if 0 <= ny < h and 0 <= nx < w and not m[ny, nx] and not (0 <= ay < h and 0 <= ax < w and m[ay, ax]):
                y, x = ny, nx
                m[y, x] = True
                break
            dy, dx = dx, -dy
        else:
            return m


def spiral(h: int, w: int) -> np.ndarray:
    """One connected one-pixel-wide square spiral filling the frame, arms one pixel apart: the worst case for label
    propagation and for a union-find without path compression (its path visits half the frame's pixels)."""
    return _spiral(h, w).copy()


def adversarial(h: int, w: int) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    zigzag = np.zeros((h, w), bool)  # a frame-wide zigzag: one component whose path visits every row
    for x in range(w):
        if x % 4 == 0:
            zigzag[:, x] = True  # a bar, joined to the next at the bottom, then at the top, ...
        else:
            zigzag[h - 1 if (x // 4) % 2 == 0 else 0, x] = True
    crossing = np.zeros((h, w), np.uint8)  # a one-pixel scratch (8-connected) crossing a vertical mark
    crossing[:, w // 2] = 1
    cv2.line(crossing, (0, 0), (w - 1, h - 1), 1, 1, lineType=cv2.LINE_8)
    crossing = crossing.astype(bool)
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
    "host (CPU tensors: the reference on views)": {},
    "runs, no labeller (CUDA without CV-CUDA or CuPy)": {"labeller": None, "compact": True},
    "CuPy's adapter, scipy twin": {"labeller": label_scipy},
    "CV-CUDA's adapter, its kernels imitated": {"labeller": label_cvcuda_twin},
    "CV-CUDA's adapter, max_labels 4 (maps spill to the runs path)": {"labeller": label_cvcuda_twin, "max_labels": 4},
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
        # max_labels 1: every map with two components or more spills (some real maps do)
        assert label_cvcuda_twin(torch.from_numpy(masks).view(-1, 256, 1600), 1).spilled.any()
        assert_same(want, analyse_device(maps, None, params, labeller=label_cvcuda_twin, max_labels=1))


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


def test_worst_case_shapes_on_full_frames() -> None:
    """CuPy's worst case (one long thin component: a frame-filling spiral, a frame-wide zigzag) through its adapter
    and through the runs path, at 256 x 1600; the acceptance run times the same batch on the device."""
    shapes = adversarial(256, 1600)
    probs = torch.from_numpy(shaped_probs([shapes["spiral"], shapes["zigzag"]]))
    want = analyse_cpu(probs.numpy(), None, PARAMS)
    assert [len(d.components) for d in want[0][:1]] == [1]  # the spiral is one component
    for path in ("CuPy's adapter, scipy twin", "runs, no labeller (CUDA without CV-CUDA or CuPy)"):
        assert_same(want, analyse_device(probs, None, PARAMS, **PATHS[path]))


def caret() -> np.ndarray:
    """A '^' of 5 pixels: its first pixel in raster order (the tip) is neither its leftmost nor a corner."""
    m = np.zeros((4, 6), bool)
    m[0, 2] = m[1, 1] = m[1, 3] = m[2, 0] = m[2, 4] = True
    return m


def test_cvcuda_imitation_follows_the_kernel_not_the_header() -> None:
    """OpLabel.cu / TestOpLabel.cpp: stats columns 1-2 are the first pixel in raster order, 3-4 are max|x - x0| + 1
    and max|y - y0| + 1. For the caret that row is [2, 2, 0, 3, 3, 5, 0]; its box is x 0, y 0, w 5, h 3."""
    from inspector.postprocess.labellers import cvcuda_outputs_cpu

    labels, count, stats = cvcuda_outputs_cpu(caret()[None], max_labels=4)
    assert count.tolist() == [1] and stats[0, 0].tolist() == [2, 2, 0, 3, 3, 5, 0]
    assert sorted(np.unique(labels).tolist()) == [0, 1]
    probs = np.zeros((1, 4, 4, 6), np.float32)
    probs[0, 0][caret()] = 0.9
    params = PostprocessParams(thresholds=(0.5,) * 4, min_component_area=(0,) * 4, min_class_area=(0,) * 4,
                               presence_threshold=(0.0,) * 4)
    got = analyse_device(torch.from_numpy(probs), None, params, labeller=label_cvcuda_twin)
    assert got == analyse_cpu(probs, None, params) and got[0][0].components == [[0, 0, 5, 3, 5]]


def test_reading_cvcuda_stats_as_boxes_would_be_wrong_on_the_adversarial_set() -> None:
    """The bug this adapter no longer has: columns 1-4 taken as x, y, w, h disagree with the true boxes."""
    from inspector.postprocess.labellers import cvcuda_outputs_cpu

    maps = shaped_probs(list(adversarial(H, W).values()))[:, :3] > 0.5  # the shaped classes (not the noise)
    maps = maps.reshape(-1, H, W)
    _, count, stats = cvcuda_outputs_cpu(maps, max_labels=4096)
    wrong = total = 0
    for i, mask in enumerate(maps):
        _, _, truth, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        naive = {tuple(r) for r in stats[i, :count[i], 1:6].tolist()}
        boxes = {tuple(r) for r in truth[1:].tolist()}
        total += len(boxes)
        wrong += len(boxes - naive)
    assert total > 20 and wrong > 5


def test_labels_contract_per_map_ranges_and_spills() -> None:
    """Both adapters give consecutive ids per map, maps in order, with the per-map counts OpenCV finds; CV-CUDA's
    marks a map spilled beyond max_labels and gives its pixels no id."""
    maps = torch.from_numpy(shaped_probs(list(adversarial(H, W).values())) > 0.5).reshape(-1, H, W)
    counts = [cv2.connectedComponents(m.numpy().astype(np.uint8), connectivity=8)[0] - 1 for m in maps]
    for labels in (label_scipy(maps, 0), label_cvcuda_twin(maps, 10_000)):
        assert labels.count.tolist() == counts and labels.total == sum(counts)
        first = 0
        for m, n in enumerate(counts):
            ids = torch.unique(labels.ids[m])
            assert ids[ids > 0].tolist() == list(range(first + 1, first + n + 1))
            first += n
    spilled = label_cvcuda_twin(maps, 4)
    over = torch.tensor(counts) > 4
    assert torch.equal(spilled.spilled, over) and not spilled.ids[over].any()
    assert spilled.total == sum(n for n in counts if n <= 4)


def test_labeller_choice_says_why() -> None:
    from inspector.postprocess.labellers import choose, importable

    cpu = choose("cpu")
    assert cpu.fn is None and "host memory" in cpu.why
    cuda = choose("cuda")  # which labeller a CUDA tensor would get on this machine
    if not (importable("cvcuda") or importable("cupy")):
        assert cuda.fn is None and "cvcuda" in cuda.why and "cupyx" in cuda.why
    else:
        assert cuda.name in ("cvcuda", "cupy") and cuda.why


def test_pool_sized_from_the_cores_left_after_decode() -> None:
    from inspector.postprocess import pool

    assert pool.workers_after_decode(8, available=16) == 7  # the H200 machine: producer + 8 decoders
    assert pool.workers_after_decode(1, available=2) == 1  # never below the consumer itself
    before = pool.workers()
    try:
        assert pool.size_for(0) == pool.workers() == pool.workers_after_decode(0)
        assert pool.on_pool(lambda x: x * 2, list(range(10))) == [2 * x for x in range(10)]
    finally:
        pool._resize(before)


# -- on a GPU --------------------------------------------------------------------------------------------------

def full_frames_cuda() -> torch.Tensor:
    return torch.from_numpy(shaped_probs(list(adversarial(256, 1600).values()))).cuda().half()


@pytest.mark.gpu
def test_cupy_labeller_gives_scipys_ids_and_the_cpu_answer() -> None:
    pytest.importorskip("cupyx.scipy.ndimage")
    from inspector.postprocess.labellers import label_cupy

    probs = full_frames_cuda()
    maps = (probs.float() > 0.5).view(-1, 256, 1600)
    got, twin = label_cupy(maps, 0), label_scipy(maps.cpu(), 0)
    assert got.total == twin.total and torch.equal(got.ids.cpu(), twin.ids)
    assert torch.equal(got.count.cpu(), twin.count)
    want = analyse_cpu(probs.float().cpu().numpy(), None, PARAMS)
    assert_same(want, analyse_device(probs, None, PARAMS, labeller=label_cupy))


@pytest.mark.gpu
def test_cupy_labels_on_the_callers_stream() -> None:
    """Maps written on a busy side stream and labelled there at once: CuPy on its legacy default stream would read
    them before they are written (torch's streams do not wait for it)."""
    pytest.importorskip("cupyx.scipy.ndimage")
    from inspector.postprocess.labellers import label_cupy

    probs = full_frames_cuda()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # about 0.1 s of GPU time before the maps exist
        maps = (probs.float() > 0.5).view(-1, 256, 1600)
        got = label_cupy(maps, 0)
    torch.cuda.synchronize()
    assert torch.equal(got.ids.cpu(), label_scipy(maps.cpu(), 0).ids)


@pytest.mark.gpu
def test_cvcuda_outputs_match_its_imitation_and_the_cpu_answer() -> None:
    pytest.importorskip("cvcuda")
    import cvcuda

    from inspector.postprocess.labellers import cvcuda_outputs_cpu, label_cvcuda

    probs = full_frames_cuda()
    maps = (probs.float() > 0.5).view(-1, 256, 1600)
    m = maps.shape[0]
    src = cvcuda.as_tensor(maps.to(torch.uint8).unsqueeze(-1).contiguous(), "NHWC")
    bg = cvcuda.as_tensor(torch.zeros(m, dtype=torch.uint8, device="cuda"), "N")
    _, count, stats = cvcuda.label(src, cvcuda.CONNECTIVITY_8_2D, cvcuda.LABEL.SEQUENTIAL, count=True, stats=True,
                                   max_labels=4096, bg_label=bg)
    count = torch.as_tensor(count.cuda(), device="cuda").view(m).cpu().numpy()
    stats = torch.as_tensor(stats.cuda(), device="cuda").view(m, 4096, 7).cpu().numpy()
    _, want_count, want_stats = cvcuda_outputs_cpu(maps.cpu().numpy(), 4096)
    assert count.tolist() == want_count.tolist()
    for i in range(m):  # rows in region order, which is arbitrary: compare them sorted by root
        n = min(int(count[i]), 4096)
        assert sorted(map(tuple, stats[i, :n].tolist())) == sorted(map(tuple, want_stats[i, :n].tolist()))
    want = analyse_cpu(probs.float().cpu().numpy(), None, PARAMS)
    assert_same(want, analyse_device(probs, None, PARAMS, labeller=label_cvcuda))


@pytest.mark.gpu
def test_every_device_path_on_cuda_matches_cpu() -> None:
    probs = full_frames_cuda()
    want = analyse_cpu(probs.float().cpu().numpy(), None, PARAMS)
    assert_same(want, analyse_device(probs, None, PARAMS))  # whichever labeller this machine has
    assert_same(want, analyse_device(probs, None, PARAMS, labeller=None))  # the runs path
    assert_same(want, analyse_device(probs, None, PARAMS, labeller=label_scipy))  # a CPU labeller on CUDA maps
