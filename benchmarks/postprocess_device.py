"""analyse_device on CPU tensors against analyse_cpu, on full 256 x 1600 frames: the cost of the device path on
maps in host memory (issue: at most 3x analyse_cpu), on adversarial shapes and on real Severstal masks.

    python benchmarks/postprocess_device.py [--rounds 7]

All run on the same batch, in turn, round after round (none gets warm caches the others did not), and every round
checks that they agree bit for bit. Reports the median time per batch of each and the ratio of the host path (what
`analyse` does with CPU tensors) to analyse_cpu; the runs path and the labelled path through CuPy's adapter (scipy
standing in for CuPy) are run on CPU tensors for reference only: their cost on a GPU is the acceptance run's.
Writes benchmarks/results/postprocess_device_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_device_postprocess import adversarial, assert_same, shaped_probs  # noqa: E402

from inspector.bench import environment  # noqa: E402
from inspector.postprocess import PostprocessParams, analyse_cpu, analyse_device  # noqa: E402
from inspector.postprocess.labellers import label_scipy  # noqa: E402

REAL = next((p for p in (ROOT.parent / "shared" / "data" / "severstal-sample", ROOT / "benchmarks" / "data" /
                         "severstal-8") if p.exists()), None)
PARAMS = PostprocessParams(thresholds=(0.5,) * 4, min_component_area=(50,) * 4, min_class_area=(200,) * 4,
                           presence_threshold=(0.0,) * 4)


def batches() -> dict[str, np.ndarray]:
    out = {"adversarial shapes (8 frames x 4 classes)": shaped_probs(list(adversarial(256, 1600).values()))}
    if REAL is not None:
        from trainer.data import load_dataset, masks_of

        samples = load_dataset(REAL)[:8]
        masks = np.stack([masks_of(s) for s in samples]).astype(bool)
        noise = np.random.default_rng(1).random(masks.shape, dtype=np.float32) * 0.3
        out["real Severstal masks (8 frames x 4 classes)"] = np.where(masks, 0.7, 0.0).astype(np.float32) + noise
    return out


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "postprocess_device_cpu.json"))
    args = ap.parse_args()
    cases = []
    for name, probs in batches().items():
        tensor = torch.from_numpy(probs)
        variants = {"analyse_cpu": None, "analyse_device (host path)": {},
                    "analyse_device (runs path: CUDA without a labeller)": {"labeller": None, "compact": True},
                    "analyse_device (labelled: CuPy's adapter, scipy labeller)": {"labeller": label_scipy}}
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            t_cpu, want = timed(analyse_cpu, probs, None, PARAMS)
            times["analyse_cpu"].append(t_cpu)
            for key, kwargs in variants.items():
                if kwargs is not None:
                    t, got = timed(analyse_device, tensor, None, PARAMS, **kwargs)
                    assert_same(want, got)
                    times[key].append(t)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        ratio = med["analyse_device (host path)"] / med["analyse_cpu"]
        cases.append({"batch": name, "ms_per_batch_median": {k: round(v, 2) for k, v in med.items()},
                      "device_over_cpu": round(ratio, 3), "within_3x": ratio <= 3.0,
                      "defects": sum(len(f) for f in want), "identical": True})
        print(f"{name}: cpu {med['analyse_cpu']:.1f} ms, device (host path) {ratio:.2f}x; "
              + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()))
    result = {"benchmark": "postprocess_device_cpu", "rounds": args.rounds, "params": PARAMS.as_dict(),
              "cases": cases, "all_within_3x": all(c["within_3x"] for c in cases), **environment()}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
