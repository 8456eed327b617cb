"""A ring of preallocated batch buffers between decode and the engine (after timm's PrefetchLoader).

Each slot is a host buffer [B, 1, H, W] uint8 (page-locked when the engine is on CUDA) and its device twin.
Decode writes frames straight into the host buffer; `upload` copies the filled part to the device with a
non-blocking copy on a side stream and records a CUDA event that the engine stream waits on, so the copy of
batch k+1 overlaps the engine on batch k. A slot returns to the ring only when its batch is fully done, so
buffers are reused and never reallocated or re-pinned. On the CPU the device buffer is the host buffer and
`upload` is a view: one code path.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Slot:
    index: int
    host: torch.Tensor  # [B, 1, H, W] uint8, pinned on CUDA
    device: torch.Tensor  # same shape on the engine's device (the host tensor itself on CPU)
    ready: torch.cuda.Event | None = None  # set by upload on CUDA

    def frame(self, i: int) -> np.ndarray:
        """Writable (H, W) NumPy view of frame i of the host buffer, for decode_into."""
        return self.host[i, 0].numpy()


class StagingRing:
    def __init__(self, depth: int, batch_size: int, height: int, width: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        shape = (batch_size, 1, height, width)
        self.slots = []
        for i in range(depth):
            host = torch.zeros(shape, dtype=torch.uint8, pin_memory=cuda)
            dev = torch.zeros(shape, dtype=torch.uint8, device=self.device) if cuda else host
            self.slots.append(Slot(i, host, dev))
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(depth):
            self._free.put(i)

    def acquire(self, timeout: float | None = None) -> Slot:
        """The next free slot; blocks while every slot is in flight (back-pressure on the reader)."""
        return self.slots[self._free.get(timeout=timeout)]

    def release(self, slot: Slot) -> None:
        slot.ready = None
        self._free.put(slot.index)

    @property
    def free(self) -> int:
        return self._free.qsize()

    def upload(self, slot: Slot, n: int) -> torch.Tensor:
        """The first n frames on the device; on CUDA the current stream will wait for the copy."""
        if self.copy_stream is None:
            return slot.device[:n]
        with torch.cuda.stream(self.copy_stream):
            slot.device[:n].copy_(slot.host[:n], non_blocking=True)
            slot.ready = torch.cuda.Event()
            slot.ready.record(self.copy_stream)
        torch.cuda.current_stream(self.device).wait_event(slot.ready)
        return slot.device[:n]
