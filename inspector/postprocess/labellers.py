"""The device labellers, their CPU twins, and which one runs where (one table, one choice, said at start-up).

    cvcuda   `cvcuda.label` (the optional `gpu` extra, cvcuda-cu13): one batched call, 8-connectivity asked for
             explicitly (CV-CUDA defaults to 4), sequential labels, count and stats; adapted by
             `components.from_cvcuda`. Bounded: its union-find compresses paths.
    cupy     `cupyx.scipy.ndimage.label` on the batch [M, H, W] with `STRUCTURE` (a 3x3x3 structure whose middle
             plane is ones: 8-connectivity inside each map, none across maps), one call per batch, run on the
             caller's torch stream; adapted by `components.from_global`. Worst case: its union-find walks to the
             root without path compression, so one long thin component (a spiral, a frame-wide zigzag) costs
             more than many blobs; `benchmarks/gpu_acceptance.py` times those batches on the device.

Their twins run the same adapters on the CPU, so everything but the library call is tested here bit for bit:
`label_scipy` is the same call in `scipy.ndimage` (same ids); `label_cvcuda_twin` imitates CV-CUDA's kernels as its
source and gold test define them (region order arbitrary, stats in its layout). Without a device labeller
(`choose` says so) the maps are labelled on the host from their device-extracted runs (`device.py`).

CuPy launches on its current stream: without `_cupy_stream` it would use the legacy default stream, unordered
against torch's non-blocking streams, and read the maps before they are written. Called from the consumer thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from inspector.postprocess.components import STATS_COLUMNS, Labels, from_cvcuda, from_global

Labeller = Callable[[torch.Tensor, int], Labels]  # (bool maps [M, H, W], max_labels) -> Labels

STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
STRUCTURE[1] = True  # neighbours in the same map only (axis 0 is the map index)


def label_cupy(maps: torch.Tensor, max_labels: int = 0) -> Labels:
    """cupyx.scipy.ndimage.label on CUDA maps, on the current torch stream; no limit on components (max_labels is
    not used). CuPy reads the count back to size its outputs: one host sync inside the call."""
    import cupy
    import cupyx.scipy.ndimage

    with cupy.cuda.Device(maps.get_device()), _cupy_stream(torch.cuda.current_stream(maps.device)):
        ids, total = cupyx.scipy.ndimage.label(cupy.from_dlpack(maps.to(torch.uint8)), structure=STRUCTURE)
        out = torch.from_dlpack(ids)
    return from_global(out, int(total))


def _cupy_stream(stream: torch.cuda.Stream) -> Any:
    """CuPy's view of a torch stream. CuPy 14 reads it through the CUDA stream protocol (`Stream.from_external`;
    its `ExternalStream` is deprecated there); older CuPy through `ExternalStream(pointer)`. Neither owns it."""
    import cupy

    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, stream.device_index)


def label_scipy(maps: torch.Tensor, max_labels: int = 0) -> Labels:
    """The CPU twin of `label_cupy`: the same call in scipy.ndimage (same structure, same ids), same adapter."""
    import scipy.ndimage

    ids, total = scipy.ndimage.label(maps.cpu().numpy(), structure=STRUCTURE, output=np.int32)
    return from_global(torch.from_numpy(ids).to(maps.device), int(total))


def label_cvcuda(maps: torch.Tensor, max_labels: int) -> Labels:
    """cvcuda.label on CUDA maps, on the current torch stream (one batched call)."""
    import cvcuda

    m = maps.shape[0]
    src = cvcuda.as_tensor(maps.to(torch.uint8).unsqueeze(-1).contiguous(), "NHWC")
    background = cvcuda.as_tensor(torch.zeros(m, dtype=torch.uint8, device=maps.device), "N")
    stream = cvcuda.as_stream(torch.cuda.current_stream(maps.device))
    labels, count, stats = cvcuda.label(src, cvcuda.CONNECTIVITY_8_2D, cvcuda.LABEL.SEQUENTIAL, count=True,
                                        stats=True, max_labels=max_labels, bg_label=background, stream=stream)
    as_torch = functools.partial(torch.as_tensor, device=maps.device)
    return from_cvcuda(as_torch(labels.cuda()).view(maps.shape), as_torch(count.cuda()).view(m),
                       as_torch(stats.cuda()).view(m, max_labels, STATS_COLUMNS), max_labels)


def cvcuda_outputs_cpu(maps: np.ndarray, max_labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What cvcuda.label(..., CONNECTIVITY_8_2D, LABEL.SEQUENTIAL, count, stats, bg_label=0) returns for bool maps
    [M, H, W], by its kernels' definition (OpLabel.cu: CountLabels2D, ComputeStats2D; TestOpLabel.cpp):

    - each component's root is its first pixel in raster order; regions take indices in arbitrary order (an
      atomicAdd per root: here a seeded shuffle); the count includes every region;
    - region r < max_labels gets label r + 1 and stats row r = [root's linear position, x0, y0,
      max|x - x0| + 1, max|y - y0| + 1, area, 0] with (x0, y0) the root; a region beyond the capacity keeps its
      root's position as its label and has no row."""
    m, height, width = maps.shape
    labels = np.zeros((m, height, width), np.int32)
    count = np.zeros(m, np.int32)
    stats = np.zeros((m, max_labels, STATS_COLUMNS), np.int32)
    rng = np.random.default_rng(seed)
    for i, mask in enumerate(maps):
        n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        flat = lab.reshape(-1)
        present, first = np.unique(flat, return_index=True)  # first (raster) position of each label present
        root = np.zeros(n - 1, np.int64)
        root[present[present > 0] - 1] = first[present > 0]
        y0, x0 = np.divmod(root, width)
        fg = np.flatnonzero(flat)
        ys, xs = np.divmod(fg, width)
        comp = flat[fg] - 1
        reach_x = np.ones(n - 1, np.int64)
        reach_y = np.ones(n - 1, np.int64)
        np.maximum.at(reach_x, comp, np.abs(xs - x0[comp]) + 1)
        np.maximum.at(reach_y, comp, np.abs(ys - y0[comp]) + 1)
        area = np.bincount(comp, minlength=n - 1)
        region = rng.permutation(n - 1)  # region index of component c
        count[i] = n - 1
        inside = region < max_labels
        # beyond the capacity: the root's position, or one past the row's end where that is 0, the background
        relabel = np.where(inside, region + 1, np.where(root == 0, width, root)).astype(np.int32)
        labels[i].reshape(-1)[fg] = relabel[comp]
        r = region[inside]
        stats[i, r] = np.stack([root, x0, y0, reach_x, reach_y, area, np.zeros_like(root)], axis=1)[inside]
    return labels, count, stats


