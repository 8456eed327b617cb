"""The CUDA streams the stages run on, and the events that order them; null contexts on the CPU.

    copy stream (staging.StagingRing)  H2D of batch k+1          -> `slot.ready`
    engine stream                      waits `slot.ready`; engine on batch k -> `done` (timing pair too)
    post stream                        waits `done`; post-processing of batch k-1; one D2H copy

Nothing runs on the legacy default stream, so the engine never waits for post-processing and TensorRT's enqueue
never synchronises the whole device. A tensor made on one stream and used on another is marked with
`record_stream`, so the caching allocator does not hand its memory out again while the other stream still reads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


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
