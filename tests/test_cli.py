import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from inspector.cli import main
from trainer.cli import main as trainer_main


def test_bench_offline_json(tiny_engine) -> None:
    result = CliRunner().invoke(main, ["bench", "--engine", str(tiny_engine), "--frames", "8", "--batch-size", "4",
                                       "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    for key in ("fps", "engine_fps", "latency_ms_p50", "latency_ms_p99", "frames", "camera_fps",
                "meets_camera_rate", "stage_ms_per_frame", "machine", "commit", "versions"):
        assert key in data
    assert data["frames"] == 8 and data["fps"] > 0 and data["engine_fps"] > 0
    assert set(data["stage_ms_per_frame"]) >= {"decode", "stage", "infer", "postprocess", "publish"}


@pytest.mark.redis
def test_bench_redis_json(tiny_engine, redis_url) -> None:
    result = CliRunner().invoke(main, ["bench", "--redis", "--redis-url", redis_url, "--engine", str(tiny_engine),
                                       "--frames", "8", "--batch-size", "4", "--rate", "20", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["mode"] == "redis" and data["frames"] == 8 and data["offered_fps"] == 20


def test_config_error_is_one_clear_line(tmp_path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("batching:\n  batch_sise: 4\n")
    result = CliRunner().invoke(main, ["run", "--config", str(bad)])
    assert result.exit_code != 0 and "batching.batch_sise" in result.output and "Traceback" not in result.output


def test_missing_engine_names_the_fix(tmp_path) -> None:
    result = CliRunner().invoke(main, ["bench", "--engine", str(tmp_path / "none"), "--frames", "1"])
    assert result.exit_code != 0 and "trainer build-engine" in result.output


@pytest.mark.redis
def test_feed_then_run_burst(tiny_engine, redis_url, sample_dir) -> None:
    import redis

    runner = CliRunner()
    fed = runner.invoke(main, ["feed", "--redis-url", redis_url, "--folder", str(sample_dir / "images"),
                               "--count", "5"])
    assert fed.exit_code == 0, fed.output
    ran = runner.invoke(main, ["run", "--redis-url", redis_url, "--engine", str(tiny_engine), "--burst"])
    assert ran.exit_code == 0, ran.output
    assert redis.Redis.from_url(redis_url).xlen("inspect:{main}:events") == 5


def test_trainer_synth_and_evaluate_cli(tmp_path, tiny_checkpoint) -> None:
    runner = CliRunner()
    assert runner.invoke(trainer_main, ["synth", "--out", str(tmp_path / "d"), "--images", "3"]).exit_code == 0
    result = runner.invoke(trainer_main, ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data",
                                          str(tmp_path / "d"), "--json"])
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads(result.output.strip().splitlines()[-1])["mean_dice"] <= 1.0


def test_trainer_bad_inputs_are_clear_errors(tmp_path, tiny_checkpoint) -> None:
    (tmp_path / "images").mkdir()
    result = CliRunner().invoke(trainer_main, ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data",
                                               str(tmp_path)])
    assert result.exit_code != 0 and "train.csv" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(trainer_main, ["evaluate", "--checkpoint", __file__, "--data", str(tmp_path)])
    assert result.exit_code != 0 and "checkpoint" in result.output


def test_build_engine_on_a_file_that_is_no_checkpoint_is_one_line(tmp_path) -> None:
    config = Path(__file__).resolve().parents[1] / "config" / "trainer.yaml"
    result = CliRunner().invoke(trainer_main, ["build-engine", "--checkpoint", str(config), "--engines",
                                               str(tmp_path / "engines")])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "is not a trainer checkpoint" in result.output
    assert "best.pt" in result.output and "Please file an issue" not in result.output
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").iterdir())


@pytest.mark.slow  # builds engines: 26-44 s on the 2-core CI machine
def test_build_engine_says_parity_and_what_it_installed(tmp_path, tiny_checkpoint) -> None:
    root = tmp_path / "engines"
    first = CliRunner().invoke(trainer_main, ["build-engine", "--checkpoint", str(tiny_checkpoint), "--engines",
                                              str(root), "--parity-frames", "2", "--format", "onnx"])
    assert first.exit_code == 0, first.output
    installed = os.readlink(root / "current")
    assert "parity vs FP32 PyTorch on 2 synthetic frames: Dice per class" in first.output
    assert f"installed: {root / 'current'} -> {installed} (was none)" in first.output
    again = CliRunner().invoke(trainer_main, ["build-engine", "--checkpoint", str(tiny_checkpoint), "--engines",
                                              str(root), "--parity-frames", "2", "--format", "onnx", "--no-install"])
    assert again.exit_code == 0, again.output
    assert "built, not installed" in again.output and os.readlink(root / "current") == installed


def test_evaluate_says_which_split_it_scores(tmp_path, tiny_checkpoint) -> None:
    runner = CliRunner()
    assert runner.invoke(trainer_main, ["synth", "--out", str(tmp_path / "d"), "--images", "4"]).exit_code == 0
    loose = runner.invoke(trainer_main, ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data",
                                         str(tmp_path / "d")])
    assert loose.exit_code == 0 and "WARNING: scoring ALL 4 frames" in loose.output, loose.output
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "best.pt")
    names = sorted(p.name for p in (tmp_path / "d" / "images").iterdir())
    (run / "split.json").write_text(json.dumps({"train": names[:3], "val": names[3:]}))
    scored = runner.invoke(trainer_main, ["evaluate", "--checkpoint", str(run / "best.pt"), "--data",
                                          str(tmp_path / "d")])
    assert scored.exit_code == 0, scored.output
    assert f"scoring the validation split of {run} (1 frames" in scored.output and "over 1 images" in scored.output
    tuned = runner.invoke(trainer_main, ["tune", "--checkpoint", str(run / "best.pt"), "--data", str(tmp_path / "d")])
    assert tuned.exit_code == 0, tuned.output
    assert "WARNING: tuned on 1 frames" in tuned.output and "class  threshold" in tuned.output
    as_json = runner.invoke(trainer_main, ["tune", "--checkpoint", str(run / "best.pt"), "--data",
                                           str(tmp_path / "d"), "--json"])
    assert json.loads(as_json.output.strip().splitlines()[-1])["images"] == 1


@pytest.fixture(scope="module")
def bench_result(tiny_engine) -> dict:
    """One real offline bench result (its figures are overwritten below: the wording is under test)."""
    out = CliRunner().invoke(main, ["bench", "--engine", str(tiny_engine), "--frames", "4", "--batch-size", "4",
                                    "--json"])
    return json.loads(out.output.strip().splitlines()[-1])


@pytest.mark.parametrize(("fps", "offered", "verdict"), [
    (3.95, 4.0, "keeps up"),  # the shortfall a 4/s run measures from first capture to last event
    (3.8, 4.0, "does NOT keep up"),  # 5% short: frames pile up
    (8.0, 8.0, "keeps up"),  # exact
])
def test_bench_keeps_up_by_a_stated_tolerance(bench_result, fps, offered, verdict) -> None:
    from inspector import bench

    result = dict(bench_result)
    result.update(fps=fps, offered_fps=offered, keeps_up=fps >= (1 - bench.KEEP_UP_TOLERANCE) * offered)
    text = bench.summary(result)
    assert f"offered {offered:g} frames/s: {verdict}" in text and "within 3%" in text
    assert "capture to event on the in-memory stream" in text
    queued = bench.summary({**result, "offered_fps": None})
    assert "waiting in the queue, not the worker's latency" in queued
