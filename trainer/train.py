"""`trainer train`: BCE + Dice on masks, BCE on presence, AdamW with one-cycle schedule, AMP on CUDA,
best checkpoint by validation competition metric, resumable, resolved config saved in the run folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
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

from inspector.config import read_yaml, section
from inspector.errors import ConfigError
from inspector.model import InspectionNet, ModelSpec, build, read_checkpoint
from trainer.data import Sample, SteelDataset, load_datasets, read_holdout, stratified_split
from trainer.evaluate import evaluate_model
from trainer.pretrained import load_encoder_weights

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: tuple[str, ...] = ()  # Kaggle-layout folders (images/ + train.csv), e.g. synthetic and real frames
    shares: tuple[float, ...] | None = None  # share of each batch drawn from each folder; None: by frame count
    holdout: str | None = None  # file of image ids (one per line) that training and validation never see
    out: str = "runs/latest"
    encoder: str = "resnet18"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    scale: float = 1.0
    encoder_weights: str | None = None  # `imagenet` (shipped in a package) or a local file; nothing is downloaded
    epochs: int = 20
    max_steps: int | None = None  # stop after this many optimiser steps in all (tests, quick runs)
    batch_size: int = 8
    crop_width: int | None = 512  # training crops; validation and inference run at full width
    augment: bool = True  # flips, brightness/contrast, small vertical shifts (trainer.data.SteelDataset)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: tuple[float, ...] = (0.15,)  # of each folder (one value, or one per folder), stratified by class
    val_every: int = 1
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    dice_weight: float = 1.0
    presence_weight: float = 0.5
    balance: bool = True  # sample frames by their rarest class, so rare classes are seen as often as common ones
    init: str | None = None  # start from this checkpoint's weights (same architecture), e.g. a synthetic pretrain
    gate: str | None = None  # not for training: `trainer build-engine`'s default quality-gate folder (--gate)

    @classmethod
    def from_sources(cls, yaml_path: str | None, **overrides: Any) -> TrainConfig:
        """Defaults < YAML < command line (None = not given); ConfigError names an unknown or mistyped key."""
        data: dict[str, Any] = read_yaml(yaml_path, "config/trainer.yaml") if yaml_path else {}
        data.update({k: v for k, v in overrides.items() if v is not None and v != ()})
        for key in ("data", "val_fraction", "shares"):
            if isinstance(data.get(key), str | int | float) and not isinstance(data.get(key), bool):
                data[key] = [data[key]]
        cfg = section(cls, data)
        if not cfg.data:
            raise ConfigError("trainer config key 'data' is empty: name at least one dataset folder (--data DIR)")
        if cfg.shares is not None and (len(cfg.shares) != len(cfg.data) or min(cfg.shares) < 0
                                       or sum(cfg.shares) <= 0):
            raise ConfigError(f"trainer config key 'shares' needs one non-negative share per data folder "
                              f"({len(cfg.data)}), got {list(cfg.shares)}")
        if len(cfg.val_fraction) not in (1, len(cfg.data)) or not all(0 <= f < 1 for f in cfg.val_fraction):
            raise ConfigError(f"trainer config key 'val_fraction' needs one fraction in [0, 1), or one per data "
                              f"folder ({len(cfg.data)}), got {list(cfg.val_fraction)}")
        return cfg

    def spec(self) -> ModelSpec:
        return ModelSpec(encoder=self.encoder, decoder_channels=self.decoder_channels, scale=self.scale)


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
    """Weight of a frame = 1 / sqrt(frames sharing its rarest class); defect-free frames form one more group.

    A class's share of the draws grows as the square root of its frame count: a 5-frame class is drawn more often
    than its count says, but not as often as a 20-frame one (full 1/n balance drew each of 5 frames 4x as often
    as a common-class frame, and the model learned those few frames by heart: false positives on unseen ones)."""
    counts = Counter(c for s in samples for c in (s.classes or (0,)))
    return [max(counts[c] ** -0.5 for c in (s.classes or (0,))) for s in samples]


def sampling_weights(samples: list[Sample], shares: tuple[float, ...] | None, balance: bool) -> list[float]:
    """Per-frame sampling weights: each folder (domain) gets its share of every batch (default: by frame count),
    and within a folder frames are class-balanced when `balance` is on."""
    weights = [0.0] * len(samples)
    domains = sorted({s.domain for s in samples})
    for d in domains:
        index = [i for i, s in enumerate(samples) if s.domain == d]
        own = balanced_weights([samples[i] for i in index]) if balance else [1.0] * len(index)
        share = shares[d] if shares is not None else len(index)
        for i, w in zip(index, own, strict=True):
            weights[i] = share * w / sum(own)
    return weights


def domain_weights(samples: list[Sample]) -> dict[str, float]:
    """image id -> weight that gives every folder the same say in a validation score (each folder sums to 1):
    40 real frames beside 800 synthetic ones would otherwise not move the metric that picks best.pt."""
    count = Counter(s.domain for s in samples)
    return {s.image_id: 1.0 / count[s.domain] for s in samples}


def _best(state: dict[str, Any]) -> str:
    """The progress bar's validation figure: the best so far, or that there is none yet."""
    return "no validation yet" if state["best"] < 0 else f"{state['best']:.4f}"


