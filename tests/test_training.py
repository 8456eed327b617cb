import json

import numpy as np
import pytest
import torch

from trainer.synth import write_dataset
from trainer.train import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth"), 16, seed=2, progress=False)


def cfg(data, out, **over) -> TrainConfig:
    base = {"encoder": "tu-mobilenetv3_small_100", "decoder_channels": [16, 16, 16, 8, 8], "scale": 0.5,
            "batch_size": 4, "crop_width": 256, "lr": 3e-3, "val_fraction": 0.25, "device": "cpu"}
    return TrainConfig.from_sources(None, data=str(data), out=str(out), **{**base, **over})


def test_few_steps_lower_the_loss_and_save(tiny_data, tmp_path) -> None:
    state = train(cfg(tiny_data, tmp_path / "run", max_steps=30, lr=1e-2), progress=False)
    losses = state["history"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    for name in ("best.pt", "last.pt", "config.yaml", "split.json"):
        assert (tmp_path / "run" / name).exists()
    assert set(json.loads((tmp_path / "run" / "split.json").read_text())) == {"train", "val"}


def test_deterministic_on_cpu_and_resumable(tiny_data, tmp_path) -> None:
    a = train(cfg(tiny_data, tmp_path / "a", max_steps=8), progress=False, stop_at_step=2)
    b = train(cfg(tiny_data, tmp_path / "b", max_steps=8), progress=False, stop_at_step=2)
    assert a["step"] == 2 and a["history"] == b["history"]  # deterministic with a seed on CPU
    c = train(cfg(tiny_data, tmp_path / "c", max_steps=8), resume=str(tmp_path / "a" / "last.pt"), progress=False)
    assert c["step"] == 8 and c["history"][:2] == a["history"] and len(c["history"]) == 8
    ckpt = torch.load(tmp_path / "c" / "last.pt", weights_only=True)  # optimizer state too: plain values
    assert ckpt["state"]["step"] == 8


def test_tune_improves_or_keeps_the_metric(tiny_data, tmp_path) -> None:
    from inspector.model import load_checkpoint
    from trainer.data import load_dataset
    from trainer.evaluate import evaluate_model
    from trainer.tune import tune

    train(cfg(tiny_data, tmp_path / "run", max_steps=10), progress=False)
    model, _ = load_checkpoint(str(tmp_path / "run" / "best.pt"))
    samples = load_dataset(tiny_data)[:6]
    params, result = tune(model, samples)
    untuned = evaluate_model(model, samples)["mean_dice"]
    tuned = evaluate_model(model, samples, params)["mean_dice"]
    assert tuned == pytest.approx(result["mean_dice"], abs=1e-9)  # the tuner's arithmetic = the evaluator's
    assert tuned >= untuned - 1e-9


def test_metric_and_submission_scoring(sample_dir, tmp_path) -> None:
    from trainer.evaluate import score_submission

    ids = [p.name for p in (sample_dir / "images").iterdir()]
    perfect = score_submission(sample_dir / "train.csv", sample_dir / "train.csv", ids)
    assert perfect["mean_dice"] == 1.0
    empty = tmp_path / "empty.csv"
    empty.write_text("ImageId,ClassId,EncodedPixels\n")
    score = score_submission(empty, sample_dir / "train.csv", ids)
    assert score["mean_dice"] == pytest.approx(1 - 48 / 160)  # 48 defect pairs of 160 score 0


def test_overlays_written(tmp_path, tiny_checkpoint, sample_dir) -> None:
    import cv2

    from inspector.model import load_checkpoint
    from trainer.data import load_dataset
    from trainer.evaluate import evaluate_model

    model, _ = load_checkpoint(str(tiny_checkpoint))
    evaluate_model(model, load_dataset(sample_dir)[:2], overlays=tmp_path / "ov")
    pngs = sorted((tmp_path / "ov").glob("*.png"))
    assert len(pngs) == 2 and cv2.imread(str(pngs[0])).shape == (256 * 2 + 6, 1600, 3)


def test_encoder_weights_from_a_local_file(tmp_path) -> None:
    from conftest import TINY_SPEC

    from inspector.errors import ConfigError
    from inspector.model import build
    from trainer.pretrained import load_encoder_weights

    torch.manual_seed(1)
    source = build(TINY_SPEC)
    torch.save(source.unet.encoder.state_dict(), tmp_path / "encoder.pth")
    torch.manual_seed(2)
    loaded = build(TINY_SPEC)
    assert load_encoder_weights(loaded.unet, TINY_SPEC["encoder"], str(tmp_path / "encoder.pth")) == []
    for (name, a), b in zip(source.unet.encoder.state_dict().items(), loaded.unet.encoder.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ConfigError, match="no weights"):
        load_encoder_weights(loaded.unet, TINY_SPEC["encoder"], str(tmp_path / "wrong.pth"))


def test_trainer_config_typo_is_one_line(tmp_path) -> None:
    from click.testing import CliRunner

    from trainer.cli import main as trainer_main

    bad = tmp_path / "t.yaml"
    bad.write_text("epochz: 3\n")
    (tmp_path / "d" / "images").mkdir(parents=True)
    result = CliRunner().invoke(trainer_main, ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"),
                                               "--config", str(bad)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "'epochz'" in lines[0] and "epochs" in lines[0]


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path, tiny_checkpoint) -> None:
    import argparse

    from inspector.errors import EngineError
    from inspector.model import load_checkpoint

    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["planted"] = argparse.Namespace(run="anything")  # an object: unpickling it could run code
    torch.save(ckpt, tmp_path / "planted.pt")
    with pytest.raises(EngineError, match="pickled Python objects"):
        load_checkpoint(str(tmp_path / "planted.pt"))


def test_imagenet_weights_load_with_no_missing_encoder_keys() -> None:
    from inspector.model import ModelSpec, build
    from trainer.pretrained import load_encoder_weights

    spec = ModelSpec(encoder="tu-tf_efficientnet_lite0", decoder_channels=(16, 16, 16, 8, 8), scale=0.5)
    torch.manual_seed(0)
    model = build(spec).eval()
    x = torch.rand(1, 1, 64, 128)
    with torch.no_grad():
        before = model.unet.encoder(x)[-1].clone()
    missing = load_encoder_weights(model.unet, spec.encoder, "imagenet")
    with torch.no_grad():
        after = model.unet.encoder(x)[-1]
    assert missing == []  # every encoder tensor came from the package
    assert not torch.allclose(before, after)
    stem = model.unet.encoder.model.conv_stem.weight
    assert stem.shape[1] == 1  # RGB filters summed into the one gray channel


def test_lukemelas_keys_map_onto_timm_strictly() -> None:
    import timm

    from trainer.pretrained import _lite0_file, lukemelas_to_timm

    state = torch.load(_lite0_file(), map_location="cpu", weights_only=True)
    for name in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        net = timm.create_model(name, pretrained=False)
        net.load_state_dict(lukemelas_to_timm(state, list(net.state_dict())), strict=True)


def test_progress_says_no_validation_yet_instead_of_minus_one() -> None:
    from trainer.train import _best

    assert _best({"best": -1.0}) == "no validation yet"  # before the first validation
    assert _best({"best": 0.81234}) == "0.8123"
