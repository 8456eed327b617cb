"""Which backend runs which engine where: the one table, checked for every combination, CUDA present or not;
and the GPU-side behaviour (CUDA graph buckets, streams) on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inspector import backends, engines
from inspector.backends import BACKENDS, NATIVE, Host, resolve
from inspector.errors import ConfigError

CPU = Host(cuda=False, ort_cuda=False, tensorrt=False)
CUDA = Host(cuda=True, ort_cuda=False, tensorrt=False)
CUDA_ORT = Host(cuda=True, ort_cuda=True, tensorrt=False)
CUDA_TRT = Host(cuda=True, ort_cuda=False, tensorrt=True)

TABLE = [
    # (format, checkpoint kept, backend, device, host) -> (backend, device) or the error's words
    ("onnx", True, "auto", "auto", CPU, ("onnxruntime", "cpu")),           # the demo engine on a CPU machine
    ("onnx", True, "auto", "auto", CUDA, ("torch", "cuda")),               # CUDA, no ORT CUDA provider: checkpoint
    ("onnx", False, "auto", "auto", CUDA, ("onnxruntime", "cpu")),         # ... and no checkpoint: ORT on the CPU
    ("onnx", True, "auto", "auto", CUDA_ORT, ("onnxruntime", "cuda")),     # onnxruntime-gpu installed
    ("onnx", True, "auto", "cpu", CUDA, ("onnxruntime", "cpu")),           # device forced to cpu
    ("onnx", True, "torch", "auto", CUDA, ("torch", "cuda")),
    ("onnx", True, "onnxruntime", "auto", CUDA, ("onnxruntime", "cpu")),   # asked for ORT: CPU is what it has
    ("tensorrt", True, "auto", "auto", CUDA_TRT, ("tensorrt", "cuda")),
    ("tensorrt", True, "auto", "auto", CUDA, ("torch", "cuda")),           # TensorRT not installed
    ("tensorrt", True, "auto", "auto", CPU, ("torch", "cpu")),             # a plan on a CPU machine: checkpoint
    ("tensorrt", False, "auto", "auto", CPU, "rebuild it"),
    ("torch", True, "auto", "auto", CUDA, ("torch", "cuda")),
    ("torch", True, "auto", "auto", CPU, ("torch", "cpu")),
    ("onnx", True, "auto", "cuda", CPU, "sees no CUDA device"),
    ("onnx", True, "tensorrt", "auto", CUDA_TRT, "cannot run a onnx engine"),
    ("onnx", False, "torch", "auto", CPU, "keeps no checkpoint"),
    ("onnx", True, "onnxruntime", "cuda", CUDA, "onnxruntime-gpu"),
    ("onnx", True, "tflite", "auto", CPU, "valid backends are auto, torch, onnxruntime, tensorrt"),
]


@pytest.mark.parametrize("fmt, ckpt, backend, device, host, expected", TABLE)
def test_resolution_table(fmt, ckpt, backend, device, host, expected) -> None:
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            resolve(fmt, ckpt, backend, device, host)
    else:
        choice = resolve(fmt, ckpt, backend, device, host)
        assert (choice.backend, choice.device) == expected and choice.why


def test_every_format_has_a_native_backend_and_config_accepts_the_names() -> None:
    from inspector import config

    assert set(NATIVE) == set(engines.FORMATS)
    for name in BACKENDS:
        assert config.load(engine__backend=name).engine.backend == name
    with pytest.raises(ConfigError, match=r"engine\.backend"):
        config.load(engine__backend="tflite")


def test_this_machine_resolves_the_tiny_engine(tiny_engine) -> None:
    runner = backends.load(engines.load(tiny_engine))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert str(runner.device).startswith(expected) and runner.why


# -- on a GPU --------------------------------------------------------------------------------------------------

def frames(n: int) -> torch.Tensor:
    from inspector import synth

    return torch.from_numpy(np.stack([synth.frame(3, i).image for i in range(n)]))[:, None]


@pytest.mark.gpu
def test_cuda_graph_buckets_captured_at_activate_and_padded(tiny_engine) -> None:
    engine = engines.load(tiny_engine)
    with backends.load(engine, "torch", "cuda", graph_batches=(1, 4, 8)) as graphed, \
            backends.load(engine, "torch", "cuda", graph_batches=()) as eager:
        assert sorted(graphed.graphs) == [1, 4, 8]  # captured at activate, before any batch
        assert graphed.bucket(3) == 4 and graphed.bucket(8) == 8 and graphed.bucket(9) is None
        for n in (1, 3, 8):
            x = frames(n).cuda()
            a, b = graphed.infer(x), eager.infer(x)
            assert a.probs.shape[0] == n
            assert torch.equal(a.probs, b.probs) and torch.equal(a.presence, b.presence)
        first = graphed.infer(frames(2).cuda()).probs
        kept = first.clone()
        graphed.infer(frames(4).cuda())  # the next replay must not overwrite what the last call returned
        assert torch.equal(first, kept)


@pytest.mark.gpu
def test_pipeline_on_cuda_streams_give_the_cpu_answer(tiny_engine, tiny_checkpoint) -> None:
    """Upload, engine and post-processing on three streams: every batch's events equal the CPU reference on the
    same engine output (run under TORCH_CUDA_SANITIZER=1 by benchmarks/gpu_acceptance.sh for races)."""
    from inspector import config
    from inspector.feed import feed, messages, synthetic_payloads
    from inspector.io.memory import MemoryStreams
    from inspector.model import load_checkpoint
    from inspector.pipeline import from_config
    from inspector.postprocess import analyse_cpu
    from inspector.protocol import unpack_event

    streams = MemoryStreams()
    cfg = config.load(engine__path=str(tiny_engine), engine__backend="torch", engine__device="cuda",
                      engine__fp16=False, batching__batch_size=4, batching__max_wait_ms=5.0)
    pipe = from_config(cfg, streams)
    feed(lambda batch: [streams.add(f) for f in batch], messages(synthetic_payloads(0, 12), "cam-g"), 12)
    pipe.run(burst=True, handle_signals=False)
    pipe.close()
    got = {unpack_event(e)["frame_id"]: unpack_event(e)["defects"] for e in streams.events}
    model, _ = load_checkpoint(str(tiny_checkpoint), "cuda")
    from inspector.feed import synthetic_payloads as payloads

    images = torch.from_numpy(np.stack([np.frombuffer(p[0], np.uint8).reshape(256, 1600)
                                        for p in payloads(0, 12)]))[:, None].cuda()
    with torch.inference_mode():
        probs, presence = model(images)
    want = analyse_cpu(probs.float().cpu().numpy(), presence.float().cpu().numpy(), pipe.engine.params)
    for i, defects in enumerate(want):
        assert [d.rle for d in defects] == [d["rle"] for d in got[f"cam-g-{i}"]]
