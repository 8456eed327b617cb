"""8-connected component labelling: OpenCV on the CPU (the reference), and the one contract every device labeller
(`labellers.py`) is adapted to.

`Labels` is that contract: for the batch's M binary maps, one id per pixel, global over the batch (0 =
background; map m's components are ids first[m] + 1 .. first[m] + count[m], consecutive, first[m] the sum of the
counts before m). Areas and boxes are then computed by one scatter over the maps' column runs (`device.py`),
whichever library labelled. Two library layouts meet it here, each through one adapter that its CPU twin shares:

    from_global    ids already global and consecutive per map: cupyx.scipy.ndimage.label (and scipy.ndimage.label,
                   its twin) on the batch [M, H, W] with a 3x3x3 structure whose middle plane is ones. Each map's
                   range comes from its highest id and the highest id of the maps before it (offsets).
    from_cvcuda    cvcuda.label: ids 1..count per map, stats rows per map (label L is row L - 1). The ids are
                   shifted by the maps' offsets and only the area column (5) is read. Columns 1-2 are the
                   component's first pixel in raster order and 3-4 are max|x - x0| + 1, max|y - y0| + 1 (CV-CUDA's
                   `OpLabel.cu`, CountLabels2D / ComputeStats2D, and its gold test `TestOpLabel.cpp`): not a box,
                   whatever the header says. A map with more than `max_labels` components has no complete stats:
                   it is marked spilled and labelled on the host from its runs.

Pure functions of tensors, called from the consumer thread (or a test).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Labels:
    """A labelled batch of maps, on the maps' device."""

    ids: torch.Tensor  # int32 [M, H, W]: 0 = background, else 1..total, consecutive per map, maps in order
    count: torch.Tensor  # int64 [M]: components per map (0 for a spilled map)
    total: int  # the highest id
    areas: torch.Tensor | None = None  # int64 [total + 1]: pixels per id, where the labeller counted them
    spilled: torch.Tensor | None = None  # bool [M]: maps labelled on the host instead (None: none)


STATS_COLUMNS = 7  # CV-CUDA's 2-D stats row: [root label, x0, y0, max|x - x0| + 1, max|y - y0| + 1, area, mark]
AREA_COLUMN = 5


def from_global(ids: torch.Tensor, total: int) -> Labels:
    """ids int32 [M, H, W], 0 = background, numbered 1..total over the batch in raster order of each component's
    first pixel (so consecutive per map) -> Labels, with per-map counts from the offsets."""
    m = ids.shape[0]
    top = ids.reshape(m, -1).amax(dim=1).long()  # each map's highest id (0: none)
    before = F.pad(top.cummax(dim=0).values[:-1], (1, 0))  # the highest id of the maps before it
    return Labels(ids, (top - before).clamp(min=0), total)


def from_cvcuda(labels: torch.Tensor, count: torch.Tensor, stats: torch.Tensor, max_labels: int) -> Labels:
    """CV-CUDA's per-map output (labels [M, H, W] 1..count per map, count [M], stats [M, max_labels, 7]) -> Labels.
    Only the stats' area column is used; boxes come from the runs like every labeller's."""
    m = labels.shape[0]
    count = count.reshape(m).long()
    spilled = count > max_labels
    kept = torch.where(spilled, 0, count)
    offsets = F.pad(kept.cumsum(dim=0)[:-1], (1, 0))
    ids = torch.where((labels > 0) & ~spilled.view(m, 1, 1), labels.long() + offsets.view(m, 1, 1), 0).to(torch.int32)
    total = int(kept.sum())  # one sync: the number of ids sizes what follows
    rows = (torch.arange(max_labels, device=labels.device).view(1, -1) < kept.view(-1, 1)).reshape(-1)
    areas = torch.zeros(total + 1, dtype=torch.int64, device=labels.device)
    areas[1:] = stats[:, :, AREA_COLUMN].reshape(-1)[torch.nonzero_static(rows, size=total).squeeze(1)]
    return Labels(ids, kept, total, areas, spilled)