def save_checkpoint(path: Path, model: InspectionNet, **extra: Any) -> None:
    """Write-then-rename, so an interrupted save never leaves a truncated best.pt."""
    tmp = path.with_suffix(".tmp")
    torch.save({"spec": model.spec.as_dict(), "model": model.state_dict(), **extra}, tmp)
    os.replace(tmp, path)


def _load_init(path: str, model: InspectionNet) -> None:
    """Load checkpoint `path`'s weights into `model`; refused in one line when its architecture is not this run's."""
    ckpt = read_checkpoint(path)
    if ckpt.get("spec", {}).get("encoder") != model.spec.encoder or "model" not in ckpt:
        raise ConfigError(f"trainer config key 'init': {path} is not a checkpoint of this architecture "
                          f"(encoder {ckpt.get('spec', {}).get('encoder')!r}, this run {model.spec.encoder!r}); "
                          "give a best.pt of a run with the same encoder and decoder")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ConfigError(f"trainer config key 'init': {path} does not fit this run's model "
                          f"({str(exc).splitlines()[0]}); give a checkpoint with the same decoder_channels") from None
    return ckpt["model"]


def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True,
          stop_at_step: int | None = None) -> dict[str, Any]:
    """Train per `cfg`; `resume` continues a last.pt on the same schedule; `stop_at_step` saves and returns early
    (a time-boxed session), to be resumed later."""
    seed_everything(cfg.seed)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    train_set, val_set = split_data(cfg)  # every data problem, all at once, before the run folder exists
    out = Path(cfg.out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _train(cfg, out, train_set, val_set, device, resume, progress, stop_at_step)
    except BaseException:
        if created and not any((out / name).exists() for name in ("last.pt", "best.pt")):
            shutil.rmtree(out, ignore_errors=True)  # a run that never saved leaves nothing behind
        raise


def split_data(cfg: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """The checked frames of every data folder, less the hold-out list, split per folder (stratified)."""
    samples = load_datasets(cfg.data)
    if cfg.holdout:
        held = read_holdout(cfg.holdout)
        samples = [s for s in samples if s.image_id not in held]
        log.info("holding out %d frames listed in %s", len(held), cfg.holdout)
    train_set, val_set = [], []
    for d in range(len(cfg.data)):  # each folder split on its own, so every domain is in the validation set
        fraction = cfg.val_fraction[d if len(cfg.val_fraction) > 1 else 0]
        t, v = stratified_split([s for s in samples if s.domain == d], fraction, cfg.seed)
        train_set += t
        val_set += v
    return train_set, val_set


def _train(cfg: TrainConfig, out: Path, train_set: list[Sample], val_set: list[Sample], device: torch.device,
           resume: str | None, progress: bool, stop_at_step: int | None) -> dict[str, Any]:
    (out / "config.yaml").write_text(yaml.safe_dump(
        {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}, sort_keys=False))
    (out / "split.json").write_text(json.dumps({"train": [s.image_id for s in train_set],
                                                "val": [s.image_id for s in val_set]}))
    (out / "val_weights.json").write_text(json.dumps(domain_weights(val_set)))
    generator = torch.Generator().manual_seed(cfg.seed)
    weights = sampling_weights(train_set, cfg.shares, cfg.balance)
    sampler = WeightedRandomSampler(weights, len(train_set), generator=generator) \
        if cfg.balance or cfg.shares is not None else None
    loader = DataLoader(SteelDataset(train_set, True, cfg.crop_width, cfg.seed, cfg.augment),
                        batch_size=cfg.batch_size,
                        shuffle=sampler is None, sampler=sampler, num_workers=cfg.workers,
                        drop_last=len(train_set) > cfg.batch_size, generator=generator)
    model = build(cfg.spec())
    if cfg.encoder_weights:
        left = load_encoder_weights(model.unet, cfg.encoder, cfg.encoder_weights)
        log.info("encoder weights from %s (%d encoder tensors left at their initial values)", cfg.encoder_weights,
                 len(left))
    if cfg.init:
        _load_init(cfg.init, model)
        log.info("weights from %s", cfg.init)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.max_steps or cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total_steps, 1), pct_start=0.15)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    state = {"epoch": 0, "step": 0, "best": -1.0, "history": []}
    if resume:
        ckpt = read_checkpoint(resume)
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
            bar.set_postfix(loss=f"{state['history'][-1]:.4f}", val_dice=_best(state))
            if state["step"] >= total_steps or state["step"] == stop_at_step:
                break
        if state["step"] == stop_at_step and state["step"] < total_steps:
            save_checkpoint(out / "last.pt", model, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                            state=state)
            break
        state["epoch"] += 1
        last = state["step"] >= total_steps
        if val_set and (state["epoch"] % cfg.val_every == 0 or last):
            metrics = evaluate_model(model, val_set, device=device, weights=domain_weights(val_set))
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
