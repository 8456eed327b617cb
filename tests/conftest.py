"""Shared fixtures and helpers: private redis-servers on free ports, tiny real engines built by `trainer
build-engine`, real Severstal sample data, worker processes. Markers: gpu (skips without CUDA), tensorrt (skips
without the package), redis, slow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
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
def redis_cluster():
    """A private Redis Cluster: 3 masters + 3 replicas on loopback, failover after 1 s of silence."""
    from inspector.io.redis_server import PrivateCluster

    cluster = PrivateCluster(masters=3, node_timeout_ms=1000)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster) -> str:
    """The cluster, healthy (3 masters with a replica each in sync) and empty."""
    redis_cluster.wait_healthy()
    redis_cluster.flush()
    return redis_cluster.url


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


@pytest.fixture(scope="session")
def tiny_engine_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny engine (other weights, other id) in its own engines folder, for engine swaps."""
    from inspector import synth
    from inspector.model import build as build_model
    from trainer.build_engine import build
    from trainer.train import save_checkpoint

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("ckpt-b") / "tiny-b.pt"
    save_checkpoint(path, build_model(TINY_SPEC), postprocess={"thresholds": [0.5] * 4, "min_component_area": [10] * 4,
                                                               "min_class_area": [20] * 4,
                                                               "presence_threshold": [0.0] * 4})
    engines = tmp_path_factory.mktemp("engines-b")
    frames = torch.from_numpy(np.stack([synth.frame(1, i).image for i in range(2)]))[:, None]
    return build(path, frames, engines, "onnx", max_batch=8)


@pytest.fixture
def worker_env(tiny_engine: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- helpers shared by the Redis and service tests ------------------------------------------------------------

def make_cfg(url: str, engine: Path, **over: object):
    """A worker config for tests: small batches, short waits, a fixed consumer name."""
    from inspector import config

    return config.load(None, url, engine__path=str(engine), batching__batch_size=4, batching__max_wait_ms=5.0,
                       redis__block_ms=100, redis__consumer=over.pop("consumer", "test-worker"), **over)


def events(client: redis.Redis, key: str = "inspect:{main}:events") -> list[dict]:
    from inspector.protocol import EVENT_FIELD, unpack_event

    return [unpack_event(f[EVENT_FIELD]) for _, f in client.xrange(key)]


def drain(pipe) -> None:
    while pipe.step():
        pass


def worker_cmd(url: str, engine: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "inspector.cli", "run", "--redis-url", url, "--engine", str(engine),
            "--batch-size", "4", "--threads", "1", *extra]


# A rejection text whose detail is empty: "...: " at the end or before a comma, an empty "()", or a detail that
# is only empty quotes (an exception with no text, a field name that prints as nothing).
EMPTY_DETAIL = re.compile(r":\s*$|:\s*[,;)]|\(\s*\)|:\s*(''|\"\")\s*$")


def assert_names_problem(text: object, what: str = "") -> None:
    """A rejection text must say what was wrong: non-empty, and no empty detail anywhere in it."""
    assert isinstance(text, str) and text.strip(), f"{what}: empty rejection text {text!r}"
    assert not EMPTY_DETAIL.search(text), f"{what}: rejection text ends in an empty detail: {text!r}"


def wait_for(condition, timeout: float = 120.0, what: str = "condition", every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def copy_checkout(dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of this checkout's working tree as git sees it (tracked and untracked-not-ignored files, edits
    included, no .venv, runs or built engines): a clean clone that also holds what is not committed yet."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if name.startswith(skip) or not (src.exists() or src.is_symlink()):
            continue  # deleted in the working tree, not yet in the index
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)
    return dest


def borrowed_site_packages(dest: Path) -> Path:
    """A folder of links to what this interpreter's site-packages hold (the shared venv's among them), minus any
    checkout's editable-install hook: as PYTHONPATH it lends a throwaway venv made by scripts/env.sh the
    dependencies without installing them, and without importing another checkout's code."""
    dest.mkdir(parents=True, exist_ok=True)
    for folder in (Path(p) for p in sys.path if p.endswith("site-packages")):
        for entry in folder.iterdir():
            link = dest / entry.name
            if not entry.name.startswith("__editable__") and not entry.name.endswith(".pth") and not link.exists():
                link.symlink_to(entry)
    return dest


def engines_folder(root: Path, *engine_paths: Path) -> tuple[Path, list[str]]:
    """An engines folder at `root` holding copies of these engine folders (no `current`); their folder names."""
    import shutil

    root.mkdir()
    names = []
    for path in engine_paths:
        real = Path(os.path.realpath(path))
        shutil.copytree(real, root / real.name)
        names.append(real.name)
    return root, names
