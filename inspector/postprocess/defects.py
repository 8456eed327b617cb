"""Per-frame defects (class, RLE, area, score, components) from probability maps, on CPU or any torch device.

`analyse_cpu` is the specification. `analyse_torch` does the same work batched on the maps' device and brings
back one compact int32 tensor per batch (run edges, component stats, class areas, score bits), never full
masks. Components are listed sorted by (y, x, w, h, area) so both paths agree exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from inspector.postprocess.components import component_stats_torch, label_torch
from inspector.postprocess.masks import clean_class, for_each_map
from inspector.postprocess.params import PostprocessParams
from inspector.protocol import Defect
from inspector.rle import runs_to_string
from inspector.scratch import scratch


def _sorted_components(rows: np.ndarray) -> list[list[int]]:
    """Rows [x, y, w, h, area] as plain lists, sorted by (y, x, w, h, area)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    order = np.lexsort((rows[:, 4], rows[:, 3], rows[:, 2], rows[:, 0], rows[:, 1]))  # last key sorts first
    return rows[order].tolist()


def analyse_cpu(probs: np.ndarray, presence: np.ndarray | None, params: PostprocessParams) -> list[list[Defect]]:
    """probs float32 (N, C, H, W), presence (N, C) or None -> defects per frame."""
    probs = np.asarray(probs, dtype=np.float32)
    n, c = probs.shape[:2]

    def one(i: int, k: int) -> Defect | None:
        kept = clean_class(probs[i, k], params.thresholds[k], params.min_component_area[k],
                           params.min_class_area[k], None if presence is None else float(presence[i, k]),
                           params.presence_threshold[k], out=scratch("analyse.mask", probs.shape[:1:-1], np.bool_).T)
        area = kept.area
        if not area:
            return None
        score = float(probs[i, k].T[kept.mask.T].sum(dtype=np.float64) / area)  # the mask is column-major
        return Defect(k + 1, kept.rle(), area, score, _sorted_components(kept.components()))

    results = for_each_map(one, n, c)
    return [[d for d in results[i * c:(i + 1) * c] if d is not None] for i in range(n)]


def analyse_torch(probs: torch.Tensor, presence: torch.Tensor | None,
                  params: PostprocessParams) -> list[list[Defect]]:
    """Same contract as analyse_cpu, computed on `probs.device`; one device-to-host copy per batch."""
    n, c, height, width = probs.shape
    dev = probs.device
    probs = probs.float()
    thresholds = torch.tensor(params.thresholds, dtype=torch.float32, device=dev).view(1, c, 1, 1)
    fg = probs > thresholds
    if presence is not None:
        gate = presence.float() >= torch.tensor(params.presence_threshold, dtype=torch.float32, device=dev)
        fg &= gate.view(n, c, 1, 1)
    maps = fg.view(n * c, height, width)
    labels = label_torch(maps)
    comp, stats = component_stats_torch(labels)
    min_comp = torch.tensor(params.min_component_area, dtype=torch.int32, device=dev).repeat(n)
    keep = stats[:, 5] >= min_comp[stats[:, 0].long()]
    class_area = torch.zeros(n * c, dtype=torch.int32, device=dev).index_add_(
        0, stats[:, 0].long(), torch.where(keep, stats[:, 5], 0))
    min_class = torch.tensor(params.min_class_area, dtype=torch.int32, device=dev).repeat(n).clamp(min=1)
    class_ok = class_area >= min_class
    keep &= class_ok[stats[:, 0].long()]
    kept_pixels = torch.cat([keep, keep.new_zeros(1)])[comp.view(n * c, -1).long()]  # comp -1 -> False
    masks = kept_pixels.view(n * c, height, width)
    sums = (probs.view(n * c, -1) * masks.view(n * c, -1)).sum(dim=1, dtype=torch.float64)
    scores = (sums / class_area.clamp(min=1)).to(torch.float32)
    edges = _run_edges(masks)  # (map, position) pairs, column-major, two per run
    kept_stats = stats[keep]
    packed = torch.cat([edges.to(torch.int32).reshape(-1), kept_stats.reshape(-1),
                        torch.where(class_ok, class_area, 0), scores.view(torch.int32)]).cpu().numpy()
    return _unpack(packed, len(edges), len(kept_stats), n, c)


def _run_edges(masks: torch.Tensor) -> torch.Tensor:
    """Run boundaries of column-major flattened masks: rows (map, start0) then (map, end0), alternating."""
    count = masks.shape[0]
    cols = masks.transpose(1, 2).reshape(count, -1)
    padded = torch.zeros((count, cols.shape[1] + 2), dtype=torch.int8, device=masks.device)
    padded[:, 1:-1] = cols
    return torch.nonzero(padded[:, 1:] != padded[:, :-1])


def _unpack(packed: np.ndarray, n_edges: int, n_comps: int, n: int, c: int) -> list[list[Defect]]:
    edges = packed[:n_edges * 2].reshape(-1, 2)
    at = n_edges * 2
    comps = packed[at:at + n_comps * 6].reshape(-1, 6)
    at += n_comps * 6
    areas = packed[at:at + n * c]
    scores = packed[at + n * c:at + 2 * n * c].view(np.float32)
    starts, ends = edges[0::2], edges[1::2]
    run_bounds = np.searchsorted(starts[:, 0], np.arange(n * c + 1))
    comp_bounds = np.searchsorted(comps[:, 0], np.arange(n * c + 1))
    frames: list[list[Defect]] = [[] for _ in range(n)]
    for m in np.flatnonzero(areas):
        lo, hi = run_bounds[m], run_bounds[m + 1]
        rle = runs_to_string(starts[lo:hi, 1] + 1, ends[lo:hi, 1] - starts[lo:hi, 1])
        rows = comps[comp_bounds[m]:comp_bounds[m + 1], 1:]
        frames[m // c].append(Defect(int(m % c) + 1, rle, int(areas[m]), float(scores[m]),
                                     _sorted_components(rows)))
    return frames


def analyse(probs: torch.Tensor | np.ndarray, presence: torch.Tensor | np.ndarray | None,
            params: PostprocessParams) -> list[list[Defect]]:
    """CUDA tensors stay on the GPU (analyse_torch); anything else goes through the CPU reference."""
    if isinstance(probs, torch.Tensor) and probs.is_cuda:
        return analyse_torch(probs, presence if isinstance(presence, torch.Tensor) or presence is None
                             else torch.as_tensor(presence, device=probs.device), params)
    as_np = probs.numpy() if isinstance(probs, torch.Tensor) else probs
    pres = presence.numpy() if isinstance(presence, torch.Tensor) else presence
    return analyse_cpu(as_np, pres, params)
