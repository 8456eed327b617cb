"""The competition metric: mean Dice over (image, class) pairs, empty prediction on empty truth = 1.
Plus presence precision / recall per class (does the class appear in the frame at all)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred.astype(bool), truth.astype(bool)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


@dataclass
class Scoreboard:
    """Accumulates per-pair Dice and presence counts; `summary()` gives the numbers."""

    classes: int = 4
    dices: list[list[float]] = field(default_factory=lambda: [[] for _ in range(4)])
    weights: list[float] = field(default_factory=list)  # one per image: its say in the means
    tp: np.ndarray = field(default_factory=lambda: np.zeros(4, int))
    fp: np.ndarray = field(default_factory=lambda: np.zeros(4, int))
    fn: np.ndarray = field(default_factory=lambda: np.zeros(4, int))

    def add(self, pred: np.ndarray, truth: np.ndarray, weight: float = 1.0) -> None:
        """pred, truth: (4, H, W) masks of one image."""
        self.weights.append(weight)
        for k in range(self.classes):
            self.dices[k].append(dice(pred[k], truth[k]))
            has_p, has_t = bool(pred[k].any()), bool(truth[k].any())
            self.tp[k] += has_p and has_t
            self.fp[k] += has_p and not has_t
            self.fn[k] += has_t and not has_p

    def summary(self) -> dict[str, object]:
        w = np.asarray(self.weights, dtype=np.float64)
        per_class = [float(np.average(d, weights=w)) if d else 1.0 for d in self.dices]
        precision = [float(self.tp[k] / (self.tp[k] + self.fp[k])) if self.tp[k] + self.fp[k] else None
                     for k in range(self.classes)]
        recall = [float(self.tp[k] / (self.tp[k] + self.fn[k])) if self.tp[k] + self.fn[k] else None
                  for k in range(self.classes)]
        return {"mean_dice": float(np.mean(per_class)) if self.weights else 1.0, "dice_per_class": per_class,
                "presence_precision": precision, "presence_recall": recall, "images": len(self.dices[0])}


def table(summary: dict[str, object]) -> str:
    """A readable table of a summary."""
    lines = [f"mean Dice (competition metric): {summary['mean_dice']:.4f} over {summary['images']} images",
             "class   dice    presence precision   recall"]
    for k in range(4):
        prec, rec = summary["presence_precision"][k], summary["presence_recall"][k]  # type: ignore[index]
        fmt = lambda v: "   -  " if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"  {k + 1}    {summary['dice_per_class'][k]:.4f}    {fmt(prec)}              {fmt(rec)}")  # type: ignore[index]
    if "all_empty_baseline" in summary:
        lines.append(f"all-empty baseline on the same frames: {summary['all_empty_baseline']:.4f}")
    return "\n".join(lines)
