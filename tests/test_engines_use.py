"""`inspector engines` / `trainer engines`: the list, `use ID` moving a running worker (real Redis, real tiny
engines) there and back with every frame answered once, and `current` made on first use from engines/SHIPPED."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from conftest import engines_folder, events, make_cfg, wait_for

from inspector import engines
from inspector.cli import main as inspector_main
from inspector.feed import feed, messages, redis_adder, synthetic_payloads
from inspector.metrics import Metrics
from inspector.pipeline import from_config
from trainer.cli import main as trainer_main


@pytest.fixture
def shipped_root(tmp_path, tiny_engine, tiny_engine_b) -> tuple[Path, str, str]:
    """An engines folder as a fresh clone has it: two engine folders, SHIPPED naming the first, no `current`."""
    root, (a, b) = engines_folder(tmp_path / "engines", tiny_engine, tiny_engine_b)
    (root / engines.SHIPPED).write_text(a + "\n")
    return root, a, b


def test_current_is_made_from_shipped_on_first_load(shipped_root) -> None:
    root, first, _ = shipped_root
    assert not (root / "current").is_symlink()
    assert engines.load(root / "current").manifest.engine_id == first  # what the worker's start does
    assert os.readlink(root / "current") == first


def test_the_list_names_every_engine_and_marks_current(shipped_root) -> None:
    root, first, second = shipped_root
    out = CliRunner().invoke(trainer_main, ["engines", "--engines", str(root)])
    assert out.exit_code == 0, out.output
    lines = {line[2:].split()[0]: line for line in out.output.splitlines() if line[2:].startswith("unet-")}
    assert set(lines) == {first, second}
    assert lines[first].startswith("* ") and "(shipped)" in lines[first] and lines[second].startswith("  ")
    assert "onnx/fp32" in lines[second] and "1.0000 (2 fr)" in lines[second]  # parity of the build, 2 frames


def test_use_of_an_unknown_id_is_one_line_naming_the_installed(shipped_root) -> None:
    root, first, second = shipped_root
    out = CliRunner().invoke(inspector_main, ["engines", "--engines", str(root), "use", "nope"])
    assert out.exit_code == 78
    assert out.output.count("\n") == 1 and first in out.output and second in out.output


@pytest.mark.redis
def test_use_moves_a_running_worker_and_back_losing_nothing(redis_url, shipped_root) -> None:
    root, first, second = shipped_root
    client = redis.Redis.from_url(redis_url)
    metrics = Metrics()
    # ungated tiny engines and an ungated shipped one: this is the rollback's mechanics (the gate: test_gate.py)
    pipe = from_config(make_cfg(redis_url, root / "current", engine__watch_every_s=0.2, engine__require_gate=False),
                       metrics=metrics)
    runner = threading.Thread(target=pipe.run, kwargs={"handle_signals": False}, daemon=True)
    # the camera runs until the worker is back on the first engine and has answered frames with it: a fixed count
    # could all be answered before the switch back on a slow machine (the test would then see no third run)
    stop = threading.Event()
    sent: list[int] = []
    camera = threading.Thread(target=lambda: sent.append(feed(
        redis_adder(client, "inspect:{main}:frames"), messages(synthetic_payloads(0, 4), "cam-u"), 10**9, 50.0,
        stop.is_set)))
    runner.start()
    camera.start()
    cli = CliRunner()
    try:
        wait_for(lambda: client.xlen("inspect:{main}:events") >= 30, what="events from the shipped engine")
        went = cli.invoke(inspector_main, ["engines", "--engines", str(root), "use", second])
        assert went.exit_code == 0 and f"was {first}" in went.output, went.output
        wait_for(lambda: pipe.engine.model_id == second, what="the switch")
        seen = client.xlen("inspect:{main}:events")
        wait_for(lambda: client.xlen("inspect:{main}:events") >= seen + 30, what="events from the second engine")
        back = cli.invoke(trainer_main, ["engines", "--engines", str(root), "use", first])
        assert back.exit_code == 0, back.output
        wait_for(lambda: pipe.engine.model_id == first, what="the switch back")
        seen = client.xlen("inspect:{main}:events")
        wait_for(lambda: client.xlen("inspect:{main}:events") >= seen + 30, what="events from the first engine again")
        stop.set()
        camera.join()
        total = sent[0]
        assert total >= 90
        wait_for(lambda: client.xlen("inspect:{main}:events") >= total, what="every event")
    finally:
        stop.set()
        pipe.stop()
        runner.join(60)
        pipe.close()
    got = events(client)
    ids = [e["frame_id"] for e in got]
    assert len(ids) == total and len(set(ids)) == total  # none lost, none twice
    models = [e["model"] for e in got]
    runs = [m for i, m in enumerate(models) if i == 0 or m != models[i - 1]]
    assert runs == [first, second, first]  # two switch points, in that order
    for engine in (first, second):  # the defect rate per class and engine, as /metrics serves it
        mine = [e for e in got if e["model"] == engine and e["status"] == "ok"]
        sample = metrics.registry.get_sample_value
        assert sample("inspector_engine_frames_total", {"engine": engine}) == len(mine)
        for k in range(1, 5):
            showing = sum(1 for e in mine if any(d["class_id"] == k for d in e["defects"]))
            assert sample("inspector_engine_defect_frames_total", {"engine": engine, "class_id": str(k)}) == showing
