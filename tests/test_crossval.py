"""The pieces benchmarks/train_real.py's cross-validation stands on: folds dealt by class combination, the tuner's
"off" for a class the model cannot find, hflip test-time augmentation inside the engine, and fine-tuning from a
checkpoint (`init`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.rle import encode
from trainer.data import Sample, stratified_folds
from trainer.tune import OFF, choose, frame_scores, frame_stats, score

H, W = 256, 1600


def sample(i: int, classes: tuple[int, ...]) -> Sample:
    rles = {}
    for c in classes:
        mask = np.zeros((H, W), np.uint8)
        mask[40:120, 100 * c:100 * c + 300] = 1
        rles[c] = encode(mask)
    return Sample(image_id=f"f{i:03d}.jpg", path=Path(f"f{i:03d}.jpg"), rles=rles)


def test_folds_hold_every_frame_once_balanced_and_spread_each_class() -> None:
    combos = [(4,)] * 10 + [(3,)] * 10 + [(3, 4)] * 9 + [()] * 5 + [(1, 2)] * 3 + [(1,)] * 2 + [(2, 3)]
    samples = [sample(i, c) for i, c in enumerate(combos)]
    folds = stratified_folds(samples, 5, seed=0)
    ids = [s.image_id for f in folds for s in f]
    assert sorted(ids) == sorted(s.image_id for s in samples)  # each frame in exactly one fold
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for combo in set(combos):
        have = combos.count(combo)
        assert sum(1 for f in folds if any(s.classes == combo for s in f)) == min(have, 5), combo
    for c in (1, 2, 3, 4):  # every class is held out somewhere, and trained on elsewhere
        assert 2 <= sum(1 for f in folds if any(c in s.rles for s in f)) <= 5
    assert [[s.image_id for s in f] for f in stratified_folds(samples, 5, seed=0)] == \
        [[s.image_id for s in f] for f in folds]  # the same seed, the same folds
    with pytest.raises(ValueError, match="folds need"):
        stratified_folds(samples, 1, seed=0)


def test_a_class_the_model_cannot_find_is_switched_off_and_one_it_finds_is_kept() -> None:
    """Class 1: the prediction is a blob where the truth is not (false positives on every frame); class 3: the
    prediction is the truth. Tuning keeps class 3 and switches class 1 off, so it scores all-empty there."""
    samples = [sample(i, (3,) if i % 2 else (1, 3)) for i in range(8)]
    stats = []
    for s in samples:
        probs = np.zeros((4, H, W), np.float16)
        probs[0, 150:250, 900:1300] = 0.9  # class 1: never where its truth is
        probs[2, 40:120, 300:600] = 0.9  # class 3: exactly its truth
        stats.append(frame_stats(s, probs, np.full(4, 0.9, np.float32)))
    params, result = choose(stats, min_gain=0.01)
    assert params.min_class_area[0] == OFF and result["off"][0]
    assert params.min_class_area[2] < OFF and not result["off"][2]
    per_class = score(stats, params)
    assert per_class[0] == pytest.approx(result["all_empty_per_class"][0]) == pytest.approx(0.5)
    assert per_class[2] == pytest.approx(1.0)
    dice, reported = frame_scores(stats, params)
    assert dice.mean(axis=0) == pytest.approx(per_class)
    assert not reported[:, 0].any() and reported[:, 2].all()


def test_min_gain_switches_off_a_class_that_wins_by_too_little() -> None:
    """A class found on 1 frame of 8 and falsely reported on none beats all-empty by 1/8 of a frame's Dice:
    kept with min_gain 0, off when the gain asked for is larger."""
    samples = [sample(i, (4,) if i == 0 else ()) for i in range(8)]
    stats = []
    for i, s in enumerate(samples):
        probs = np.zeros((4, H, W), np.float16)
        if i == 0:
            probs[3, 40:120, 400:700] = 0.9
        stats.append(frame_stats(s, probs, np.full(4, 0.9, np.float32)))
    kept, _ = choose(stats, min_gain=0.0)
    off, _ = choose(stats, min_gain=0.2)
    assert kept.min_class_area[3] < OFF and off.min_class_area[3] == OFF


def test_hflip_inside_the_model_is_the_mean_with_the_mirrored_frame() -> None:
    from inspector.model import ModelSpec, build, with_tta

    torch.manual_seed(0)
    model = build(ModelSpec(encoder="tu-mobilenetv3_small_100", decoder_channels=(16, 16, 16, 8, 8), scale=0.5)).eval()
    x = torch.randint(0, 256, (2, 1, 64, 320), dtype=torch.uint8)
    with torch.inference_mode():
        plain, plain_presence = model(x)
        mirrored, mirrored_presence = model(torch.flip(x, dims=[-1]))
        with_tta(model, "hflip")
        both, both_presence = model(x)
        both_of_mirror, _ = model(torch.flip(x, dims=[-1]))
    assert torch.allclose(both, (plain + torch.flip(mirrored, dims=[-1])) / 2, atol=1e-6)
    assert torch.allclose(both_presence, (plain_presence + mirrored_presence) / 2, atol=1e-6)
    assert torch.allclose(torch.flip(both_of_mirror, dims=[-1]), both, atol=1e-5)  # mirror-equivariant now
    assert not torch.allclose(torch.flip(mirrored, dims=[-1]), plain, atol=1e-3)  # and it was not before
    with pytest.raises(ValueError, match="hflip"):
        with_tta(model, "rot90")


def test_build_engine_tta_puts_it_in_the_engine_and_its_manifest(tiny_checkpoint, tmp_path) -> None:
    from inspector import engines, synth
    from inspector.model import load_checkpoint
    from trainer.build_engine import build

    frames = torch.from_numpy(np.stack([synth.frame(1, i).image for i in range(2)]))[:, None]
    folder = build(tiny_checkpoint, frames, tmp_path / "engines", "onnx", max_batch=4, tta="hflip")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"]["tta"] == "hflip"
    kept, _ = load_checkpoint(str(folder / "checkpoint.pt"))
    assert kept.spec.tta == "hflip"  # the torch backend runs it the same way
    source, _ = load_checkpoint(str(tiny_checkpoint))
    assert source.spec.tta == "none"  # the source checkpoint is untouched
    assert min(manifest["parity"]["dice_per_class"]) >= 0.99  # the ONNX runs the mirror too
    assert engines.load(folder).manifest.engine_id == folder.name


def test_init_starts_from_the_checkpoint_and_refuses_another_architecture(tiny_checkpoint, tmp_path) -> None:
    from inspector.errors import ConfigError
    from inspector.model import read_checkpoint
    from trainer.synth import write_dataset
    from trainer.train import TrainConfig, train

    data = write_dataset(tmp_path / "synth", 4, seed=3, progress=False)
    base = {"encoder": "tu-mobilenetv3_small_100", "decoder_channels": [16, 16, 16, 8, 8], "scale": 0.5,
            "batch_size": 2, "crop_width": 256, "val_fraction": 0.0, "device": "cpu", "max_steps": 1}
    cfg = TrainConfig.from_sources(None, data=str(data), out=str(tmp_path / "run"), init=str(tiny_checkpoint),
                                   lr=0.0, **{k: v for k, v in base.items()})
    train(cfg, progress=False)
    got, want = read_checkpoint(tmp_path / "run" / "best.pt")["model"], read_checkpoint(tiny_checkpoint)["model"]
    conv = next(k for k in want if k.endswith("weight") and want[k].dim() == 4)
    assert torch.equal(got[conv], want[conv])  # lr 0: the run's weights are the checkpoint's
    other = TrainConfig.from_sources(None, data=str(data), out=str(tmp_path / "other"), init=str(tiny_checkpoint),
                                     **{**base, "encoder": "resnet18", "decoder_channels": [16, 16, 16, 8, 8]})
    with pytest.raises(ConfigError, match=r"'init'.*not a checkpoint of this architecture"):
        train(other, progress=False)
    assert not (tmp_path / "other").exists()  # a refused run leaves nothing behind
