"""GPU benchmark of the default Unet-resnet18 at 256 x 1600 (issue: the GPU path at camera rate).

    python benchmarks/gpu.py [--batches 8 16 32 64] [--frames 2000] [--rate 800]

Builds a torch-format engine of an untrained Unet-resnet18 (throughput does not depend on the weights), then:
engine-only and end-to-end fps per batch size (in-memory stream), end-to-end from a real Redis stream at the
best batch size flat out and at an offered rate, p50/p99 capture-to-event latency, per-stage times, GPU memory.
Writes benchmarks/results/gpu_<gpu>.json. Needs CUDA; refuses to run without it (no CPU figure is passed off
as a GPU one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector import bench, config, synth  # noqa: E402
from inspector.model import ModelSpec, build  # noqa: E402
from trainer.build_engine import build as build_engine  # noqa: E402
from trainer.train import save_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=800.0)
    ap.add_argument("--work", default="/tmp/inspector-gpu-bench")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs CUDA")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_checkpoint(work / "resnet18.pt", build(ModelSpec()))
    frames = torch.from_numpy(np.stack([synth.frame(5, i).image for i in range(4)]))[:, None]
    folder = build_engine(work / "resnet18.pt", frames, work / "engines", "torch", max_batch=max(args.batches))
    runs = []
    for b in args.batches:
        cfg = config.load(engine__path=str(folder), engine__backend="torch", engine__device="cuda",
                          batching__batch_size=b, batching__max_wait_ms=2.0, camera__fps=args.rate)
        torch.cuda.reset_peak_memory_stats()
        r = bench.offline(cfg, args.frames)
        r["gpu_memory_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        runs.append(r)
        print(f"batch {b}: {r['fps']} fps end to end, engine {r['engine_fps']} fps, stages {r['stage_ms_per_frame']}")
    best = max(runs, key=lambda r: r["engine_fps"])
    cfg = config.load(engine__path=str(folder), engine__backend="torch", engine__device="cuda",
                      batching__batch_size=best["batch_size"], batching__max_wait_ms=2.0, camera__fps=args.rate)
    flat_out = bench.with_redis(cfg, args.frames, 0.0)
    offered = bench.with_redis(cfg, min(args.frames, int(args.rate * 5)), args.rate)
    post_share = best["stage_ms_per_frame"]["postprocess"] / (1000.0 / best["engine_fps"])
    result = {"benchmark": "gpu", "model": "Unet-resnet18 256x1600 (untrained weights)", "offline": runs,
              "best_batch": best["batch_size"], "engine_fps": best["engine_fps"],
              "redis_flat_out": flat_out, "redis_offered": offered,
              "fps_over_engine_fps_redis": round(flat_out["fps"] / best["engine_fps"], 3),
              "postprocess_share_of_engine": round(post_share, 3), **bench.environment()}
    name = torch.cuda.get_device_name(0).replace(" ", "_").lower()
    out = ROOT / "benchmarks" / "results" / f"gpu_{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("offline", "redis_flat_out", "redis_offered")},
                     indent=2))


if __name__ == "__main__":
    main()
