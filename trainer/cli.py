"""Command line: `trainer synth | check | train | evaluate | review | tune | export | build-engine | engines |
shadow-report`. No logic here."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from inspector.engines import FORMATS
from inspector.errors import InspectorError
from trainer.gate import GateRules as GateRulesDefaults


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from trainer.data import DataError

        try:
            return fn(*args, **kwargs)
        except (InspectorError, DataError, FileNotFoundError) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper


def _samples(data: tuple[str, ...], split: str, run: str | None) -> list[Any]:
    """The frames of the `data` folders; with split val/train and a run folder, that run's split."""
    from trainer.data import load_datasets

    samples = load_datasets(data)
    if split == "all":
        return samples
    if run is None:
        raise click.UsageError("--split train/val needs --run (the run folder holding split.json)")
    ids = set(json.loads((Path(run) / "split.json").read_text())[split])
    chosen = [s for s in samples if s.image_id in ids]
    if not chosen:
        raise click.UsageError(f"none of the {split} frames of {run} (split.json) is in {', '.join(data)}: give "
                               "the --data folders that run trained on, or --split all")
    return chosen


def _split_of(checkpoint: str, split: str, run: str | None) -> tuple[str, str | None]:
    """auto: the validation split of the checkpoint's run (--run, or the folder holding the checkpoint when it
    has split.json), else every frame; said on stderr either way, loudly when it scores frames it trained on."""
    if split != "auto":
        return split, run
    run = run or (str(Path(checkpoint).parent) if (Path(checkpoint).parent / "split.json").exists() else None)
    return ("val", run) if run else ("all", None)


def _say_split(split: str, run: str | None, n: int, data: tuple[str, ...]) -> None:
    if split == "val":
        click.echo(f"scoring the validation split of {run} ({n} frames it did not train on)", err=True)
    elif split == "train":
        click.echo(f"scoring the TRAINING split of {run} ({n} frames it trained on: optimistic)", err=True)
    else:
        click.echo(f"WARNING: scoring ALL {n} frames of {', '.join(data)}: no run folder (--run, or split.json beside "
                   "the checkpoint), so frames it trained on may be among them and inflate the score", err=True)


def _val_weights(run: str, split: str) -> dict[str, float] | None:
    """The run's per-frame validation weights (each data folder counts the same), when scoring its val split."""
    path = Path(run) / "val_weights.json"
    return json.loads(path.read_text()) if split == "val" and path.exists() else None


_DATA = click.option("--data", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
                     help="Kaggle-layout folder (images/ + train.csv); repeat to mix several.")


@click.group()
def main() -> None:
    """Train, measure, tune, export and install the defect segmentation model."""


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--images", type=int, default=200)
@click.option("--seed", type=int, default=0)
@click.option("--start", type=int, default=0, help="First frame index (a held-out set uses another range).")
@handled
def synth(out: str, images: int, seed: int, start: int) -> None:
    """Write a synthetic dataset in the Kaggle layout (images/ + train.csv)."""
    from trainer.synth import write_dataset

    click.echo(write_dataset(out, images, seed, start))


@main.command()
@_DATA
@handled
def check(data: tuple[str, ...]) -> None:
    """Check datasets before training: every bad row, missing or wrong-sized image and duplicate, at once."""
    from trainer.data import scan_datasets

    samples, problems = scan_datasets(data)
    for problem in problems:
        click.echo(str(problem))
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in {', '.join(data)}: fix them and run "
                                   "`trainer check` again (training refuses the same data)")
    for domain, folder in enumerate(data):
        mine = [s for s in samples if s.domain == domain]
        per_class = [sum(1 for s in mine if k in s.rles) for k in range(1, 5)]
        click.echo(f"{folder}: {len(mine)} frames, {sum(1 for s in mine if s.rles)} with defects (frames per class "
                   f"1-4: {' / '.join(map(str, per_class))}): no problem found")


