"""synth -> train -> tune -> evaluate on held-out synthetic frames, on this machine's CPU; writes JSON.

    python benchmarks/train_synthetic.py [--train-images 800] [--heldout-images 200] [--steps 2000]

Also scores the model on the 40 real labelled Severstal frames (../shared/data/severstal-sample): no target,
it tells how far synthetic data carries. The held-out frames come from another index range of the same
seeded generator, so no training frame is among them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.bench import environment  # noqa: E402
from inspector.model import load_checkpoint  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.evaluate import evaluate_model  # noqa: E402
from trainer.metrics import table  # noqa: E402
from trainer.synth import write_dataset  # noqa: E402
from trainer.train import TrainConfig, save_checkpoint, train  # noqa: E402
from trainer.tune import tune  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "severstal-sample"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/inspector-train-bench")
    ap.add_argument("--train-images", type=int, default=800)
    ap.add_argument("--heldout-images", type=int, default=200)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--config", default=str(ROOT / "config" / "trainer-cpu-demo.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_synthetic_cpu.json"))
    ap.add_argument("--keep", default=str(ROOT / "runs" / "synthetic-cpu"), help="Copy the run folder here.")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    times: dict[str, float] = {}

    t = time.monotonic()
    write_dataset(work / "train", args.train_images, seed=0, start=0)
    write_dataset(work / "heldout", args.heldout_images, seed=0, start=1_000_000)
    times["synth_s"] = time.monotonic() - t

    t = time.monotonic()
    cfg = TrainConfig.from_sources(args.config, data=str(work / "train"), out=str(work / "run"),
                                   max_steps=args.steps, epochs=10**6)
    state = train(cfg)
    times["train_s"] = time.monotonic() - t

    t = time.monotonic()
    best = work / "run" / "best.pt"
    model, ckpt = load_checkpoint(str(best))
    split = json.loads((work / "run" / "split.json").read_text())
    val = [s for s in load_dataset(work / "train") if s.image_id in set(split["val"])]
    params, tuned = tune(model, val)
    extra = {k: v for k, v in ckpt.items() if k not in ("spec", "model")}
    save_checkpoint(best, model, **{**extra, "postprocess": params.as_dict(), "tune": tuned})
    times["tune_s"] = time.monotonic() - t

    t = time.monotonic()
    heldout = evaluate_model(model, load_dataset(work / "heldout"), params,
                             overlays=work / "overlays-heldout")
    real = evaluate_model(model, load_dataset(REAL), params, overlays=work / "overlays-real") if REAL.exists() else None
    times["evaluate_s"] = time.monotonic() - t
    total = sum(times.values())

    print(table(heldout))
    if real:
        print("\nreal Severstal sample (40 frames):\n" + table(real))
    result = {
        "benchmark": "train_synthetic", "total_s": round(total, 1), "under_30_min": total < 1800,
        "stages_s": {k: round(v, 1) for k, v in times.items()},
        "heldout_synthetic": heldout, "margin_over_all_empty": heldout["mean_dice"] - heldout["all_empty_baseline"],
        "meets_target": heldout["mean_dice"] >= 0.90 and heldout["mean_dice"] - heldout["all_empty_baseline"] >= 0.05,
        "real_severstal_sample": real, "train_images": args.train_images, "heldout_images": args.heldout_images,
        "steps": state["step"], "best_val_mean_dice": state["best"], "tuned": tuned,
        "model": cfg.spec().as_dict(), "loss_first_last": [state["history"][0], state["history"][-1]],
        **environment(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
        shutil.copytree(work / "run", args.keep)
        shutil.copytree(work / "overlays-real", Path(args.keep) / "overlays-real", dirs_exist_ok=True)
    print(f"\n{total / 60:.1f} min in all; results in {out}")


if __name__ == "__main__":
    main()
