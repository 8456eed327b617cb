"""ONNX Runtime on the CPU: the engine of machines without a GPU (and of the demo)."""

from __future__ import annotations

import torch

from inspector.backends.base import Backend, EngineOutput
from inspector.errors import EngineError


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def _activate_impl(self) -> None:
        import onnxruntime as ort

        if self.device.type != "cpu":
            raise EngineError("the onnxruntime backend runs on the CPU: set engine.device to cpu, or use the "
                              "torch or tensorrt backend on CUDA")
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.engine.file), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own unexported exception types
            raise EngineError(f"ONNX Runtime cannot load {self.engine.file}: {exc}: rebuild with "
                              "`trainer build-engine`") from exc
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _infer_impl(self, frames: torch.Tensor) -> EngineOutput:
        result = self.session.run(self.outputs, {self.manifest.input_name: frames.numpy()})
        presence = torch.from_numpy(result[1]) if len(result) > 1 else None
        return EngineOutput(torch.from_numpy(result[0]), presence)

    def _close_impl(self) -> None:
        del self.session
