"""The quality gate: no engine worse than "no defects", or worse than the engine in service, is installed.

`trainer build-engine --gate DIR` scores the candidate engine folder (staged, before its rename) and the engine
`engines/current` points at on the same labelled frames, each through its own runtime and the post-processing
the worker runs with its manifest's tuned values (`analyse_cpu`: the masks the worker would publish, decoded from
their RLE), beside the all-empty prediction on the same frames. The rules (`GateRules`), each in the mean and
per class:

    candidate - all-empty      >= margin            (mean; per class >= -class_tolerance: a class may tie)
    candidate - current engine >= -tolerance        (mean; per class >= -class_tolerance)

The figures and the verdict go into the manifest (`gate`), where the worker's engine swap reads them
(`engine.require_gate`). Called from the trainer's main thread only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspector.errors import EngineError

if TYPE_CHECKING:
    from trainer.data import Sample

MIN_FRAMES = 10  # fewer labelled frames than this cannot tell a margin of 0.01 from luck: said, not refused


@dataclass(frozen=True)
class GateRules:
    margin: float = 0.02  # the candidate's mean Dice over all-empty, at least
    tolerance: float = 0.005  # how much worse than the engine in service the mean may be
    class_tolerance: float = 0.02  # per class: how far below all-empty, and below the engine in service


@dataclass
class Scores:
    """One engine's competition metric on the gate frames (dict of Scoreboard.summary) and all-empty's."""

    engine_id: str
    summary: dict[str, Any]
    empty: dict[str, Any]

    @property
    def mean(self) -> float:
        return float(self.summary["mean_dice"])

    @property
    def per_class(self) -> list[float]:
        return [float(d) for d in self.summary["dice_per_class"]]


def score(folder: Path, samples: list[Sample], batch: int = 4) -> Scores:
    """An engine folder's score on labelled samples, through its own runtime on the CPU (or the GPU for a
    TensorRT plan) and the worker's post-processing with the manifest's values."""
    import numpy as np
    import torch

    from inspector import backends, engines
    from inspector.postprocess import PostprocessParams, analyse_cpu
    from inspector.rle import decode
    from trainer.data import masks_of, read_image
    from trainer.metrics import Scoreboard

    engine = engines.load(folder)
    fmt = engine.manifest.format
    device = "cuda" if fmt == "tensorrt" else "cpu"
    params = PostprocessParams.resolve(None, engine.manifest.postprocess)
    runner = backends.create(engine, backends.Choice(backends.NATIVE[fmt], device, "quality gate")).activate()
    board, empty = Scoreboard(), Scoreboard()
    try:
        for i in range(0, len(samples), batch):
            chunk = samples[i:i + batch]
            frames = torch.from_numpy(np.stack([read_image(s.path) for s in chunk]))[:, None]
            out = runner.infer(frames.to(runner.device))
            probs = out.probs.float().cpu().numpy()
            presence = None if out.presence is None else out.presence.float().cpu().numpy()
            for sample, defects in zip(chunk, analyse_cpu(probs, presence, params), strict=True):
                truth = masks_of(sample)
                pred = np.zeros_like(truth)
                for d in defects:
                    pred[d.class_id - 1] = decode(d.rle, truth.shape[1:])
                board.add(pred, truth)
                empty.add(np.zeros_like(truth), truth)
    finally:
        runner.close()
    return Scores(engine.manifest.engine_id, board.summary(), empty.summary())


def decide(candidate: Scores, current: Scores | None, rules: GateRules) -> list[str]:
    """The rules the candidate breaks, in words with their figures; empty when it passes."""
    broken: list[str] = []
    margin = candidate.mean - float(candidate.empty["mean_dice"])
    if margin < rules.margin:
        broken.append(f"mean Dice {candidate.mean:.4f} beats all-empty {candidate.empty['mean_dice']:.4f} by "
                      f"{margin:+.4f} (need >= {rules.margin:+.4f})")
    for k, (c, e) in enumerate(zip(candidate.per_class, candidate.empty["dice_per_class"], strict=True)):
        if c - e < -rules.class_tolerance:
            broken.append(f"class {k + 1} {c:.4f} vs all-empty {e:.4f} ({c - e:+.4f}, need >= "
                          f"{-rules.class_tolerance:+.4f})")
    if current is not None:
        if candidate.mean - current.mean < -rules.tolerance:
            broken.append(f"mean Dice {candidate.mean:.4f} vs {current.mean:.4f} of {current.engine_id} in service "
                          f"({candidate.mean - current.mean:+.4f}, need >= {-rules.tolerance:+.4f})")
        for k, (c, s) in enumerate(zip(candidate.per_class, current.per_class, strict=True)):
            if c - s < -rules.class_tolerance:
                broken.append(f"class {k + 1} {c:.4f} vs {s:.4f} in service ({c - s:+.4f}, need >= "
                              f"{-rules.class_tolerance:+.4f})")
    return broken


def current_engine(root: Path) -> Path | None:
    """The folder engines/current points at, or None on a first install (nothing in service to compare)."""
    link = root / "current"
    return link.resolve() if link.exists() else None


def run(candidate_folder: Path, root: Path, gate_dir: str | Path, rules: GateRules) -> dict[str, Any]:
    """Score the candidate (and the engine in service) on `gate_dir`; the manifest's `gate` record, with
    `passed` and, when refused, `broken` (the rules in words)."""
    from trainer.data import load_dataset

    samples = load_dataset(gate_dir)
    if not samples:
        raise EngineError(f"the gate folder {gate_dir} holds no labelled frames: give --gate a Kaggle-layout folder "
                          "(images/ + train.csv) of frames never used in training")
    cand = score(candidate_folder, samples)
    cur_folder = current_engine(root)
    try:
        cur = score(cur_folder, samples) if cur_folder is not None else None
    except EngineError as exc:
        raise EngineError(f"the engine in service ({cur_folder}) could not be scored on the gate frames: {exc}; "
                          "fix engines/current, or build with --no-gate to skip the gate (the worker refuses an "
                          "ungated engine while engine.require_gate is true)") from None
    broken = decide(cand, cur, rules)
    record: dict[str, Any] = {
        "passed": not broken, "data": str(gate_dir), "frames": len(samples), "rules": asdict(rules),
        "candidate": {"mean_dice": round(cand.mean, 5), "dice_per_class": [round(d, 5) for d in cand.per_class],
                      "presence_precision": cand.summary["presence_precision"],
                      "presence_recall": cand.summary["presence_recall"]},
        "all_empty": {"mean_dice": round(float(cand.empty["mean_dice"]), 5),
                      "dice_per_class": [round(float(d), 5) for d in cand.empty["dice_per_class"]]},
        "in_service": None if cur is None else {
            "engine_id": cur.engine_id, "mean_dice": round(cur.mean, 5),
            "dice_per_class": [round(d, 5) for d in cur.per_class]},
    }
    if len(samples) < MIN_FRAMES:
        record["warning"] = (f"only {len(samples)} gate frames (fewer than {MIN_FRAMES}): a margin this small is "
                             "within luck; keep a larger gate folder")
    if broken:
        record["broken"] = broken
    return record


def line(record: dict[str, Any]) -> str:
    """The gate's figures in one line, for the refusal and for build-engine's summary."""
    c, e, s = record["candidate"], record["all_empty"], record["in_service"]
    fmt = lambda v: "/".join(f"{d:.3f}" for d in v)  # noqa: E731
    text = (f"gate on {record['frames']} frames of {record['data']}: candidate {c['mean_dice']:.4f} "
            f"(per class {fmt(c['dice_per_class'])}), all-empty {e['mean_dice']:.4f} ({fmt(e['dice_per_class'])})")
    if s is not None:
        text += f", in service {s['engine_id']} {s['mean_dice']:.4f} ({fmt(s['dice_per_class'])})"
    return text

