"""ONNX Runtime: the CPU engine of machines without a GPU (and of the demo); CUDA where onnxruntime-gpu's
CUDA execution provider is installed (then I/O stays on the device through IO binding)."""

from __future__ import annotations

import numpy as np
import torch

from inspector.backends.base import Backend, EngineOutput
from inspector.errors import EngineError


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def _activate_impl(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError("ONNX Runtime here has no CUDA execution provider: install onnxruntime-gpu, or "
                                  "set engine.backend auto (the torch backend runs the folder's checkpoint)")
            providers: list = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}),
                               "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.engine.file), opts, providers=providers)
        except Exception as exc:  # ORT raises its own unexported exception types
            raise EngineError(f"ONNX Runtime cannot load {self.engine.file}: {exc}: rebuild with "
                              "`trainer build-engine`") from exc
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _infer_impl(self, frames: torch.Tensor) -> EngineOutput:
        if self.device.type == "cuda":
            return self._infer_cuda(frames)
        result = self.session.run(self.outputs, {self.manifest.input_name: frames.numpy()})
        presence = torch.from_numpy(result[1]) if len(result) > 1 else None
        return EngineOutput(torch.from_numpy(result[0]), presence)

    def _infer_cuda(self, frames: torch.Tensor) -> EngineOutput:
        """IO binding on torch CUDA tensors; ORT runs on its own stream and returns when the outputs are ready,
        so the caller's stream is synchronised first (the frames must have arrived)."""
        frames = frames.to(self.device).contiguous()
        torch.cuda.current_stream(self.device).synchronize()
        n, height, width = frames.shape[0], *self.input_shape
        outs = [torch.empty((n, 4, height, width), dtype=torch.float32, device=self.device),
                torch.empty((n, 4), dtype=torch.float32, device=self.device)][:len(self.outputs)]
        binding = self.session.io_binding()
        binding.bind_input(self.manifest.input_name, "cuda", self.device.index or 0, np.uint8, tuple(frames.shape),
                           frames.data_ptr())
        for name, tensor in zip(self.outputs, outs, strict=True):
            binding.bind_output(name, "cuda", self.device.index or 0, np.float32, tuple(tensor.shape),
                                tensor.data_ptr())
        self.session.run_with_iobinding(binding)
        return EngineOutput(outs[0], outs[1] if len(outs) > 1 else None)

    def _close_impl(self) -> None:
        del self.session
