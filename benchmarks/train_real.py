"""synthetic + real frames -> train -> tune -> evaluate on held-out real frames, on this machine's CPU; JSON out.

    python benchmarks/train_real.py [--steps 1800] [--heldout 14] [--train-images 800]

The 40 real labelled Severstal frames (../shared/data/severstal-sample) are split once, stratified by class
combination: `--heldout` of them are never seen by training, validation or tuning; the rest are mixed with
synthetic frames (half of every batch) and split again into training and validation frames. The model starts
from ImageNet weights shipped in an installed package (EfficientNet-Lite0). Reported on the held-out real
frames: mean Dice (competition metric) and per class, next to the all-empty baseline on the same frames, and
presence precision / recall; plus held-out synthetic Dice. Writes benchmarks/results/train_real_cpu.json,
overlays of the held-out real frames (docs/overlays-real.jpg) and keeps the run in runs/real-cpu for
`trainer build-engine`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.bench import environment  # noqa: E402
from inspector.model import load_checkpoint  # noqa: E402
from trainer.data import load_dataset, load_datasets, stratified_split  # noqa: E402
from trainer.evaluate import evaluate_model  # noqa: E402
from trainer.metrics import table  # noqa: E402
from trainer.synth import write_dataset  # noqa: E402
from trainer.train import TrainConfig, domain_weights, save_checkpoint, train  # noqa: E402
from trainer.tune import tune  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "severstal-sample"


def montage(folder: Path, out: Path, width: int = 1600, per_row: int = 1, limit: int = 6) -> None:
    """Stack the first overlays (truth on top, prediction below) into one JPEG for the README."""
    tiles = [cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))[:limit]]
    if not tiles:
        return
    gap = np.full((12, width, 3), 255, np.uint8)
    rows = [t for tile in tiles for t in (tile, gap)][:-1]
    image = np.vstack(rows)
    scale = 0.5
    image = cv2.resize(image, (int(image.shape[1] * scale), int(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), image, [cv2.IMWRITE_JPEG_QUALITY, 80])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/inspector-train-real")
    ap.add_argument("--train-images", type=int, default=800)
    ap.add_argument("--heldout-images", type=int, default=200, help="Held-out synthetic frames.")
    ap.add_argument("--heldout", type=int, default=14, help="Real frames held out from training and tuning.")
    ap.add_argument("--real-val-fraction", type=float, default=0.3)
    ap.add_argument("--real-share", type=float, default=0.5, help="Share of each batch from real frames.")
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=str(ROOT / "config" / "trainer-cpu-demo.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_real_cpu.json"))
    ap.add_argument("--overlays", default=str(ROOT / "docs" / "overlays-real.jpg"))
    ap.add_argument("--keep", default=str(ROOT / "runs" / "real-cpu"), help="Copy the run folder here.")
    args = ap.parse_args()
    if not REAL.exists():
        sys.exit(f"{REAL} is missing: this benchmark needs the real Severstal sample")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    times: dict[str, float] = {}

    t = time.monotonic()
    write_dataset(work / "synth", args.train_images, seed=0, start=0, progress=False)
    write_dataset(work / "synth-heldout", args.heldout_images, seed=0, start=1_000_000, progress=False)
    real = load_dataset(REAL)
    pool, held = stratified_split(real, args.heldout / len(real), seed=args.seed)
    (work / "holdout.txt").write_text("".join(f"{s.image_id}\n" for s in held))
    times["data_s"] = time.monotonic() - t

    t = time.monotonic()
    cfg = TrainConfig.from_sources(
        args.config, data=[str(work / "synth"), str(REAL)], shares=[1 - args.real_share, args.real_share],
        holdout=str(work / "holdout.txt"), val_fraction=[0.1, args.real_val_fraction], out=str(work / "run"),
        max_steps=args.steps, epochs=10**6, seed=args.seed)
    state = train(cfg)
    times["train_s"] = time.monotonic() - t

    t = time.monotonic()
    best = work / "run" / "best.pt"
    model, ckpt = load_checkpoint(str(best))
    split = set(json.loads((work / "run" / "split.json").read_text())["val"])
    val = [s for s in load_datasets([work / "synth", REAL]) if s.image_id in split]  # synthetic and real
    params, tuned = tune(model, val, weights=domain_weights(val))
    extra = {k: v for k, v in ckpt.items() if k not in ("spec", "model")}
    save_checkpoint(best, model, **{**extra, "postprocess": params.as_dict(), "tune": tuned})
    times["tune_s"] = time.monotonic() - t

    t = time.monotonic()
    real_held = evaluate_model(model, held, params, overlays=work / "overlays-real")
    synth_held = evaluate_model(model, load_dataset(work / "synth-heldout"), params)
    times["evaluate_s"] = time.monotonic() - t
    total = sum(times.values())

    print("held-out real Severstal frames:\n" + table(real_held))
    print("\nheld-out synthetic frames:\n" + table(synth_held))
    margin = real_held["mean_dice"] - real_held["all_empty_baseline"]
    result = {
        "benchmark": "train_real", "total_s": round(total, 1), "under_45_min": total < 2700,
        "stages_s": {k: round(v, 1) for k, v in times.items()},
        "heldout_real": real_held, "heldout_real_ids": [s.image_id for s in held],
        "real_margin_over_all_empty": round(margin, 4),
        "heldout_synthetic": synth_held,
        "meets_target": margin >= 0.05 and synth_held["mean_dice"] >= 0.90,
        "real_frames": {"heldout": len(held), "pool": len(pool),
                        "train": sum(1 for s in pool if s.image_id not in split),
                        "val": sum(1 for s in pool if s.image_id in split)},
        "synthetic_frames": {"train_pool": args.train_images, "heldout": args.heldout_images},
        "steps": state["step"], "best_val_mean_dice": state["best"], "tuned": tuned,
        "train_config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items()},
        "model": cfg.spec().as_dict(), "loss_first_last": [state["history"][0], state["history"][-1]],
        **environment(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    montage(work / "overlays-real", Path(args.overlays))
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
        shutil.copytree(work / "run", args.keep)
        shutil.copy(work / "holdout.txt", Path(args.keep) / "holdout.txt")
    print(f"\nreal margin over all-empty {margin:+.4f}; {total / 60:.1f} min in all; results in {out}")


if __name__ == "__main__":
    main()
