"""TensorRT 10 / 11 plans, with torch CUDA tensors as I/O (no pycuda: torch owns context, memory, streams).

Follows NVIDIA's demo/Diffusion engine.py: outputs preallocated once for the largest batch and sliced per call,
`set_input_shape` (checked), `set_tensor_address(name, tensor.data_ptr())`, `execute_async_v3` on the caller's
torch stream, never the legacy default stream (which would synchronise the whole device). A plan runs only on the
TensorRT version and GPU that built it: a mismatch is refused with the fix.
"""

from __future__ import annotations

import torch

from inspector.backends.base import Backend, EngineOutput
from inspector.errors import EngineError, EngineMismatchError

_DTYPES = {"HALF": torch.float16, "FLOAT": torch.float32, "UINT8": torch.uint8, "INT32": torch.int32,
           "BF16": torch.bfloat16}


def check_built_here(manifest_versions: dict[str, str], manifest_gpu: dict[str, object], trt_version: str,
                     gpu_name: str, capability: str) -> None:
    """Raise EngineMismatchError unless the plan was built by this TensorRT on this GPU model (not to be confused
    with serving.check_compatible, which checks a candidate engine against the one in service and the config)."""
    built = manifest_versions.get("tensorrt")
    if built != trt_version:
        raise EngineMismatchError(f"engine built with TensorRT {built}, this machine has {trt_version}: "
                                  "rebuild it here with `trainer build-engine`")
    if manifest_gpu.get("name") != gpu_name or manifest_gpu.get("capability") != capability:
        raise EngineMismatchError(f"engine built for {manifest_gpu.get('name')} (sm {manifest_gpu.get('capability')}), "
                                  f"this GPU is {gpu_name} (sm {capability}): rebuild it here with "
                                  "`trainer build-engine`")


class TensorRTBackend(Backend):
    name = "tensorrt"

    def _activate_impl(self) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise EngineError("the tensorrt backend needs the tensorrt package (pip install "
                              "'steel-inspector[tensorrt]'), or build an ONNX engine for onnxruntime") from exc
        if self.device.type != "cuda":
            raise EngineError("the tensorrt backend needs engine.device cuda")
        props = torch.cuda.get_device_properties(self.device)
        check_built_here(self.manifest.versions, self.manifest.gpu, trt.__version__, props.name,
                         f"{props.major}.{props.minor}")
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.plan = self.runtime.deserialize_cuda_engine(self.engine.file.read_bytes())
        if self.plan is None:
            raise EngineError(f"TensorRT could not deserialize {self.engine.file}: rebuild it with "
                              "`trainer build-engine`")
        self.context = self.plan.create_execution_context()
        self.names = [self.plan.get_tensor_name(i) for i in range(self.plan.num_io_tensors)]
        self.outputs = [n for n in self.names if self.plan.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.own_stream = torch.cuda.Stream(self.device)  # used when called on the legacy default stream
        # One buffer per output for the largest batch; a call uses its first n rows.
        height, width = self.input_shape
        if not self.context.set_input_shape(self.manifest.input_name, (self.manifest.max_batch, 1, height, width)):
            raise EngineError(f"{self.engine.file} does not accept batch {self.manifest.max_batch}: its optimisation "
                              "profile disagrees with its manifest; rebuild with `trainer build-engine`")
        self.buffers = {name: torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name),
                                          device=self.device) for name in self.outputs}

    def _dtype(self, name: str) -> torch.dtype:
        return _DTYPES[self.plan.get_tensor_dtype(name).name]

    def _infer_impl(self, frames: torch.Tensor) -> EngineOutput:
        n = frames.shape[0]
        frames = frames.to(self.device, non_blocking=True).contiguous()
        if not self.context.set_input_shape(self.manifest.input_name, tuple(frames.shape)):
            raise EngineError(f"TensorRT refused input shape {tuple(frames.shape)} "
                              f"(profile 1..{self.manifest.max_batch})")
        self.context.set_tensor_address(self.manifest.input_name, frames.data_ptr())
        for name, tensor in self.buffers.items():
            self.context.set_tensor_address(name, tensor[:n].data_ptr())  # rows 0..n-1: contiguous, same address
        caller = torch.cuda.current_stream(self.device)
        stream = self.own_stream if caller.cuda_stream == 0 else caller
        if stream is not caller:
            stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            names = self.manifest.output_names
            probs = self.buffers[names[0]][:n].clone()  # the next call reuses the buffers
            presence = self.buffers[names[1]][:n].clone() if len(names) > 1 and names[1] in self.buffers else None
        if stream is not caller:
            caller.wait_stream(stream)
        return EngineOutput(probs, presence)

    def _close_impl(self) -> None:
        self.buffers.clear()
        del self.context, self.plan, self.runtime
        torch.cuda.empty_cache()
