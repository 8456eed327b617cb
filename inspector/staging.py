"""Where a batch waits between decode and the engine, and the CUDA streams and events that order the stages.

The pinned ring (after timm's PrefetchLoader): each slot is a host buffer [B, 1, H, W] uint8 (page-locked when
the engine is on CUDA) and its device twin. Decode writes frames straight into the host buffer; `upload` copies
the filled part to the device with a non-blocking copy on a side stream and records `slot.ready`, which the engine
stream waits on, so the copy of batch k+1 overlaps the engine on batch k. A slot goes back to the ring as soon as
the engine has consumed its input (`release(slot, after=event)`), not after post-processing: `acquire` waits for
that event before the host writes into the buffer again. Buffers are never reallocated or re-pinned. On the CPU
the device buffer is the host buffer, `upload` is a view and events are None: one code path.

The device streams (`DeviceStreams`; null contexts on the CPU):

    copy stream (StagingRing)  H2D of batch k+1          -> `slot.ready`
    engine stream              waits `slot.ready`; engine on batch k -> `done` (timing pair too)
    post stream                waits `done`; post-processing of batch k-1; one D2H copy

Nothing runs on the legacy default stream, so the engine never waits for post-processing and TensorRT's enqueue
never synchronises the whole device. A tensor made on one stream and used on another is marked with
`record_stream`, so the caching allocator does not hand its memory out again while the other stream still reads it.
("streams" elsewhere in the worker means Redis streams; here it is CUDA's.)

Threads: the producer acquires, uploads and launches on the engine stream; the consumer releases nothing and works
on the post stream; the ring's free list is a thread-safe queue.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Slot:
    index: int
    host: torch.Tensor  # [B, 1, H, W] uint8, pinned on CUDA
    device: torch.Tensor  # same shape on the engine's device (the host tensor itself on CPU)
    ready: torch.cuda.Event | None = None  # recorded by upload on CUDA: the copy is done
    consumed: torch.cuda.Event | None = None  # set by release: the engine has read the device buffer

    def frame(self, i: int) -> np.ndarray:
        """Writable (H, W) NumPy view of frame i of the host buffer, for decode_into."""
        return self.host[i, 0].numpy()

    def compact(self, keep: list[int]) -> None:
        """Move frames `keep` (ascending) to rows 0.. in order: a batch with a rejected frame has no hole."""
        for row, i in enumerate(keep):
            if row != i:
                self.host[row].copy_(self.host[i])


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
        """The next free slot whose device buffer the engine is done with; blocks while every slot is in flight
        (back-pressure on the reader). queue.Empty after `timeout` seconds."""
        slot = self.slots[self._free.get(timeout=timeout)]
        if slot.consumed is not None:
            slot.consumed.synchronize()
            slot.consumed = None
        slot.ready = None
        return slot

    def release(self, slot: Slot, after: torch.cuda.Event | None = None) -> None:
        """Give the slot back; on CUDA `after` marks when the engine has read its input."""
        slot.consumed = after
        self._free.put(slot.index)

    def upload(self, slot: Slot, n: int) -> torch.Tensor:
        """The first n frames on the device; the engine stream must wait on `slot.ready` before reading them."""
        if self.copy_stream is None:
            return slot.device[:n]
        with torch.cuda.stream(self.copy_stream):
            slot.device[:n].copy_(slot.host[:n], non_blocking=True)
            slot.ready = torch.cuda.Event()
            slot.ready.record(self.copy_stream)
        return slot.device[:n]


class DeviceStreams:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.engine = torch.cuda.Stream(device) if self.cuda else None
        self.post = torch.cuda.Stream(device) if self.cuda else None

    def use_device(self) -> None:
        """Every thread that touches CUDA sets its device first (a new thread starts on device 0)."""
        if self.cuda:
            torch.cuda.set_device(self.device)

    @contextlib.contextmanager
    def on(self, stream: torch.cuda.Stream | None) -> Iterator[None]:
        if stream is None:
            yield
        else:
            with torch.cuda.stream(stream):
                yield

    def record(self, stream: torch.cuda.Stream | None, timing: bool = False) -> torch.cuda.Event | None:
        if stream is None:
            return None
        event = torch.cuda.Event(enable_timing=timing)
        event.record(stream)
        return event

    def wait(self, stream: torch.cuda.Stream | None, event: torch.cuda.Event | None) -> None:
        if stream is not None and event is not None:
            stream.wait_event(event)

    def lend(self, tensor: torch.Tensor | None, stream: torch.cuda.Stream | None) -> None:
        """`tensor`, allocated on another stream, is now used on `stream` too."""
        if tensor is not None and stream is not None and tensor.is_cuda:
            tensor.record_stream(stream)
