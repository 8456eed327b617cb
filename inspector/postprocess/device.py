"""Post-processing of torch tensors where they are: `analyse_device` returns exactly what `analyse_cpu` returns,
for any device, FP16 or FP32, any memory format.

    on the device   threshold and presence gate (`rules`), in float32
    labelled path   CUDA with CV-CUDA installed: one batched `cvcuda.label` call for every map of the batch; the
                    component and class rules, the kept masks, the scores (float64) and the run edges (bit-packed)
                    on the device; then one copy of one packed buffer to pinned host memory
    gated path      CPU tensors, or CUDA without CV-CUDA: one small copy of each map's row/column occupancy; only
                    the non-empty maps come back, cropped to their foreground's extent, and go through the CPU
                    reference (`defects.defect_of_map`) on the post-processing pool

Cost is bounded whatever the shapes: the labelled path is a fixed number of batched kernels (a spiral or a
frame-wide zigzag costs what a dot costs), and a map with more components than `max_labels` is sent through the
CPU reference alone; the gated path copies at most one map per non-empty map and never iterates on the device.
Everything after the labelling is plain torch, so it runs and is tested on CPU tensors with `label_maps_cpu`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from inspector.postprocess import rules
from inspector.postprocess.components import cvcuda_available, label_maps_cuda
from inspector.postprocess.defects import defect_of_map, sorted_components
from inspector.postprocess.masks import on_pool
from inspector.postprocess.params import PostprocessParams
from inspector.protocol import Defect
from inspector.rle import columns_first, from_runs
from inspector.scratch import scratch

MAX_LABELS = 1024  # components per map the labelled path keeps stats for; beyond, the map goes to the CPU
Labeller = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.unpackbits' order: first element in the highest bit


@dataclass(frozen=True)
class _Constants:
    thresholds: torch.Tensor  # float32 [1, C, 1, 1]
    presence: torch.Tensor  # float32 [1, C]
    min_component: torch.Tensor  # int32 [C]
    min_class: torch.Tensor  # int32 [C]
    bit_weights: torch.Tensor  # uint8 [8]


@functools.lru_cache(maxsize=16)
def _constants(params: PostprocessParams, device: torch.device) -> _Constants:
    """Made once per (params, device), not per batch: no host-to-device copy in the steady state."""
    c = len(params.thresholds)
    return _Constants(
        torch.tensor(params.thresholds, dtype=torch.float32, device=device).view(1, c, 1, 1),
        torch.tensor(params.presence_threshold, dtype=torch.float32, device=device).view(1, c),
        torch.tensor(params.min_component_area, dtype=torch.int32, device=device),
        torch.tensor(params.min_class_area, dtype=torch.int32, device=device),
        torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=device))


def analyse_device(probs: torch.Tensor, presence: torch.Tensor | None, params: PostprocessParams,
                   labeller: Labeller | None = None, max_labels: int = MAX_LABELS,
                   compact: bool | None = None) -> list[list[Defect]]:
    """probs [N, C, H, W], presence [N, C] or None, on one device -> defects per frame (= analyse_cpu's).

    `labeller` defaults to CV-CUDA for CUDA tensors when it is installed, else the gated path runs. `compact`
    (default: the maps are not in host memory) makes the gated path copy the live maps' crops, as it must from
    a GPU; tests set it on CPU tensors to run that code in CI."""
    n, c = probs.shape[:2]
    consts = _constants(params, probs.device)
    gate = None if presence is None else rules.present(presence.float(), consts.presence)  # [N, C]
    if labeller is None and probs.is_cuda and cvcuda_available():
        labeller = label_maps_cuda
    if labeller is None:
        return _gated(probs, gate, params, consts, probs.device.type != "cpu" if compact is None else compact)
    probs = probs.contiguous()  # channels-last engines: one copy, then flat views work
    fg = rules.foreground(probs, consts.thresholds)
    if gate is not None:
        fg &= gate.view(n, c, 1, 1)
    return _labelled(probs, fg, params, consts, labeller, max_labels)


def _collect(n: int, c: int, found: list[tuple[int, int, Defect | None]]) -> list[list[Defect]]:
    frames: list[list[Defect]] = [[] for _ in range(n)]
    for i, _k, defect in sorted(found, key=lambda t: (t[0], t[1])):
        if defect is not None:
            frames[i].append(defect)
    return frames


def _host_map(probs: torch.Tensor, i: int, k: int, box: tuple[int, int, int, int] | None = None,
              crop: np.ndarray | None = None) -> np.ndarray:
    """Map (i, k) as float32 (H, W) on the host: a view when it already is one, else the foreground's crop placed
    in a zeroed scratch map (outside the crop every value is below the threshold, so the rules see no
    difference; thresholds are >= 0, PostprocessParams checks)."""
    height, width = probs.shape[2:]
    if box is None and probs.device.type == "cpu" and probs.dtype == torch.float32:
        return probs[i, k].numpy()
    full = scratch("device.map", (height, width), np.float32)
    if box is None:
        full[...] = probs[i, k].float().cpu().numpy()
        return full
    full.fill(0.0)
    r0, r1, c0, c1 = box
    full[r0:r1, c0:c1] = crop if crop is not None else probs[i, k, r0:r1, c0:c1].float().cpu().numpy()
    return full


def _gated(probs: torch.Tensor, gate: torch.Tensor | None, params: PostprocessParams, consts: _Constants,
           compact: bool) -> list[list[Defect]]:
    """Only the maps with a pixel over their threshold (and presence over its own) reach the CPU reference."""
    n, c, height = probs.shape[:3]
    if not compact:  # host memory, no copy to make: find the live maps with one max per map, pass views
        live = rules.foreground(probs.amax(dim=(2, 3)).float(), consts.thresholds.view(1, c))
        if gate is not None:
            live &= gate
        maps = [(int(i), int(k), None) for i, k in np.argwhere(live.numpy())]
        crops: list[np.ndarray | None] = [None] * len(maps)
    else:  # one small copy of each map's row and column occupancy, then one copy of the live maps' crops
        fg = rules.foreground(probs, consts.thresholds)
        if gate is not None:
            fg &= gate.view(n, c, 1, 1)
        occupancy = torch.cat([fg.any(dim=3), fg.any(dim=2)], dim=2).cpu().numpy()  # [N, C, H + W]
        maps = []
        for i, k in np.argwhere(occupancy[:, :, :height].any(axis=2)):
            rows, cols = np.flatnonzero(occupancy[i, k, :height]), np.flatnonzero(occupancy[i, k, height:])
            maps.append((int(i), int(k), (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)))
        crops = [None] * len(maps)
        if maps:
            flat = torch.cat([probs[i, k, r0:r1, c0:c1].reshape(-1) for i, k, (r0, r1, c0, c1) in maps])
            host = flat.float().cpu().numpy()
            at = 0
            for j, (_, _, (r0, r1, c0, c1)) in enumerate(maps):
                size = (r1 - r0) * (c1 - c0)
                crops[j] = host[at:at + size].reshape(r1 - r0, c1 - c0)
                at += size

    def one(j: int) -> tuple[int, int, Defect | None]:
        i, k, box = maps[j]
        return i, k, defect_of_map(_host_map(probs, i, k, box, crops[j]), k, None, params)

    return _collect(n, c, on_pool(one, list(range(len(maps)))))


def _pack_bits(bits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """bool [M, K] -> uint8 [M, ceil(K / 8)], first element in the highest bit (np.unpackbits' order)."""
    m, k = bits.shape
    padded = F.pad(bits.to(torch.uint8), (0, (-k) % 8)).view(m, -1, 8)
    return (padded * weights).sum(dim=2, dtype=torch.uint8)


def _labelled(probs: torch.Tensor, fg: torch.Tensor, params: PostprocessParams, consts: _Constants,
              labeller: Labeller, max_labels: int) -> list[list[Defect]]:
    n, c, height, width = fg.shape
    m, pixels = n * c, height * width
    labels, count, stats = labeller(fg.view(m, height, width), max_labels)
    areas = stats[:, :, 5]
    valid = torch.arange(max_labels, device=fg.device).view(1, -1) < count.clamp(max=max_labels).view(-1, 1)
    keep = valid & rules.keep_components(areas, consts.min_component.repeat(n).view(-1, 1))
    kept_area = torch.where(keep, areas, 0).sum(dim=1, dtype=torch.int64)
    overflow = count > max_labels
    class_ok = rules.keep_class(kept_area, consts.min_class.repeat(n)) & ~overflow
    keep &= class_ok.view(-1, 1)
    lookup = torch.cat([keep.new_zeros(m, 1), keep], dim=1)  # label 0 (background) -> not kept
    masks = torch.gather(lookup, 1, labels.view(m, pixels).clamp(0, max_labels).long()).view(m, height, width)
    score_sum = torch.where(masks, probs.view(m, height, width), 0).sum(dim=(1, 2), dtype=torch.float64)
    columns = F.pad(columns_first(masks).reshape(m, pixels).to(torch.uint8), (1, 1))  # Kaggle's order, padded
    edges = _pack_bits(columns[:, 1:] != columns[:, :-1], consts.bit_weights)  # run starts and ends
    parts = [edges.reshape(-1), keep.to(torch.uint8).reshape(-1), stats[:, :, 1:6].contiguous().view(torch.uint8)
             .reshape(-1), kept_area.view(torch.uint8), score_sum.view(torch.uint8), class_ok.to(torch.uint8),
             overflow.to(torch.uint8)]
    host = _to_host(torch.cat(parts))
    sizes = [p.numel() for p in parts]
    chunks = np.split(host, np.cumsum(sizes)[:-1])
    edge_bits = chunks[0].reshape(m, -1)
    kept = chunks[1].reshape(m, max_labels).astype(bool)
    boxes = chunks[2].view(np.int32).reshape(m, max_labels, 5)
    area = chunks[3].view(np.int64)
    score = chunks[4].view(np.float64)
    ok, spilled = chunks[5].astype(bool), chunks[6].astype(bool)
    found: list[tuple[int, int, Defect | None]] = []
    for j in np.flatnonzero(ok & (area > 0)):
        flips = np.flatnonzero(np.unpackbits(edge_bits[j], count=pixels + 1))
        starts, ends = flips[0::2], flips[1::2]
        found.append((int(j) // c, int(j) % c, Defect(int(j) % c + 1, from_runs(starts, ends),
                                                      int(area[j]), float(score[j] / area[j]),
                                                      sorted_components(boxes[j][kept[j]]))))
    for j in np.flatnonzero(spilled):  # more components than max_labels: the CPU reference, alone
        i, k = int(j) // c, int(j) % c
        found.append((i, k, defect_of_map(_host_map(probs, i, k), k, None, params)))
    return _collect(n, c, found)


def _to_host(payload: torch.Tensor) -> np.ndarray:
    """One device-to-host copy into pinned memory on the current stream, then wait for it; a view on the CPU."""
    if payload.device.type == "cpu":
        return payload.numpy()
    host = torch.empty(payload.shape, dtype=payload.dtype, pin_memory=True)
    host.copy_(payload, non_blocking=True)
    torch.cuda.current_stream(payload.device).synchronize()
    return host.numpy()
