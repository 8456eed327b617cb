"""8-connected component labelling: OpenCV on the CPU (reference) and an exact torch twin for any device.

The twin labels every foreground pixel with 1 + the smallest row-major index in its component (minimum
propagation over the 3x3 neighbourhood plus pointer jumping), iterating until nothing changes: no iteration
cap, so a one-pixel-wide scratch across the whole frame or a spiral is labelled exactly.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def label_cpu(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (0 = background) and stats rows [x, y, w, h, area] (row 0 = background)."""
    binary = mask.view(np.uint8)
    ltype = label_type(cv2.countNonZero(binary))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8, ltype=ltype)
    return labels, stats


def label_type(foreground: int) -> int:
    """16-bit labels when fewer than 65,535 pixels are foreground: there cannot be more components than that.
    Half the memory to write and read back; OpenCV's stats pass also runs about 1.5x faster on them."""
    return cv2.CV_16U if foreground < 65535 else cv2.CV_32S


def label_torch(mask: torch.Tensor) -> torch.Tensor:
    """Labels of a bool [B, H, W] tensor: int32, 0 for background, 1 + min flat index of the component."""
    batch, height, width = mask.shape
    size = height * width
    sentinel = size + 1
    index = torch.arange(1, size + 1, dtype=torch.int32, device=mask.device).view(1, height, width)
    labels = torch.where(mask, index, torch.full_like(index, sentinel))
    while True:
        padded = F.pad(labels, (1, 1, 1, 1), value=sentinel)
        low = labels
        for dy in range(3):
            for dx in range(3):
                if dy != 1 or dx != 1:
                    low = torch.minimum(low, padded[:, dy:dy + height, dx:dx + width])
        low = torch.where(mask, low, sentinel)
        low = _jump(low.view(batch, size), sentinel).view(batch, height, width)
        if torch.equal(low, labels):
            break
        labels = low
    return torch.where(mask, labels, 0)


def _jump(flat: torch.Tensor, sentinel: int) -> torch.Tensor:
    """Pointer jumping: a pixel takes the label of the pixel its label names, until no label moves."""
    extended = torch.cat([flat, flat.new_full((flat.shape[0], 1), sentinel)], dim=1)
    while True:
        jumped = torch.gather(extended, 1, (flat - 1).long())
        if torch.equal(jumped, flat):
            return flat
        flat = jumped
        extended[:, :-1] = flat


def component_stats_torch(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact component ids per pixel (-1 background) and stats [K, 6] rows (map, x, y, w, h, area).

    Components are numbered in order of (map, smallest flat index), the order of their roots.
    """
    batch, height, width = labels.shape
    flat = labels.view(batch, -1)
    own = torch.arange(1, height * width + 1, dtype=torch.int32, device=labels.device)
    is_root = flat == own  # the pixel whose index names the component
    root_rank = (torch.cumsum(is_root.view(-1), 0, dtype=torch.int32) - 1).view(batch, -1)
    fg = flat > 0
    map_index = torch.arange(batch, device=labels.device).view(batch, 1).expand_as(flat)
    comp = torch.full_like(flat, -1)
    comp[fg] = root_rank[map_index[fg], (flat[fg] - 1).long()]
    count = int(is_root.sum())
    ids = comp[fg].long()
    pixel = torch.nonzero(fg)  # rows: (map, flat index)
    ys = (pixel[:, 1] // width).to(torch.int32)
    xs = (pixel[:, 1] % width).to(torch.int32)
    area = torch.bincount(ids, minlength=count).to(torch.int32)
    big = torch.iinfo(torch.int32).max
    x0 = torch.full((count,), big, dtype=torch.int32, device=labels.device).scatter_reduce(0, ids, xs, "amin")
    y0 = torch.full((count,), big, dtype=torch.int32, device=labels.device).scatter_reduce(0, ids, ys, "amin")
    x1 = torch.full((count,), -1, dtype=torch.int32, device=labels.device).scatter_reduce(0, ids, xs, "amax")
    y1 = torch.full((count,), -1, dtype=torch.int32, device=labels.device).scatter_reduce(0, ids, ys, "amax")
    maps = torch.nonzero(is_root)[:, 0].to(torch.int32)
    stats = torch.stack([maps, x0, y0, x1 - x0 + 1, y1 - y0 + 1, area], dim=1)
    return comp.view(batch, height, width), stats
