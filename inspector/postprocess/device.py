"""Post-processing of torch tensors where they are: `analyse_device` returns exactly what `analyse_cpu` returns,
for any device, FP16 or FP32, any memory format.

    on the device   threshold and presence gate (`rules`), in float32; every map's column runs (`torch.nonzero`
                    on the column edges) and each run's probability sum (float64)
    labelled path   a device labeller (`labellers.choose`: CV-CUDA, else CuPy) labels the whole batch in one call;
                    areas and boxes per component by scatter over the runs (amin / amax), the component and class
                    rules on the device; one copy of the kept runs and components to pinned host memory
    runs path       no device labeller, or a map the labeller could not keep (more than `max_labels`
                    components): the runs come back in one pinned copy and each map with enough foreground is
                    labelled on the post-processing pool from a uint8 crop drawn from its runs (`masks.clean_runs`:
                    OpenCV, then the reference's rules)
    host path       maps already in host memory (CPU tensors): the live maps go through the CPU reference itself,
                    as views, on the pool

Cost is bounded whatever the shapes: a fixed number of batched kernels and work in proportion to the runs; no map
travels as probabilities (the scores are the kept runs' sums: float64 sums of FP16 values, or of FP32 values over
a threshold >= 2**-11, are exact, so any grouping gives the reference's bits). A labeller's own worst case is its
own (labellers.py). Host syncs per batch: the runs' nonzero, the labeller's count, the kept sizes, the copy (the
runs path: the first and the last). Everything is plain torch, so it runs and is tested on CPU tensors with the
labellers' CPU twins.

Called from the consumer thread, on its current (post-processing) stream.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from inspector.postprocess import labellers, rules
from inspector.postprocess.components import Labels
from inspector.postprocess.defects import defect_of, defect_of_map, sorted_components
from inspector.postprocess.masks import clean_runs
from inspector.postprocess.params import PostprocessParams
from inspector.postprocess.pool import on_pool
from inspector.postprocess.runs import kaggle_runs
from inspector.protocol import Defect
from inspector.rle import columns_first, from_runs
from inspector.scratch import scratch

MAX_LABELS = 16384  # components per map a capacity-bound labeller (CV-CUDA) keeps stats for; beyond: runs path


@dataclass(frozen=True)
class _Constants:
    thresholds: torch.Tensor  # float32 [1, C, 1, 1]
    presence: torch.Tensor  # float32 [1, C]
    min_component: torch.Tensor  # int64 [C]
    min_class: torch.Tensor  # int64 [C]


@functools.lru_cache(maxsize=16)
def _constants(params: PostprocessParams, device: torch.device) -> _Constants:
    """Made once per (params, device), not per batch: no host-to-device copy in the steady state."""
    c = len(params.thresholds)
    return _Constants(
        torch.tensor(params.thresholds, dtype=torch.float32, device=device).view(1, c, 1, 1),
        torch.tensor(params.presence_threshold, dtype=torch.float32, device=device).view(1, c),
        torch.tensor(params.min_component_area, dtype=torch.int64, device=device),
        torch.tensor(params.min_class_area, dtype=torch.int64, device=device))


def analyse_device(probs: torch.Tensor, presence: torch.Tensor | None, params: PostprocessParams,
                   labeller: labellers.Labeller | Literal["auto"] | None = "auto", max_labels: int = MAX_LABELS,
                   compact: bool | None = None) -> list[list[Defect]]:
    """probs [N, C, H, W], presence [N, C] or None, on one device -> defects per frame (= analyse_cpu's).

    `labeller` "auto" takes `labellers.choose(probs.device)` (none for CPU tensors); None forces the runs path.
    `compact` (default: the maps are not in host memory) sends maps without a labeller through the runs path
    rather than the host path; tests set it on CPU tensors to run the device code in CI."""
    n, c, height, width = probs.shape
    consts = _constants(params, probs.device)
    gate = None if presence is None else rules.present(presence.float(), consts.presence)  # [N, C]
    if labeller == "auto":
        labeller = labellers.choose(probs.device).fn
    if labeller is None and not (probs.device.type != "cpu" if compact is None else compact):
        return _host(probs, gate, params, consts)
    probs = probs.contiguous()  # channels-last engines: one copy, then flat views work
    fg = rules.foreground(probs, consts.thresholds)
    if gate is not None:
        fg &= gate.view(n, c, 1, 1)
    maps = fg.view(n * c, height, width)
    runs = device_runs(maps, probs.view(n * c, height, width))
    if labeller is None:
        return _runs_path(runs, n, c, height, params)
    return _labelled(runs, labeller(maps, max_labels), n, c, height, width, params, consts)


@dataclass(frozen=True)
class Runs:
    """The column runs of a batch of maps, in column-major order within each map, maps in order."""

    maps: torch.Tensor  # int64 [R]: map index (frame * C + class)
    starts: torch.Tensor  # int64 [R]: [start, end) as column-major positions inside the map (column * H + row)
    ends: torch.Tensor
    sums: torch.Tensor  # float64 [R]: the map's probabilities summed over the run


def device_runs(fg: torch.Tensor, probs: torch.Tensor) -> Runs:
    """bool [M, H, W] and its probabilities -> the runs of every map (one host sync: the nonzero)."""
    m, height, width = fg.shape
    pixels = height * width
    columns = F.pad(columns_first(fg).to(torch.int8), (1, 1))  # [M, W, H + 2]: each column zero at both ends
    edges = torch.nonzero((columns[:, :, 1:] != columns[:, :, :-1]).reshape(-1)).squeeze(1)
    column, row = edges.div(height + 1, rounding_mode="floor"), edges % (height + 1)  # column: over the batch
    position = column * height + row  # rises and falls alternate inside each padded column
    starts, ends = position[0::2], position[1::2]  # over the batch: map * pixels + column * H + row
    maps = starts.div(pixels, rounding_mode="floor")
    values = columns_first(torch.where(fg, probs.float(), 0.0)).reshape(m, pixels).double()
    prefix = F.pad(values.cumsum(dim=1), (1, 0)).reshape(-1)  # per map (pixels + 1 each): exact, see above
    sums = prefix[ends + maps] - prefix[starts + maps]
    return Runs(maps, starts - maps * pixels, ends - maps * pixels, sums)


def _labelled(runs: Runs, labels: Labels, n: int, c: int, height: int, width: int, params: PostprocessParams,
              consts: _Constants) -> list[list[Defect]]:
    m, dev = n * c, runs.maps.device
    x, top = runs.starts.div(height, rounding_mode="floor"), runs.starts % height
    bottom = (runs.ends - 1) % height
    run_label = labels.ids.reshape(-1)[runs.maps * (height * width) + top * width + x].long()  # its first pixel
    bins = labels.total + 1
    area = labels.areas if labels.areas is not None else torch.zeros(bins, dtype=torch.int64, device=dev).scatter_add_(
        0, run_label, runs.ends - runs.starts)
    box = [torch.full((bins,), fill, dtype=torch.int64, device=dev).scatter_reduce_(0, run_label, values, how)
           for values, how, fill in ((x, "amin", width), (top, "amin", height), (x, "amax", -1), (bottom, "amax", -1))]
    label_map = F.pad(torch.repeat_interleave(torch.arange(m, device=dev), labels.count, output_size=labels.total),
                      (1, 0))  # id 0 (background) is set apart below
    keep = rules.keep_components(area, consts.min_component[label_map % c])
    keep[0] = False
    kept_area = torch.zeros(m, dtype=torch.int64, device=dev).scatter_add_(0, label_map, torch.where(keep, area, 0))
    spilled = labels.spilled if labels.spilled is not None else torch.zeros(m, dtype=torch.bool, device=dev)
    class_ok = rules.keep_class(kept_area, consts.min_class.repeat(n)) & ~spilled
    keep &= class_ok[label_map]
    take = keep[run_label] | spilled[runs.maps]  # kept runs, and every run of a spilled map
    sizes = torch.stack([take.sum(), keep.sum()]).tolist()  # one sync
    ri = torch.nonzero_static(take, size=sizes[0]).squeeze(1)
    li = torch.nonzero_static(keep, size=sizes[1]).squeeze(1)
    x0, y0, x1, y1 = box
    host = _to_host([torch.stack([runs.maps[ri], runs.starts[ri], runs.ends[ri]]).int(), runs.sums[ri],
                     torch.stack([label_map[li], x0[li], y0[li], x1[li] - x0[li] + 1, y1[li] - y0[li] + 1,
                                  area[li]]).int(), kept_area, class_ok.to(torch.uint8), spilled.to(torch.uint8)])
    (run_maps, starts, ends), sums, rows, kept_area_h, ok, spill = host
    rows = rows.T
    at_run = np.searchsorted(run_maps, np.arange(m + 1))
    at_label = np.searchsorted(rows[:, 0], np.arange(m + 1))
    found: list[tuple[int, int, Defect | None]] = []
    for j in np.flatnonzero(ok.astype(bool) & (kept_area_h > 0)):
        r, lab = slice(at_run[j], at_run[j + 1]), slice(at_label[j], at_label[j + 1])
        s, e, area_j = starts[r].astype(np.int64), ends[r].astype(np.int64), int(kept_area_h[j])
        found.append((int(j) // c, int(j) % c, Defect(int(j) % c + 1, from_runs(*kaggle_runs(s, e)), area_j,
                                                      float(sums[r].sum() / area_j), sorted_components(rows[lab, 1:]))))
    spilled_maps = [(int(j), slice(at_run[j], at_run[j + 1])) for j in np.flatnonzero(spill)]
    found += _on_runs(spilled_maps, starts, ends, sums, c, height, params)
    return _collect(n, c, found)


def _runs_path(runs: Runs, n: int, c: int, height: int, params: PostprocessParams) -> list[list[Defect]]:
    """No device labeller: every map's runs to the host, each live map labelled there on the pool."""
    (run_maps, starts, ends), sums = _to_host([torch.stack([runs.maps, runs.starts, runs.ends]).int(), runs.sums])
    at = np.searchsorted(run_maps, np.arange(n * c + 1))
    live = [(j, slice(at[j], at[j + 1])) for j in np.flatnonzero(at[1:] > at[:-1])]
    return _collect(n, c, _on_runs(live, starts, ends, sums, c, height, params))


def _on_runs(maps: list[tuple[int, slice]], starts: np.ndarray, ends: np.ndarray, sums: np.ndarray, c: int,
             height: int, params: PostprocessParams) -> list[tuple[int, int, Defect | None]]:
    """Maps given by their runs (map index, slice of the runs) -> their defects, labelled on the pool."""

    def one(item: tuple[int, slice]) -> tuple[int, int, Defect | None]:
        j, r = item
        k = j % c
        s, e = starts[r].astype(np.int64), ends[r].astype(np.int64)
        cleaned = clean_runs(s, e, height, params.min_component_area[k], params.min_class_area[k])
        if cleaned is None:
            return j // c, k, None
        kept, which = cleaned
        return j // c, k, defect_of(kept, k, sums[r][which].sum())

    return on_pool(one, maps)


def _host(probs: torch.Tensor, gate: torch.Tensor | None, params: PostprocessParams,
          consts: _Constants) -> list[list[Defect]]:
    """Maps in host memory: the live ones (a pixel over the threshold, presence over its own) go through the CPU
    reference, as views."""
    n, c = probs.shape[:2]
    live = rules.foreground(probs.amax(dim=(2, 3)).float(), consts.thresholds.view(1, c))
    if gate is not None:
        live &= gate
    maps = [(int(i), int(k)) for i, k in np.argwhere(live.numpy())]

    def one(item: tuple[int, int]) -> tuple[int, int, Defect | None]:
        i, k = item
        return i, k, defect_of_map(_host_map(probs, i, k), k, None, params)

    return _collect(n, c, on_pool(one, maps))


def _host_map(probs: torch.Tensor, i: int, k: int) -> np.ndarray:
    """Map (i, k) of a CPU tensor as float32 (H, W): a view when it is one, else converted into scratch."""
    if probs.dtype == torch.float32:
        return probs[i, k].numpy()
    full = scratch("device.map", tuple(probs.shape[2:]), np.float32)
    full[...] = probs[i, k].float().numpy()
    return full


def _collect(n: int, c: int, found: list[tuple[int, int, Defect | None]]) -> list[list[Defect]]:
    frames: list[list[Defect]] = [[] for _ in range(n)]
    for i, _k, defect in sorted(found, key=lambda t: (t[0], t[1])):
        if defect is not None:
            frames[i].append(defect)
    return frames


def _to_host(parts: list[torch.Tensor]) -> list[np.ndarray]:
    """One device-to-host copy of several tensors (packed as bytes) into pinned memory on the current stream, then
    a wait for it; on the CPU, no copy. Returns NumPy arrays of the parts' dtypes and shapes."""
    flat = [p.contiguous().view(-1).view(torch.uint8) for p in parts]
    payload = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.uint8)
    if payload.device.type == "cpu":
        host = payload.numpy()
    else:
        pinned = torch.empty(payload.shape, dtype=torch.uint8, pin_memory=True)
        pinned.copy_(payload, non_blocking=True)
        torch.cuda.current_stream(payload.device).synchronize()
        host = pinned.numpy()
    out, at = [], 0
    for p, f in zip(parts, flat, strict=True):
        out.append(host[at:at + f.numel()].view(_NUMPY[p.dtype]).reshape(p.shape))
        at += f.numel()
    return out


_NUMPY = {torch.int32: np.int32, torch.int64: np.int64, torch.float64: np.float64, torch.uint8: np.uint8}
