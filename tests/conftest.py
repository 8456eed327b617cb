"""Shared fixtures: a private redis-server on a free port, a tiny real engine built by `trainer build-engine`,
real Severstal sample data. Markers: gpu (skips without CUDA), tensorrt (skips without the package), redis,
slow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "severstal-sample"
TINY_SPEC = {"encoder": "tu-mobilenetv3_small_100", "decoder_channels": [16, 16, 16, 8, 8], "scale": 0.5}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_cuda = pytest.mark.skip(reason="needs CUDA")
    try:
        import tensorrt  # noqa: F401

        has_trt = True
    except ImportError:
        has_trt = False
    no_trt = pytest.mark.skip(reason="needs the tensorrt package")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(no_trt)


@pytest.fixture(scope="session")
def redis_server() -> str:
    from inspector.io.redis_server import PrivateRedis

    server = PrivateRedis()
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not SAMPLE.exists():
        pytest.skip(f"{SAMPLE} not present (the shared Severstal sample)")
    return SAMPLE


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny Unet, saved as a trainer checkpoint (seeded: the same weights each run)."""
    from inspector.model import build
    from trainer.train import save_checkpoint

    torch.manual_seed(0)
    model = build(TINY_SPEC)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, postprocess={"thresholds": [0.5] * 4, "min_component_area": [10] * 4,
                                              "min_class_area": [20] * 4, "presence_threshold": [0.0] * 4})
    return path


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """engines/current of a temporary engines folder, built through the real build-engine path (ONNX)."""
    from inspector import synth
    from trainer.build_engine import build

    engines = tmp_path_factory.mktemp("engines")
    frames = torch.from_numpy(np.stack([synth.frame(1, i).image for i in range(2)]))[:, None]
    build(tiny_checkpoint, frames, engines, "onnx", max_batch=8)
    return engines / "current"


@pytest.fixture
def worker_env(tiny_engine: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env
