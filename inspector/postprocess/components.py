"""8-connected component labelling: OpenCV on the CPU (the reference), NVIDIA CV-CUDA on the GPU.

`label_maps` is the batched contract the device path builds on, CV-CUDA's own: for M binary maps it returns
sequential labels (0 = background, label L is row L - 1 of the stats), the number of components per map, and
stats rows [original label, x, y, w, h, area, marks] for up to `max_labels` components per map (a map with more
has count > max_labels and is handled on the CPU). `label_maps_cpu` is its twin on OpenCV, so everything after
the labelling runs and is tested on CPU tensors; `cvcuda.label` (8-connectivity, asked for explicitly: CV-CUDA
defaults to 4) does the labelling on CUDA tensors, on the caller's stream, in one call for the whole batch.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch


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


STATS_COLUMNS = 7  # original label, x, y, w, h, area, marks (CV-CUDA's layout for 2-D labelling)


def label_maps_cpu(maps: torch.Tensor, max_labels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CPU twin of `label_maps_cuda`: bool [M, H, W] -> labels int32 [M, H, W], count int32 [M],
    stats int32 [M, max_labels, 7]."""
    m, height, width = maps.shape
    labels = np.zeros((m, height, width), np.int32)
    count = np.zeros(m, np.int32)
    stats = np.zeros((m, max_labels, STATS_COLUMNS), np.int32)
    for i, mask in enumerate(maps.cpu().numpy()):
        n, lab, st, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        count[i] = n - 1
        lab[lab > max_labels] = 0  # beyond the stats' capacity: such a map goes to the CPU path anyway
        labels[i] = lab
        k = min(n - 1, max_labels)
        stats[i, :k, 0] = np.arange(1, k + 1)
        stats[i, :k, 1:6] = st[1:k + 1]
    return torch.from_numpy(labels), torch.from_numpy(count), torch.from_numpy(stats)


@functools.cache
def cvcuda_available() -> bool:
    try:
        import cvcuda  # noqa: F401
    except ImportError:
        return False
    return True


def label_maps_cuda(maps: torch.Tensor, max_labels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CV-CUDA's batched labelling of bool [M, H, W] CUDA maps, on the current torch stream; outputs as torch
    tensors on the same device (labels int32 [M, H, W], count int32 [M], stats int32 [M, max_labels, 7])."""
    import cvcuda

    m = maps.shape[0]
    src = cvcuda.as_tensor(maps.to(torch.uint8).unsqueeze(-1).contiguous(), "NHWC")
    background = cvcuda.as_tensor(torch.zeros(m, dtype=torch.uint8, device=maps.device), "N")
    stream = cvcuda.as_stream(torch.cuda.current_stream(maps.device))
    labels, count, stats = cvcuda.label(src, cvcuda.CONNECTIVITY_8_2D, cvcuda.LABEL.SEQUENTIAL, count=True,
                                        stats=True, max_labels=max_labels, bg_label=background, stream=stream)
    as_torch = functools.partial(torch.as_tensor, device=maps.device)
    return (as_torch(labels.cuda()).view(maps.shape).to(torch.int32), as_torch(count.cuda()).view(m).to(torch.int32),
            as_torch(stats.cuda()).view(m, max_labels, STATS_COLUMNS).to(torch.int32))
