"""`trainer train`: BCE + Dice on masks, BCE on presence, AdamW with one-cycle schedule, AMP on CUDA,
best checkpoint by validation competition metric, resumable, resolved config saved in the run folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from inspector.model import InspectionNet, ModelSpec, build
from trainer.data import Sample, SteelDataset, load_dataset, stratified_split
from trainer.evaluate import evaluate_model

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str = ""
    out: str = "runs/latest"
    encoder: str = "resnet18"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    scale: float = 1.0
    in_channels: int = 1
    encoder_weights: str | None = None  # a local file; nothing is downloaded
    epochs: int = 20
    max_steps: int | None = None  # stop after this many optimiser steps in all (tests, quick runs)
    batch_size: int = 8
    crop_width: int | None = 512  # training crops; validation and inference run at full width
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    val_every: int = 1
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    dice_weight: float = 1.0
    presence_weight: float = 0.5
    balance: bool = True  # sample frames by their rarest class, so rare classes are seen as often as common ones

    @classmethod
    def from_sources(cls, yaml_path: str | None, **overrides: Any) -> TrainConfig:
        """Defaults < YAML < command line (None = not given)."""
        data: dict[str, Any] = {}
        if yaml_path:
            data = yaml.safe_load(Path(yaml_path).read_text()) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown trainer config key '{unknown[0]}'; valid keys: {', '.join(sorted(names))}")
        if "decoder_channels" in data:
            data["decoder_channels"] = tuple(data["decoder_channels"])
        return cls(**data)

    def spec(self) -> ModelSpec:
        return ModelSpec(encoder=self.encoder, in_channels=self.in_channels, decoder_channels=self.decoder_channels,
                         scale=self.scale)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_fn(model: InspectionNet, images: torch.Tensor, masks: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    logits, presence = model.logits(model.normalise(images))
    bce = F.binary_cross_entropy_with_logits(logits, masks)
    probs = torch.sigmoid(logits)
    # Dice per class over the whole batch (as smp's multilabel DiceLoss): per-image Dice on the many empty
    # (image, class) pairs would only teach rare classes to stay silent.
    inter = (probs * masks).sum(dim=(0, 2, 3))
    dice = 1 - (2 * inter + 1) / (probs.sum(dim=(0, 2, 3)) + masks.sum(dim=(0, 2, 3)) + 1)
    present = (masks.amax(dim=(2, 3)) > 0).float()
    cls = F.binary_cross_entropy_with_logits(presence, present)
    return bce + cfg.dice_weight * dice.mean() + cfg.presence_weight * cls


def balanced_weights(samples: list[Sample]) -> list[float]:
    """Weight of a frame = 1 / (frames sharing its rarest class); defect-free frames form one more group."""
    counts = Counter(c for s in samples for c in (s.classes or (0,)))
    return [max(1.0 / counts[c] for c in (s.classes or (0,))) for s in samples]


def save_checkpoint(path: Path, model: InspectionNet, **extra: Any) -> None:
    """Write-then-rename, so an interrupted save never leaves a truncated best.pt."""
    tmp = path.with_suffix(".tmp")
    torch.save({"spec": model.spec.as_dict(), "model": model.state_dict(), **extra}, tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True,
          stop_at_step: int | None = None) -> dict[str, Any]:
    """Train per `cfg`; `resume` continues a last.pt on the same schedule; `stop_at_step` saves and returns early
    (a time-boxed session), to be resumed later."""
    seed_everything(cfg.seed)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(
        {**dataclasses.asdict(cfg), "decoder_channels": list(cfg.decoder_channels)}, sort_keys=False))
    samples = load_dataset(cfg.data)
    train_set, val_set = stratified_split(samples, cfg.val_fraction, cfg.seed)
    (out / "split.json").write_text(json.dumps({"train": [s.image_id for s in train_set],
                                                "val": [s.image_id for s in val_set]}))
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = WeightedRandomSampler(balanced_weights(train_set), len(train_set), generator=generator) \
        if cfg.balance else None
    loader = DataLoader(SteelDataset(train_set, True, cfg.crop_width, cfg.seed), batch_size=cfg.batch_size,
                        shuffle=sampler is None, sampler=sampler, num_workers=cfg.workers,
                        drop_last=len(train_set) > cfg.batch_size, generator=generator)
    model = build(cfg.spec(), cfg.encoder_weights).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.max_steps or cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total_steps, 1), pct_start=0.15)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    state = {"epoch": 0, "step": 0, "best": -1.0, "history": []}
    if resume:
        ckpt = torch.load(resume, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        log.info("resumed from %s at epoch %d, step %d", resume, state["epoch"], state["step"])
    bar = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", disable=not progress)
    while state["step"] < total_steps:
        model.train()
        for images, masks in loader:
            images, masks = images.to(device), masks.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                loss = loss_fn(model, images, masks, cfg)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            state["step"] += 1
            state["history"].append(round(loss.item(), 5))
            bar.update(1)
            bar.set_postfix(loss=f"{state['history'][-1]:.4f}", val_dice=f"{state['best']:.4f}")
            if state["step"] >= total_steps or state["step"] == stop_at_step:
                break
        if state["step"] == stop_at_step and state["step"] < total_steps:
            save_checkpoint(out / "last.pt", model, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                            state=state)
            break
        state["epoch"] += 1
        last = state["step"] >= total_steps
        if val_set and (state["epoch"] % cfg.val_every == 0 or last):
            metrics = evaluate_model(model, val_set, device=device)
            bar.set_postfix(loss=f"{state['history'][-1]:.4f}", val_dice=f"{metrics['mean_dice']:.4f}")
            if metrics["mean_dice"] > state["best"]:
                state["best"] = metrics["mean_dice"]
                save_checkpoint(out / "best.pt", model, metrics=metrics, epoch=state["epoch"])
        save_checkpoint(out / "last.pt", model, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                        state=state)
    bar.close()
    if not val_set:
        save_checkpoint(out / "best.pt", model, metrics={}, epoch=state["epoch"])
    return state
