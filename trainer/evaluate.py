"""`trainer evaluate`: the competition metric overall and per class, presence precision/recall, overlays."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from inspector.model import InspectionNet
from inspector.postprocess import PostprocessParams, clean
from inspector.rle import decode
from trainer.data import Sample, masks_of, read_image
from trainer.metrics import Scoreboard

COLOURS = [(0, 0, 255), (0, 200, 0), (255, 80, 0), (0, 220, 255)]  # BGR per class 1..4


def predict(model: InspectionNet, samples: list[Sample], device: torch.device | str = "cpu",
            batch: int = 4) -> Iterator[tuple[Sample, np.ndarray, np.ndarray]]:
    """(sample, probs float16 (4, H, W), presence (4,)) for each sample, full resolution."""
    model.eval()
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        images = torch.from_numpy(np.stack([read_image(s.path) for s in chunk]))[:, None].to(device)
        with torch.inference_mode():
            probs, presence = model(images)
        for s, p, c in zip(chunk, probs.float().cpu().numpy(), presence.float().cpu().numpy(), strict=True):
            yield s, p.astype(np.float16), c


def evaluate_model(model: InspectionNet, samples: list[Sample], params: PostprocessParams | None = None,
                   device: torch.device | str = "cpu", overlays: Path | None = None,
                   weights: dict[str, float] | None = None) -> dict[str, Any]:
    """The competition metric of `model` on `samples` after post-processing with `params` (untuned defaults
    without), beside the all-empty baseline on the same frames; `weights` (image id -> weight) weigh the means."""
    params = params or PostprocessParams(thresholds=(0.5,) * 4, min_component_area=(0,) * 4,
                                         min_class_area=(0,) * 4, presence_threshold=(0.5,) * 4)
    board, empty = Scoreboard(), Scoreboard()
    for sample, probs, presence in predict(model, samples, device):
        truth = masks_of(sample)
        pred = clean(probs.astype(np.float32), params.thresholds, params.min_component_area, params.min_class_area,
                     presence=presence, presence_thresholds=params.presence_threshold)
        weight = 1.0 if weights is None else weights[sample.image_id]
        board.add(pred, truth, weight)
        empty.add(np.zeros_like(truth), truth, weight)
        if overlays is not None:
            write_overlay(overlays / f"{Path(sample.image_id).stem}.png", read_image(sample.path), truth, pred)
    summary = board.summary()
    summary["all_empty_baseline"] = empty.summary()["mean_dice"]
    summary["postprocess"] = params.as_dict()
    return summary


def write_overlay(path: Path, image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                  titles: tuple[str, str] = ("truth", "predicted")) -> None:
    """Top: truth outlines; bottom: prediction filled + outlined; one colour per class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    top = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    bottom = top.copy()
    for k in range(4):
        colour = COLOURS[k]
        contours, _ = cv2.findContours(truth[k].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(top, contours, -1, colour, 2)
        fill = pred[k].astype(bool)
        bottom[fill] = (0.55 * bottom[fill] + 0.45 * np.array(colour)).astype(np.uint8)
        contours, _ = cv2.findContours(pred[k].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(bottom, contours, -1, colour, 1)
    cv2.putText(top, titles[0], (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    cv2.putText(bottom, titles[1], (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    cv2.imwrite(str(path), np.vstack([top, np.full((6, image.shape[1], 3), 255, np.uint8), bottom]))


def score_submission(submission: Path, truth_csv: Path, image_ids: list[str]) -> dict[str, Any]:
    """Competition metric of a Kaggle submission CSV (ImageId_ClassId or ImageId,ClassId) against train.csv."""
    from trainer.data import read_labels

    truth, pred = read_labels(truth_csv), read_labels(submission)
    with open(submission, newline="") as fh:
        ids = {row.get("ImageId") or row["ImageId_ClassId"].rpartition("_")[0] for row in csv.DictReader(fh)}
    board = Scoreboard()
    for image_id in sorted(set(image_ids) | ids):
        t = np.stack([decode(truth.get(image_id, {}).get(k, "")) for k in range(1, 5)])
        p = np.stack([decode(pred.get(image_id, {}).get(k, "")) for k in range(1, 5)])
        board.add(p, t)
    return board.summary()
