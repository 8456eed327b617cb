"""Probability maps -> defects: threshold, 8-connected components, drop small ones, gate classes, RLE.

The rules are stated once (`rules.py`). Two implementations hold one contract: `analyse_cpu` (NumPy + OpenCV,
the specification) and `analyse_device` (torch tensors on any device; on CUDA the labeller `labellers.choose`
names: CV-CUDA, else CuPy, else host labelling from device-found runs). Tests hold them bit-identical on masks,
RLE, boxes, areas and scores. `pool.size_for` sizes the host threads from the cores left after decode.
"""

from __future__ import annotations

import numpy as np
import torch

from inspector.postprocess.defects import analyse_cpu
from inspector.postprocess.device import analyse_device
from inspector.postprocess.masks import clean
from inspector.postprocess.params import PostprocessParams
from inspector.protocol import Defect

__all__ = ["PostprocessParams", "analyse", "analyse_cpu", "analyse_device", "clean", "prepare"]


def prepare(device: str | torch.device, decode_threads: int) -> str:
    """At worker start (the thread that builds the pipeline): size the post-processing pool from the cores left
    after decode, and say which labeller runs and why, for the start-up line."""
    from inspector.postprocess import labellers, pool

    threads = pool.size_for(decode_threads)
    choice = labellers.choose(device)
    return f"post-processing: {choice.name} labeller, {choice.why}; {threads} host thread(s)"


def analyse(probs: torch.Tensor | np.ndarray, presence: torch.Tensor | np.ndarray | None,
            params: PostprocessParams) -> list[list[Defect]]:
    """The worker's entry: CUDA tensors stay on the GPU (analyse_device), anything else takes the CPU reference."""
    if isinstance(probs, torch.Tensor) and probs.is_cuda:
        pres = presence if presence is None or isinstance(presence, torch.Tensor) else torch.as_tensor(presence)
        return analyse_device(probs, None if pres is None else pres.to(probs.device), params)
    as_np = probs.numpy() if isinstance(probs, torch.Tensor) else probs
    pres_np = presence.numpy() if isinstance(presence, torch.Tensor) else presence
    return analyse_cpu(as_np, pres_np, params)
