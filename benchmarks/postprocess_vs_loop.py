"""`clean` + `encode` vs the per-component loop of the public Kaggle starter kernels, on 4 x 256 x 1600 maps
with hundreds of components per class. Same masks and same RLE strings are checked, then timed.

    python benchmarks/postprocess_vs_loop.py [--components 300] [--repeat 5]

The loop (from the widely copied PyTorch starter kernel):
    num_component, component = cv2.connectedComponents(mask.astype(np.uint8))
    for c in range(1, num_component):
        p = component == c
        if p.sum() > min_size: predictions[p] = 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.bench import environment  # noqa: E402
from inspector.postprocess import clean  # noqa: E402
from inspector.rle import encode  # noqa: E402


def kernel_post_process(probability: np.ndarray, threshold: float, min_size: int) -> np.ndarray:
    mask = cv2.threshold(probability, threshold, 1, cv2.THRESH_BINARY)[1]
    num_component, component = cv2.connectedComponents(mask.astype(np.uint8))
    predictions = np.zeros(probability.shape, np.float32)
    for c in range(1, num_component):
        p = component == c
        if p.sum() > min_size:
            predictions[p] = 1
    return predictions


def kernel_mask2rle(img: np.ndarray) -> str:
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def maps(components: int, seed: int = 0) -> np.ndarray:
    """Blobs of many sizes on a noisy background: `components` separate blobs per class or so."""
    rng = np.random.default_rng(seed)
    out = np.empty((4, 256, 1600), np.float32)
    for k in range(4):
        m = np.zeros((256, 1600), np.float32)
        for _ in range(components):
            centre = (int(rng.integers(0, 1600)), int(rng.integers(0, 256)))
            axes = (int(rng.integers(1, 14)), int(rng.integers(1, 9)))
            cv2.ellipse(m, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        out[k] = np.clip(0.1 + 0.8 * m + rng.normal(0, 0.05, m.shape), 0, 1)
    return out


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--components", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--min-size", type=int, default=30, help="kernel keeps p.sum() > min_size")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "postprocess_cpu.json"))
    args = ap.parse_args()
    probs = maps(args.components)
    thr, min_size = args.threshold, args.min_size

    def ours() -> list[str]:
        masks = clean(probs, [thr] * 4, [min_size + 1] * 4)  # ours keeps area >= min: same rule
        return [encode(m) for m in masks]

    def loop() -> list[str]:
        return [kernel_mask2rle(kernel_post_process(probs[k], thr, min_size)) for k in range(4)]

    a, b = ours(), loop()
    identical = a == b
    counts = [cv2.connectedComponents((probs[k] > thr).astype(np.uint8))[0] - 1 for k in range(4)]
    t_ours, t_loop = best_of(ours, args.repeat), best_of(loop, max(1, args.repeat // 2))
    result = {
        "benchmark": "postprocess_vs_loop", "components_per_class": counts, "identical_rle": identical,
        "ours_ms": round(t_ours * 1000, 2), "kernel_loop_ms": round(t_loop * 1000, 2),
        "speedup": round(t_loop / t_ours, 1), "threshold": thr, "min_size": min_size,
        "shape": list(probs.shape), **environment(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"components per class {counts}; identical RLE: {identical}; ours {result['ours_ms']} ms, kernel loop "
          f"{result['kernel_loop_ms']} ms: {result['speedup']}x")
    if not identical:
        sys.exit("masks differ")


if __name__ == "__main__":
    main()