def label_cvcuda_twin(maps: torch.Tensor, max_labels: int) -> Labels:
    """The CPU twin of `label_cvcuda`: `cvcuda_outputs_cpu`, then the same adapter."""
    labels, count, stats = cvcuda_outputs_cpu(maps.cpu().numpy(), max_labels)
    to = functools.partial(torch.as_tensor, device=maps.device)
    return from_cvcuda(to(labels), to(count), to(stats), max_labels)


@dataclass(frozen=True)
class LabellerInfo:
    fn: Labeller
    module: str  # what must import for it to run
    devices: tuple[str, ...]
    what: str


LABELLERS: dict[str, LabellerInfo] = {
    "cvcuda": LabellerInfo(label_cvcuda, "cvcuda", ("cuda",), "cvcuda.label, one batched call; areas from its stats"),
    "cupy": LabellerInfo(label_cupy, "cupyx.scipy.ndimage", ("cuda",), "cupyx.scipy.ndimage.label on the batch"),
    "scipy": LabellerInfo(label_scipy, "scipy.ndimage", ("cpu",), "scipy.ndimage.label: the twin of cupy"),
    "cvcuda-twin": LabellerInfo(label_cvcuda_twin, "cv2", ("cpu",), "CV-CUDA's kernels imitated: its twin"),
}
DEVICE_ORDER = ("cvcuda", "cupy")  # tried in this order on CUDA: CV-CUDA's worst case is bounded, CuPy's is not


@functools.cache
def importable(name: str) -> bool:
    """Does `LABELLERS[name]` import here (and, for CuPy, see a GPU)?"""
    try:
        __import__(LABELLERS[name].module)
        if name == "cupy":
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # a broken CUDA install raises all sorts: each means "not here"
        return False
    return True


@dataclass(frozen=True)
class Choice:
    name: str  # a LABELLERS key, or "host" (no device labeller)
    fn: Labeller | None
    why: str


def choose(device: str | torch.device) -> Choice:
    """The labeller `analyse` uses for maps on `device`, and why, in words for the start-up line."""
    if torch.device(device).type != "cuda":
        return Choice("host", None, "maps in host memory: the CPU reference on the post-processing pool")
    missing = []
    for name in DEVICE_ORDER:
        if importable(name):
            info = LABELLERS[name]
            return Choice(name, info.fn, info.what + (f" ({' and '.join(missing)} not importable)" if missing else ""))
        missing.append(LABELLERS[name].module)
    return Choice("host", None, f"no device labeller ({' and '.join(missing)} not importable): runs found on the "
                                "device, maps labelled on the CPU pool from them")
