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
    for name, spec in engines.FORMATS.items():  # the one format table: its runtime exists and runs it there
        assert spec.name == name and spec.backend in BACKENDS and set(spec.precision) == set(spec.devices)
        assert set(spec.devices) <= set(BACKENDS[spec.backend].devices)
        for cuda in (False, True):
            device, precision = spec.built_for(cuda)
            assert device in spec.devices and (cuda or device == "cpu" or spec.devices == ("cuda",))
            assert precision in ("fp16", "fp32")
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


@pytest.fixture
def no_tf32():
    """Exact FP32 on CUDA: TF32 convolutions and matmuls off for the test (restored after)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_cuda_graph_buckets_equal_eager_at_the_same_batch_size(tiny_engine, no_tf32, fp16) -> None:
    """A graph replays the kernels eager chose for the same shapes: same batch size, same bits. A batch padded into
    a bucket equals eager on a batch of the bucket's size in those rows (no row reads another)."""
    engine = engines.load(tiny_engine)
    buckets = (1, 2, 4, 8)
    with backends.load(engine, "torch", "cuda", fp16=fp16, graph_batches=buckets) as graphed, \
            backends.load(engine, "torch", "cuda", fp16=fp16, graph_batches=()) as eager:
        assert sorted(graphed.graphs) == list(buckets)  # captured at activate, before any batch
        assert graphed.bucket(3) == 4 and graphed.bucket(8) == 8 and graphed.bucket(9) is None
        for n in buckets:
            x = frames(n).cuda()
            a, b = graphed.infer(x), eager.infer(x)
            assert torch.equal(a.probs, b.probs) and torch.equal(a.presence, b.presence)
        x = frames(3).cuda()
        a, b = graphed.infer(x), eager.infer(torch.cat([x, x[:1]]))  # bucket 4, padded
        assert a.probs.shape[0] == 3 and torch.equal(a.probs, b.probs[:3])
        first = graphed.infer(frames(2).cuda()).probs
        kept = first.clone()
        graphed.infer(frames(4).cuda())  # the next replay must not overwrite what the last call returned
        assert torch.equal(first, kept)


@pytest.mark.gpu
def test_pipeline_on_cuda_streams_gives_the_engines_own_answer(tiny_engine) -> None:
    """Upload, engine and post-processing on three streams, batches of 4 in the bucket-4 graph: every event equals
    the CPU reference on the same engine's output for the same frames (benchmarks/gpu_acceptance.py also drives
    step() under TORCH_CUDA_SANITIZER=1 for races)."""
    from inspector import config
    from inspector.feed import feed, messages, synthetic_payloads
    from inspector.io.memory import MemoryStreams
    from inspector.pipeline import from_config
    from inspector.postprocess import analyse_cpu
    from inspector.protocol import unpack_event

    streams = MemoryStreams()
    cfg = config.load(engine__path=str(tiny_engine), engine__backend="torch", engine__device="cuda",
                      engine__cuda_graph_batches=(4,), batching__batch_size=4, batching__max_wait_ms=5.0)
    pipe = from_config(cfg, streams)
    payloads = synthetic_payloads(0, 12)
    feed(lambda batch: [streams.add(f) for f in batch], messages(payloads, "cam-g"), 12)
    try:
        pipe.run(burst=True, handle_signals=False)
        got = {unpack_event(e)["frame_id"]: unpack_event(e)["defects"] for e in streams.events}
        images = torch.from_numpy(np.stack([np.frombuffer(p[0], np.uint8).reshape(256, 1600)
                                            for p in payloads]))[:, None]
        backend = pipe.engine.backend  # the same engine: every batch of <= 4 runs in its bucket-4 graph
        outs = [backend.infer(images[i:i + 4].cuda()) for i in range(0, 12, 4)]
    finally:
        pipe.close()
    probs = torch.cat([o.probs for o in outs]).float().cpu().numpy()
    presence = torch.cat([o.presence for o in outs]).float().cpu().numpy()
    want = analyse_cpu(probs, presence, pipe.engine.params)
    assert sum(len(d) for d in want) > 0
    for i, defects in enumerate(want):
        assert [(d.class_id, d.rle, d.area, d.score, d.components) for d in defects] == [
            (d["class_id"], d["rle"], d["area"], d["score"], d["components"]) for d in got[f"cam-g-{i}"]]
