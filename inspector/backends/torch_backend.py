"""PyTorch on CPU or CUDA, from the trainer checkpoint kept in the engine folder.

On CUDA: FP16 weights, channels-last, `inference_mode`, and one CUDA graph per batch size (captured on first
use after a warm-up), replayed with the batch copied into its static input.
"""

from __future__ import annotations

import logging

import torch

from inspector.backends.base import Backend, EngineOutput
from inspector.errors import EngineError
from inspector.model import load_checkpoint

log = logging.getLogger(__name__)


class TorchBackend(Backend):
    name = "torch"
    use_cuda_graphs = True

    def _activate_impl(self) -> None:
        path = self.engine.file if self.manifest.format == "torch" else self.engine.checkpoint
        if path is None or not path.exists():
            raise EngineError(f"{self.engine.path} keeps no torch checkpoint: use the "
                              f"{self.manifest.format} backend, or rebuild with `trainer build-engine` "
                              "(it keeps the checkpoint beside the engine)")
        if self.threads and self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        model, _ = load_checkpoint(str(path), self.device)
        self.half = self.fp16 and self.device.type == "cuda"
        if self.half:
            model = model.half().to(memory_format=torch.channels_last)
        self.model = model
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}

    @torch.inference_mode()
    def _infer_impl(self, frames: torch.Tensor) -> EngineOutput:
        frames = frames.to(self.device, non_blocking=True)
        if self.device.type == "cuda" and self.use_cuda_graphs:
            probs, presence = self._graphed(frames)
        else:
            probs, presence = self.model(frames)
        return EngineOutput(probs, presence)

    def _graphed(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = frames.shape[0]
        if n not in self.graphs:
            static_in = torch.zeros_like(frames)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up on a side stream, as torch.cuda.graphs documents
                    self.model(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(static_in)
            self.graphs[n] = (graph, static_in, static_out)
            log.info("torch backend: captured a CUDA graph for batch %d", n)
        graph, static_in, (probs, presence) = self.graphs[n]
        static_in.copy_(frames)
        graph.replay()
        return probs.clone(), presence.clone()

    def _close_impl(self) -> None:
        self.graphs.clear()
        del self.model
