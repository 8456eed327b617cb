"""The GPU acceptance run (issue: the GPU path): one command, under 10 minutes on one H100/H200, one JSON.

    bash benchmarks/gpu_acceptance.sh            # on a machine with CUDA (see that script for the set-up)
    python benchmarks/gpu_acceptance.py --cpu-check   # the same steps on the CPU with tiny sizes: checks the
                                                      # script itself, writes to /tmp, claims no GPU figure

Steps, each timed and recorded (a failing step is recorded with its error, the run goes on):
  tests          pytest -m "gpu or tensorrt", then the same under TORCH_CUDA_SANITIZER=1 (stream races)
  engine         ms per batch for batch 1..32, torch FP16 backend with CUDA graphs (and TensorRT where it imports),
                 on an untrained Unet-resnet18 at 256 x 1600 (throughput does not depend on the weights)
  postprocess    analyse_device ms per batch of 32 frames on real Severstal masks and on adversarial shapes
                 (spiral, frame-wide zigzag, scratch crossing a mark, ...), against the rule: <= 10% of the engine
  syncs          host synchronisations per batch in the running pipeline (torch.cuda.set_sync_debug_mode)
  end_to_end     `inspector bench --redis` at offered 800 and 3,000 frames/s (JPEG), p50 / p99 latency
  memory         torch.cuda.max_memory_reserved
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from inspector import backends, bench, config, engines, synth  # noqa: E402
from inspector.model import ModelSpec, build  # noqa: E402
from inspector.postprocess import PostprocessParams, analyse_device  # noqa: E402
from trainer.build_engine import build as build_engine  # noqa: E402
from trainer.train import save_checkpoint  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "severstal-sample"


def step(results: dict[str, Any], name: str, fn, *args: Any) -> None:
    t0 = time.monotonic()
    print(f"== {name}", flush=True)
    try:
        results[name] = fn(*args)
    except Exception as exc:  # a failed step is a result too; the others still run
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    results[name + "_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(results[name], default=str)[:2000], flush=True)


def run_tests(sanitizer: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if sanitizer:
        env["TORCH_CUDA_SANITIZER"] = "1"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu or tensorrt", "-p", "no:cacheprovider",
                          "--timeout", "240"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    return {"returncode": out.returncode, "summary": tail, "output_tail": (out.stdout + out.stderr)[-4000:]}


def make_engine(work: Path, device: str) -> Path:
    torch.manual_seed(0)
    save_checkpoint(work / "resnet18.pt", build(ModelSpec()))
    frames = torch.from_numpy(np.stack([synth.frame(5, i).image for i in range(4)]))[:, None]
    return build_engine(work / "resnet18.pt", frames, work / "engines", "torch", max_batch=32, install=False)


def engine_ms(folder: Path, device: str, sizes: list[int], iters: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = ["torch"] + (["tensorrt"] if device == "cuda" and backends.Host.detect().tensorrt else [])
    for name in names:
        engine = engines.load(folder)
        if name == "tensorrt":
            from trainer.build_engine import build as rebuild

            engine = engines.load(rebuild(folder / "checkpoint.pt", torch.zeros((2, 1, 256, 1600), dtype=torch.uint8),
                                          folder.parent, "tensorrt", max_batch=32, opt_batch=16, install=False))
        runner = backends.load(engine, name, device, graph_batches=tuple(sizes)).activate()
        per: dict[int, float] = {}
        for n in sizes:
            x = torch.randint(0, 256, (n, 1, 256, 1600), dtype=torch.uint8, device=device)
            for _ in range(3):
                runner.infer(x)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(iters):
                runner.infer(x)
            if device == "cuda":
                torch.cuda.synchronize()
            per[n] = round((time.perf_counter() - t0) / iters * 1000, 3)
        runner.close()
        out[name] = {"ms_per_batch": per, "frames_per_s": {n: round(n / (ms / 1000), 1) for n, ms in per.items()}}
    return out


def postprocess_ms(device: str, batch: int, iters: int, engine_ms_at_batch: float | None) -> dict[str, Any]:
    from test_device_postprocess import adversarial, shaped_probs

    from inspector.postprocess.components import cvcuda_available

    cases: dict[str, np.ndarray] = {}
    shapes = shaped_probs(list(adversarial(256, 1600).values()))
    cases["adversarial"] = np.concatenate([shapes] * (batch // len(shapes) + 1))[:batch]
    if REAL.exists():
        from trainer.data import load_dataset, masks_of

        masks = np.stack([masks_of(s) for s in load_dataset(REAL)]).astype(bool)
        noise = np.random.default_rng(1).random(masks.shape, dtype=np.float32) * 0.3
        real = (np.where(masks, 0.7, 0.0).astype(np.float32) + noise)
        cases["real_masks"] = np.concatenate([real] * (batch // len(real) + 1))[:batch]
    params = PostprocessParams(thresholds=(0.5,) * 4, min_component_area=(50,) * 4, min_class_area=(200,) * 4,
                               presence_threshold=(0.0,) * 4)
    out: dict[str, Any] = {"labeller": "cvcuda" if device == "cuda" and cvcuda_available() else "gated (OpenCV)",
                           "batch": batch}
    for name, probs in cases.items():
        tensor = torch.from_numpy(probs).to(device).half()
        analyse_device(tensor, None, params)
        t0 = time.perf_counter()
        for _ in range(iters):
            analyse_device(tensor, None, params)
        ms = (time.perf_counter() - t0) / iters * 1000
        out[name] = {"ms_per_batch": round(ms, 3), "share_of_engine": None if not engine_ms_at_batch
                     else round(ms / engine_ms_at_batch, 3)}
        if engine_ms_at_batch:
            out[name]["within_10pct_of_engine"] = ms <= 0.1 * engine_ms_at_batch
    return out


def syncs_per_batch(folder: Path, device: str, batches: int) -> dict[str, Any]:
    from inspector.feed import feed, messages, synthetic_payloads
    from inspector.io.memory import MemoryStreams
    from inspector.pipeline import from_config

    streams = MemoryStreams()
    cfg = config.load(engine__path=str(folder), engine__backend="torch", engine__device=device,
                      batching__batch_size=16, batching__max_wait_ms=2.0, engine__watch=False)
    pipe = from_config(cfg, streams)
    add = lambda batch: [streams.add(f) for f in batch]  # noqa: E731
    feed(add, messages(synthetic_payloads(0, 16), "warm"), 32)
    while pipe.step():
        pass
    feed(add, messages(synthetic_payloads(0, 16), "sync"), 16 * batches)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            while pipe.step():
                pass
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    pipe.close()
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    return {"batches": batches, "syncs": len(syncs), "per_batch": round(len(syncs) / batches, 2),
            "kinds": sorted(set(s.split("\n")[0][:120] for s in syncs))[:10]}


def end_to_end(folder: Path, device: str, rate: float, frames: int) -> dict[str, Any]:
    cfg = config.load(engine__path=str(folder), engine__backend="torch", engine__device=device,
                      batching__batch_size=16, batching__max_wait_ms=2.0, batching__decode_threads=8,
                      camera__fps=rate)
    r = bench.with_redis(cfg, frames, rate, encoding="jpeg")
    return {k: r[k] for k in ("fps", "engine_fps", "fps_over_engine_fps", "latency_ms_p50", "latency_ms_p99",
                              "frames", "offered_fps", "stage_ms_per_frame", "batch_size")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-check", action="store_true", help="Run every step on the CPU, tiny sizes, JSON in /tmp.")
    ap.add_argument("--work", default="/tmp/inspector-gpu-acceptance")
    args = ap.parse_args()
    device = "cpu" if args.cpu_check else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_acceptance.py needs CUDA (or --cpu-check): no CPU figure is passed off as a GPU one")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [1, 2] if args.cpu_check else [1, 2, 4, 8, 16, 32]
    results: dict[str, Any] = {"benchmark": "gpu_acceptance", "mode": "cpu-check (not a GPU figure)"
                               if args.cpu_check else "gpu"}
    t0 = time.monotonic()
    if not args.cpu_check:
        step(results, "tests", run_tests, False)
        step(results, "tests_sanitizer", run_tests, True)
    folder = make_engine(work, device)
    step(results, "engine", engine_ms, folder, device, sizes, 2 if args.cpu_check else 20)
    batch = 2 if args.cpu_check else 32
    eng = results["engine"].get("torch", {}).get("ms_per_batch", {}).get(batch) if isinstance(
        results["engine"], dict) else None
    step(results, "postprocess", postprocess_ms, device, batch, 1 if args.cpu_check else 20, eng)
    step(results, "syncs", syncs_per_batch, folder, device, 2 if args.cpu_check else 20)
    for rate, frames in ((800.0, 4000), (3000.0, 12000)):
        if args.cpu_check:
            rate, frames = rate / 100, 16
        step(results, f"end_to_end_{int(rate)}", end_to_end, folder, device, rate, frames)
    if device == "cuda":
        results["max_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    results["total_s"] = round(time.monotonic() - t0, 1)
    results.update(bench.environment())
    if args.cpu_check:
        out = work / "gpu_acceptance_cpu_check.json"
    else:
        name = torch.cuda.get_device_name(0).replace(" ", "_").lower()
        out = ROOT / "benchmarks" / "results" / f"gpu_acceptance_{name}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results in {out} ({results['total_s']} s)")


if __name__ == "__main__":
    main()
