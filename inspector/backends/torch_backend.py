"""PyTorch on CPU or CUDA, from the trainer checkpoint kept in the engine folder.

On CUDA: FP16 weights, channels-last, `inference_mode`, and CUDA graphs for fixed batch buckets
(`engine.cuda_graph_batches`, 1/2/4/8/12/16/24/32 by default) captured once at activate() into one shared memory
pool, largest first, with capture_error_mode="thread_local" so the other worker threads' CUDA calls cannot
invalidate a capture. A batch runs in the smallest bucket that holds it, padded (a row's output does not depend on
the other rows: the padding is sliced off); larger ones run eagerly.

Threads: activate() and close() run in the thread that loads the engine; infer() in the producer thread, on its
current (engine) stream.
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
        if self.device.type == "cuda":
            self._capture(sorted({b for b in self.graph_batches if b <= self.manifest.max_batch}, reverse=True))

    @torch.inference_mode()
    def _capture(self, buckets: list[int]) -> None:
        """One graph per bucket, largest first, into one pool (the smaller graphs reuse the larger's memory)."""
        if not buckets:
            return
        torch.cuda.set_device(self.device)
        height, width = self.input_shape
        pool = torch.cuda.graph_pool_handle()
        # The inputs are zero-filled on this stream; the side stream reads them: allocate first, then order.
        inputs = {n: torch.zeros((n, 1, height, width), dtype=torch.uint8, device=self.device) for n in buckets}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        for n in buckets:
            static_in = inputs[n]
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up on a side stream, as torch.cuda.graphs documents
                    self.model(static_in)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
                    static_out = self.model(static_in)
            self.graphs[n] = (graph, static_in, static_out)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        log.info("torch backend: captured CUDA graphs for batches %s", ", ".join(map(str, sorted(self.graphs))))

    def bucket(self, n: int) -> int | None:
        """The captured batch size a batch of n runs in (None: eagerly)."""
        fits = [b for b in self.graphs if b >= n]
        return min(fits) if fits else None

    @torch.inference_mode()
    def _infer_impl(self, frames: torch.Tensor) -> EngineOutput:
        frames = frames.to(self.device, non_blocking=True)
        n = frames.shape[0]
        size = self.bucket(n) if self.graphs else None
        if size is None:
            probs, presence = self.model(frames)
            return EngineOutput(probs, presence)
        graph, static_in, (probs, presence) = self.graphs[size]
        static_in[:n].copy_(frames)  # rows n.. keep an earlier batch's frames: padding, outputs sliced off
        graph.replay()
        # The graphs share one pool and the next replay reuses it: hand out copies, made on this stream.
        return EngineOutput(probs[:n].clone(), presence[:n].clone())

    def _close_impl(self) -> None:
        self.graphs.clear()
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
