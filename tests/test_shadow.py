"""The shadow engine: a second real engine on sampled live frames, compared with the live masks; its metrics move
on a running worker, the live events are the live engine's alone, and the comparison rules hold on known masks."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import wait_for

from inspector import config, engines
from inspector.feed import feed, messages, synthetic_payloads
from inspector.io.memory import MemoryStreams
from inspector.metrics import Metrics
from inspector.pipeline import from_config
from inspector.protocol import Defect, unpack_event
from inspector.rle import encode
from inspector.shadow import Agreement, compare
from trainer.cli import main as trainer

SHAPE = (16, 20)


def poll(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def defect(class_id: int, mask: np.ndarray) -> Defect:
    return Defect(class_id, encode(mask), int(mask.sum()), 0.9, [])


def test_compare_counts_dice_flips_and_untouched_components() -> None:
    live1 = np.zeros(SHAPE, np.uint8)
    live1[2:6, 2:6] = 1  # 16 px, shadow sees 8 of them ...
    live1[10:12, 15:18] = 1  # ... and misses this component
    shadow1 = np.zeros(SHAPE, np.uint8)
    shadow1[2:6, 2:4] = 1
    shadow1[12:15, 0:3] = 1  # a component live does not have
    shadow3 = np.zeros(SHAPE, np.uint8)
    shadow3[0:2, 0:2] = 1  # class 3 found by the shadow only
    live4 = np.zeros(SHAPE, np.uint8)
    live4[5:7, 5:7] = 1  # class 4 found by live only
    agg = Agreement()
    compare([defect(1, live1), defect(4, live4)], [defect(1, shadow1), defect(3, shadow3)], SHAPE, agg)
    compare([], [], SHAPE, agg)  # a frame both call clean
    c1, c2, c3, c4 = (c.as_dict(agg.frames) for c in agg.classes)
    assert agg.frames == 2
    assert c1["pixel_dice"] == pytest.approx(2 * 8 / (22 + 17), abs=1e-5)
    assert c1["extra_components"] == 1 and c1["missing_components"] == 1
    assert c1["presence_extra"] == c1["presence_missing"] == 0
    assert c2 == {**c2, "pixel_dice": 1.0, "frame_dice": 1.0, "presence_extra": 0}
    assert c3["presence_extra"] == 1 and c3["extra_components"] == 1 and c3["frame_dice"] == 0.5
    assert c4["presence_missing"] == 1 and c4["missing_components"] == 1 and c4["pixel_dice"] == 0.0


def test_shadow_metrics_move_on_a_running_worker_and_live_events_stay_live(tiny_engine, tiny_engine_b, tmp_path,
                                                                          caplog) -> None:
    streams, metrics = MemoryStreams(), Metrics()
    report = tmp_path / "shadow.json"
    cfg = config.load(engine__path=str(tiny_engine), engine__shadow=str(tiny_engine_b), engine__shadow_every=2,
                      engine__shadow_budget=1.0, engine__shadow_report=str(report), engine__shadow_summary_s=0.5,
                      batching__batch_size=4, batching__max_wait_ms=5.0, redis__block_ms=50)
    pipe = from_config(cfg, streams, metrics=metrics)
    shadow_id = engines.load(tiny_engine_b).manifest.engine_id
    compared = lambda: metrics.registry.get_sample_value("inspector_shadow_frames_total",  # noqa: E731
                                                         {"result": "compared"}) or 0
    try:
        with caplog.at_level(logging.INFO, logger="inspector.shadow"):
            feed(lambda b: [streams.add(f) for f in b], messages(synthetic_payloads(0, 8), "cam-s"), 16)
            while pipe.step():
                pass
            wait_for(lambda: compared() >= 1, timeout=300,  # one in flight until its cost is known
                     what="the shadow's first comparisons (nice 19: slow on a busy machine)")
            first = compared()
            sent = 16
            for _ in range(30):  # more live frames buy the shadow more budget: it moves within a few rounds
                feed(lambda b: [streams.add(f) for f in b], messages(synthetic_payloads(1, 8), "cam-s", sent), 8)
                sent += 8
                while pipe.step():
                    pass
                if poll(lambda: compared() > first, 20.0):
                    break
            assert compared() > first, "the shadow's metrics never moved"
            wait_for(lambda: report.exists() and json.loads(report.read_text())["frames_compared"] > first,
                     what="the report")
    finally:
        pipe.close()
    got = [unpack_event(e) for e in streams.events]
    assert len(got) == sent and {e["model"] for e in got} == {pipe.engine.model_id} != {shadow_id}
    r = json.loads(report.read_text())
    assert r["shadow"] == shadow_id and r["live"] == pipe.engine.model_id
    assert r["counts"]["sampled"] <= sent // 2 and r["frames_compared"] == r["counts"]["compared"] > 0
    for k in "1234":
        assert 0.0 <= r["per_class"][k]["pixel_dice"] <= 1.0
    dice = [metrics.registry.get_sample_value("inspector_shadow_pixel_dice", {"class_id": str(k)}) for k in range(1, 5)]
    assert all(d is not None and 0 <= d <= 1 for d in dice)
    assert metrics.registry.get_sample_value("inspector_shadow_seconds_total") > 0
    assert f"shadow {shadow_id} vs live {pipe.engine.model_id} on" in caplog.text
    printed = CliRunner().invoke(trainer, ["shadow-report", str(report)])
    assert printed.exit_code == 0 and f"{r['frames_compared']} frames compared" in printed.output


def test_a_missing_shadow_engine_names_the_key(tiny_engine, tmp_path) -> None:
    cfg = config.load(engine__path=str(tiny_engine), engine__shadow=str(tmp_path / "nope"))
    with pytest.raises(Exception, match=r"config key 'engine.shadow' .*does not exist"):
        from_config(cfg, MemoryStreams())