@main.command()
@_DATA
@click.option("--shares", type=float, multiple=True, help="Share of each batch per --data folder (repeat).")
@click.option("--holdout", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File of image ids (one per line) that training and validation never see.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML with TrainConfig keys (see config/trainer.yaml).")
@click.option("--encoder", default=None)
@click.option("--epochs", type=int, default=None)
@click.option("--max-steps", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--device", default=None)
@click.option("--encoder-weights", default=None,
              help="'imagenet' (weights shipped in an installed package) or a local file; nothing is downloaded.")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from this checkpoint's weights (same encoder and decoder): fine-tune the engine in service "
                   "on new frames, or a synthetic pretrain on real ones. A new schedule, unlike --resume.")
@click.option("--resume", type=click.Path(exists=True, dir_okay=False), default=None, help="A last.pt to resume.")
@handled
def train(data: tuple[str, ...], shares: tuple[float, ...], out: str, config_path: str | None, resume: str | None,
          **overrides: Any) -> None:
    """Train the Unet; writes best.pt, last.pt, config.yaml and split.json into the run folder."""
    from trainer.train import TrainConfig
    from trainer.train import train as run_train

    cfg = TrainConfig.from_sources(config_path, data=list(data), shares=list(shares) or None, out=out, **overrides)
    state = run_train(cfg, resume)
    best = f"best validation mean Dice {state['best']:.4f}" if state["best"] >= 0 else "no validation frames"
    click.echo(f"{best}; checkpoint {Path(out) / 'best.pt'}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@_DATA
@click.option("--split", type=click.Choice(["auto", "all", "val", "train"]), default="auto", show_default=True,
              help="auto: the run's validation split (--run, or split.json beside the checkpoint), else all frames.")
@click.option("--run", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--overlays", type=click.Path(file_okay=False), default=None, help="Write PNG overlays here.")
@click.option("--json", "as_json", is_flag=True)
@handled
def evaluate(checkpoint: str, data: tuple[str, ...], split: str, run: str | None, overlays: str | None,
             as_json: bool) -> None:
    """Competition metric (mean Dice over image-class pairs) with the checkpoint's tuned post-processing."""
    from inspector.model import load_checkpoint
    from inspector.postprocess import PostprocessParams
    from trainer.evaluate import evaluate_model
    from trainer.metrics import table

    model, ckpt = load_checkpoint(checkpoint)
    params = PostprocessParams.resolve(None, ckpt.get("postprocess")) if ckpt.get("postprocess") else None
    split, run = _split_of(checkpoint, split, run)
    samples = _samples(data, split, run)
    _say_split(split, run, len(samples), data)
    summary = evaluate_model(model, samples, params, overlays=Path(overlays) if overlays else None,
                             weights=_val_weights(run, split) if run else None)
    click.echo(json.dumps(summary) if as_json else table(summary))


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="A capture day folder: capture/<yyyy-mm-dd> (images/, predicted.csv, meta.jsonl).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Overlays and ids.txt go here.")
@click.option("--accept", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Ids to keep, one per line (default: every captured frame).")
@click.option("--drop", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Ids to leave out, one per line.")
@click.option("--corrections", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Rows in train.csv's form replacing the predicted rows of the images they name.")
@click.option("--no-overlays", is_flag=True, help="Write train.csv only (the overlays were looked at already).")
@handled
def review(data: str, out: str, accept: str | None, drop: str | None, corrections: str | None,
           no_overlays: bool) -> None:
    """Overlays of captured frames with their pre-labels; train.csv from predicted.csv for the accepted ones."""
    from trainer.review import review as run_review

    click.echo(json.dumps(run_review(data, out, accept, drop, corrections, overlays=not no_overlays)))


@main.command("score")
@click.option("--submission", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--truth", required=True, type=click.Path(exists=True, dir_okay=False), help="A train.csv.")
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Image folder, to count defect-free frames absent from both files.")
@handled
def score(submission: str, truth: str, images: str | None) -> None:
    """Score a Kaggle-format submission CSV against a train.csv."""
    from trainer.evaluate import score_submission
    from trainer.metrics import table

    ids = [p.name for p in Path(images).iterdir()] if images else []
    click.echo(table(score_submission(Path(submission), Path(truth), ids)))


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@_DATA
@click.option("--split", type=click.Choice(["all", "val"]), default="val", show_default=True)
@click.option("--run", type=click.Path(exists=True, file_okay=False), default=None,
              help="The run folder (split.json); default: the folder holding the checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
@handled
def tune(checkpoint: str, data: tuple[str, ...], split: str, run: str | None, as_json: bool) -> None:
    """Choose per-class post-processing on validation frames; stores it in the checkpoint."""
    from inspector.model import load_checkpoint
    from trainer.train import save_checkpoint
    from trainer.tune import table, too_few
    from trainer.tune import tune as run_tune

    model, ckpt = load_checkpoint(checkpoint)
    run = run or str(Path(checkpoint).parent)
    samples = _samples(data, split, run)
    _say_split(split, run, len(samples), data)
    warning = too_few(samples)
    if warning:
        click.echo(warning, err=True)
    params, result = run_tune(model, samples, weights=_val_weights(run, split))
    extra = {k: v for k, v in ckpt.items() if k not in ("spec", "model")}
    save_checkpoint(Path(checkpoint), model, **{**extra, "postprocess": params.as_dict(), "tune": result})
    if as_json:
        click.echo(json.dumps({"postprocess": params.as_dict(), **result, "warning": warning}))
    else:
        click.echo(table(params, result))
        click.echo(f"stored in {checkpoint} (build-engine carries it into the engine's manifest)")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@click.option("--fp16", is_flag=True, help="Half-precision export (for TensorRT's strongly typed build).")
@click.option("--max-batch", type=int, default=32)
@handled
def export(checkpoint: str, out: str, fp16: bool, max_batch: int) -> None:
    """ONNX with dynamic batch, uint8 input, probabilities and presence out; checked against PyTorch."""
    import torch

    from inspector.model import load_checkpoint
    from trainer.export import check_parity, export_onnx

    model, _ = load_checkpoint(checkpoint)
    path = export_onnx(model, out, max_batch=max_batch, half=fp16)
    if not fp16:
        frames = torch.randint(0, 256, (2, 1, 256, 1600), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        click.echo(f"max |ONNX - PyTorch| = {check_parity(model, path, frames):.2e}")
    click.echo(path)


@main.command("shadow-report")
@click.argument("report", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report's JSON as it is.")
@handled
def shadow_report(report: str, as_json: bool) -> None:
    """How a shadow engine's masks differ from the live engine's (the worker's engine.shadow_report file)."""
    r = json.loads(Path(report).read_text())
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    hours = r["since_s"] / 3600
    click.echo(f"shadow {r['shadow']} vs live {r['live']}: {r['frames_compared']} frames compared in {hours:.1f} h "
               f"(1 in {r['every']} frames, budget {r['budget']:.0%} of live engine time; skipped for the budget "
               f"{r['counts']['skipped_budget']}, queue full {r['counts']['skipped_queue']}, failed "
               f"{r['counts']['failed']})")
    click.echo("class  pixel Dice  frame Dice  found by shadow only  by live only  components extra  missing")
    for k, c in r["per_class"].items():
        fd = "   -  " if c["frame_dice"] is None else f"{c['frame_dice']:.4f}"
        click.echo(f"  {k}      {c['pixel_dice']:.4f}      {fd}    {c['presence_extra']:>10}        "
                   f"{c['presence_missing']:>8}        {c['extra_components']:>8}  {c['missing_components']:>7}")
    click.echo("(no labels involved: where the two disagree, look at those frames before installing the shadow)")


@main.command("build-engine")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--onnx", "onnx_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Use this FP32 export instead of exporting anew.")
@click.option("--engines", "engines_dir", default="engines", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["auto", *FORMATS]), default="auto",
              help="auto: a TensorRT plan where TensorRT and a GPU are present, else ONNX for ONNX Runtime; "
                   "torch: the checkpoint itself, for the PyTorch backend (FP16 on CUDA).")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="Frames for the parity gate (default: 8 synthetic frames).")
@click.option("--parity-frames", type=int, default=8)
@click.option("--max-batch", type=int, default=32)
@click.option("--opt-batch", type=int, default=8,
              help="TensorRT profile optimum: the worker's batching.batch_size (default 8).")
@click.option("--no-install", is_flag=True, help="Build and check, but leave engines/current alone.")
@click.option("--gate", "gate_dir", type=click.Path(file_okay=False), default=None,
              help="Quality gate: a labelled folder never trained on; the engine is installed only if it beats "
                   "all-empty and the engine in service there (default: the `gate` key of --config).")
@click.option("--no-gate", is_flag=True, help="Skip the quality gate (a worker with engine.require_gate refuses "
                                              "the engine).")
@click.option("--gate-margin", type=float, default=GateRulesDefaults.margin, show_default=True,
              help="Mean Dice the candidate must beat all-empty by.")
@click.option("--gate-tolerance", type=float, default=GateRulesDefaults.tolerance, show_default=True,
              help="Mean Dice the candidate may lose against the engine in service.")
@click.option("--gate-class-tolerance", type=float, default=GateRulesDefaults.class_tolerance, show_default=True,
              help="Per class: Dice the candidate may lose against all-empty and the engine in service.")
@click.option("--config", "config_path", default="config/trainer.yaml", show_default=True,
              help="Trainer config whose `gate` key gives the default gate folder (missing file: no default).")
@click.option("--tta", type=click.Choice(["none", "hflip"]), default=None,
              help="Test-time augmentation inside the engine: hflip averages each frame with its mirror image "
                   "(2x the engine's compute; benchmarks/train_real.py says whether it helps). Default: the "
                   "checkpoint's own (none unless its spec says otherwise).")
@handled
def build_engine(checkpoint: str, onnx_path: str | None, engines_dir: str, fmt: str, data: str | None,
                 parity_frames: int, max_batch: int, opt_batch: int, no_install: bool, gate_dir: str | None,
                 no_gate: bool, gate_margin: float, gate_tolerance: float, gate_class_tolerance: float,
                 config_path: str, tta: str | None) -> None:
    """Build the engine the worker loads, check parity and quality, install it atomically as engines/current."""
    import numpy as np
    import torch

    from inspector import synth
    from inspector.config import read_yaml
    from inspector.engines import current_id
    from trainer.build_engine import build
    from trainer.data import load_dataset, read_image
    from trainer.gate import GateRules
    from trainer.gate import line as gate_line

    if data:
        images = [read_image(s.path) for s in load_dataset(data)[:parity_frames]]
    else:
        images = [synth.frame(12345, i).image for i in range(parity_frames)]
    frames = torch.from_numpy(np.stack(images))[:, None]
    if gate_dir is None and not no_gate and Path(config_path).is_file():
        gate_dir = read_yaml(config_path, "config/trainer.yaml").get("gate")
    rules = GateRules(gate_margin, gate_tolerance, gate_class_tolerance)
    before = current_id(engines_dir) if Path(engines_dir).is_dir() else None
    folder = build(checkpoint, frames, engines_dir, fmt, onnx_path, max_batch, opt_batch, install=not no_install,
                   gate_dir=None if no_gate else gate_dir, gate_rules=rules, tta=tta)
    manifest = json.loads((folder / "manifest.json").read_text())
    p = manifest["parity"]
    click.echo(f"parity vs FP32 PyTorch on {p['frames']} {'of ' + data if data else 'synthetic'} frames: Dice per "
               f"class {' / '.join(f'{d:.4f}' for d in p['dice_per_class'])} (gate: each >= {p['min_dice']}), "
               f"max |prob diff| {p['max_abs_prob_diff']:.2g}")
    gate = manifest.get("gate") or {"skipped": True}
    if gate.get("skipped"):
        why = "--no-gate" if no_gate else "no --gate, no `gate` in the trainer config"
        click.echo(f"quality gate: skipped ({why}): a worker with engine.require_gate on (the default) refuses to "
                   "switch to this engine; pass --gate DIR (README \"The quality gate\")", err=True)
    else:
        click.echo(("passed " if gate["passed"] else "FAILED ") + gate_line(gate))
        if "warning" in gate:
            click.echo(f"warning: {gate['warning']}", err=True)
    val = manifest.get("validation") or {}
    if "mean_dice" in val:
        where = val.get("kind") or "its run's val split"
        click.echo(f"the checkpoint's validation score ({where}, {val.get('images')} frames): mean Dice "
                   f"{val['mean_dice']:.4f}, all-empty {val.get('all_empty_baseline', float('nan')):.4f}")
    inside = manifest["model"].get("tta", "none")
    tta_note = f", test-time augmentation {inside}" if inside != "none" else ""
    click.echo(f"engine {folder.name}: {manifest['format']} {manifest['precision']}{tta_note}, file "
               f"{folder / manifest['file']}")
    if no_install:
        click.echo(f"built, not installed (engines/current unchanged): `trainer engines use {folder.name}` installs it")
    else:
        back = f"; back: `trainer engines use {before}`" if before else ""
        click.echo(f"installed: {Path(engines_dir) / 'current'} -> {folder.name} (was {before or 'none'}); a running "
                   f"worker switches between two batches{back}")


def _engines_group() -> click.Group:
    from inspector.cli import engines

    return engines


main.add_command(_engines_group())


if __name__ == "__main__":
    sys.exit(main())
