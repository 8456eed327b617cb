"""The backend lifecycle (after Polygraphy's runners): activate -> infer* -> close.

The base class owns input checks and the output contract; each backend fills `_activate_impl`,
`_infer_impl` and optionally `_close_impl`. Input: uint8 [N, 1, H, W] on the backend's device. Output:
per-class probabilities [N, 4, H, W] and presence [N, 4] (None without a classification head), any float dtype
and memory format. On CUDA, `infer` enqueues on the caller's current stream (the pipeline's engine stream) and
returns tensors the caller owns: the next call never overwrites them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from inspector.engines import EngineFolder
from inspector.errors import EngineError

if TYPE_CHECKING:
    import torch


@dataclass
class EngineOutput:
    probs: torch.Tensor
    presence: torch.Tensor | None


class Backend(ABC):
    name: ClassVar[str]

    def __init__(self, engine: EngineFolder, device: str, threads: int = 0, fp16: bool = True,
                 graph_batches: tuple[int, ...] = ()) -> None:
        self.engine = engine
        self.manifest = engine.manifest
        import torch

        self.device = torch.device(device)
        self.threads = threads
        self.fp16 = fp16
        self.graph_batches = graph_batches  # torch on CUDA: batch sizes captured as CUDA graphs at activate()
        self.active = False
        self.why = ""  # why this backend and device were chosen (inspector.backends.resolve), for the start-up line

    @property
    def model_id(self) -> str:
        return self.manifest.engine_id

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.manifest.height, self.manifest.width

    def activate(self) -> Backend:
        if not self.active:
            self._activate_impl()
            self.active = True
        return self

    def infer(self, frames: torch.Tensor) -> EngineOutput:
        if not self.active:
            raise EngineError(f"{self.name} backend used before activate()")
        import torch  # imported at activate() already: a dict lookup here

        n = frames.shape[0]
        expected = (1, *self.input_shape)
        if frames.dtype != torch.uint8 or tuple(frames.shape[1:]) != expected:
            raise EngineError(f"{self.name} backend expects uint8 [N, {', '.join(map(str, expected))}], "
                              f"got {frames.dtype} {list(frames.shape)}")
        if not 1 <= n <= self.manifest.max_batch:
            raise EngineError(f"batch of {n} outside the engine's 1..{self.manifest.max_batch}: lower "
                              "batching.batch_size or rebuild with a larger --max-batch")
        return self._infer_impl(frames)

    def close(self) -> None:
        if self.active:
            self.active = False
            self._close_impl()

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _activate_impl(self) -> None: ...

    @abstractmethod
    def _infer_impl(self, frames: torch.Tensor) -> EngineOutput: ...

    def _close_impl(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Release sessions and device memory; nothing by default."""
