"""JPEG decode off the critical path: frames/s of `DecodePool` on real Severstal JPEGs, by pool size, and the
worker end to end on JPEG frames with the pool off and on (`inspector bench --encoding jpeg --decode-threads`).

    python benchmarks/decode_pool.py [--engine /path/to/a/fast/engine] [--frames 400]

The pool alone shows what decoding can deliver when the CPU is free for it (on a GPU machine the engine does not
run on the CPU); the bench shows what it changes on this CPU machine, where the engine holds the cores too.
Pool sizes are interleaved, round after round. Writes benchmarks/results/decode_pool_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.bench import environment  # noqa: E402
from inspector.decode import DecodePool  # noqa: E402
from inspector.feed import folder_payloads, messages  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "severstal-sample"


def pool_rate(threads: int, msgs: list, batch: int) -> float:
    pool = DecodePool(threads)
    outs = [np.empty((256, 1600), np.uint8) for _ in range(batch)]
    t0 = time.perf_counter()
    for i in range(0, len(msgs) - batch + 1, batch):
        errors = pool.decode(msgs[i:i + batch], outs)
        assert not any(errors)
    elapsed = time.perf_counter() - t0
    pool.close()
    return (len(msgs) // batch * batch) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default=str(ROOT / "engines" / "current"))
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode_pool_cpu.json"))
    args = ap.parse_args()
    payloads = folder_payloads(REAL / "images") + folder_payloads(REAL / "unlabeled_test_images")
    gen = messages(payloads, "decode")
    msgs = [next(gen) for _ in range(len(payloads) * 2)]
    sizes = (0, 1, 2, 3)
    rates: dict[int, list[float]] = {t: [] for t in sizes}
    for _ in range(args.rounds):
        for t in sizes:
            rates[t].append(pool_rate(t, msgs, 16))
    pool = {f"threads={t} (+ the caller)": round(statistics.median(v), 1) for t, v in rates.items()}
    print("decode pool, real Severstal JPEGs, frames/s:", pool)
    worker: dict[str, list[dict]] = {"decode_threads=0": [], "decode_threads=1": []}
    for _ in range(2):
        for t in (0, 1):
            out = subprocess.run([sys.executable, "-m", "inspector.cli", "bench", "--engine", args.engine,
                                  "--encoding", "jpeg", "--frames", str(args.frames), "--decode-threads", str(t),
                                  "--json"], capture_output=True, text=True, cwd=ROOT, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            worker[f"decode_threads={t}"].append({k: r[k] for k in ("fps", "engine_fps", "fps_over_engine_fps")}
                                                 | {"decode_ms_per_frame": r["stage_ms_per_frame"]["decode"]})
            print(f"worker, decode_threads={t}:", worker[f"decode_threads={t}"][-1])
    result = {"benchmark": "decode_pool", "pool_frames_per_s": pool, "pool_batch": 16,
              "jpeg_frames": len(msgs), "engine": str(Path(args.engine).resolve().name), "worker_jpeg_bench": worker,
              **environment()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
