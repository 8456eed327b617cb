"""serving.EngineSwap without threads: due / load (check) / switch / retire against real engine folders (the tiny
engines conftest builds through `trainer build-engine`), refusals counted and not retried until asked."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import engines_folder

from inspector import config, engines
from inspector.accounting import Accounting
from inspector.errors import ConfigError, EngineError
from inspector.metrics import Metrics
from inspector.serving import EngineSwap, load_engine
from inspector.stats import Stats
from trainer.build_engine import switch_current


@pytest.fixture
def root(tmp_path, tiny_engine, tiny_engine_b) -> tuple[Path, str, str]:
    """An engines folder with both tiny engines, `current` -> the first; their folder names."""
    root, (a, b) = engines_folder(tmp_path / "engines", tiny_engine, tiny_engine_b)
    switch_current(root, a)
    return root, a, b


def swap_for(root: Path, **over: object) -> tuple[EngineSwap, Accounting, Metrics]:
    # ungated tiny engines unless a test turns the gate on (the gate itself: test_gate.py)
    over.setdefault("engine__require_gate", False)
    over.setdefault("batching__batch_size", 4)
    cfg = config.load(engine__path=str(root / "current"), **over)
    metrics = Metrics()
    accounting = Accounting("w", cfg.camera.max_clock_skew_s, Stats(metrics=metrics))
    return EngineSwap(load_engine(cfg), cfg, accounting, "w"), accounting, metrics


def test_a_new_current_is_loaded_switched_and_the_old_retired(root) -> None:
    folder, _, b = root
    swap, accounting, metrics = swap_for(folder)
    first = swap.current
    try:
        assert swap.due() is None and swap.switch() is None  # current is the engine in service: nothing to do
        switch_current(folder, b)
        target = swap.due()
        assert target == (folder / b).resolve()
        assert swap.due() is None  # one load at a time
        assert swap.load(target) is True
        assert swap.current is first and swap.due() is None  # loaded, not yet switched; nothing else looked at
        old = swap.switch()
        assert old is first and swap.current.folder == target and swap.switch() is None
        assert swap.current.model_id == engines.load(folder / b).manifest.engine_id != first.model_id
        assert old.backend.active
        swap.retire(old)
        assert not old.backend.active
        assert accounting.stats.counters["engine_swaps"] == 1
        assert metrics.registry.get_sample_value("inspector_engine_swaps_total", {"result": "done"}) == 1
        assert swap.due() is None  # b is in service now
    finally:
        swap.close()
    assert not swap.current.backend.active


def test_a_broken_engine_is_refused_once_and_tried_again_on_request(root) -> None:
    folder, _, b = root
    swap, accounting, metrics = swap_for(folder)
    first = swap.current
    broken = folder / "broken"
    shutil.copytree(folder / b, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    try:
        switch_current(folder, "broken")
        target = swap.due()
        assert target == broken.resolve()
        assert swap.load(target) is False
        assert swap.switch() is None and swap.current is first and first.backend.active
        assert accounting.stats.counters["engine_swaps_refused"] == 1
        assert metrics.registry.get_sample_value("inspector_engine_swaps_total", {"result": "refused"}) == 1
        assert swap.due() is None  # not retried while engine.path still names it
        swap.request_reload()  # SIGHUP
        assert swap.due() == broken.resolve()
        assert swap.load(broken.resolve()) is False and accounting.stats.counters["engine_swaps_refused"] == 2
        switch_current(folder, b)  # pointed elsewhere: looked at again without a request
        assert swap.load(swap.due()) is True and swap.switch() is first
        swap.retire(first)
    finally:
        swap.close()


def test_check_refuses_an_engine_the_worker_cannot_serve(root) -> None:
    folder, _, b = root
    swap, accounting, _ = swap_for(folder, engine__require_gate=True)  # the tiny engines were built ungated
    try:
        gate = re.escape("engine.require_gate is on and it was built without a quality gate")
        with pytest.raises(EngineError, match=gate):
            swap.check(folder / b)
    finally:
        swap.close()
    big, _, _ = swap_for(folder, batching__batch_size=16)  # more than the engines' max batch (8)
    try:
        larger = re.escape("batching.batch_size 16 is larger than the engine's max batch 8")
        with pytest.raises(ConfigError, match=larger):
            big.check(folder / b)
        assert big.current.backend.active
    finally:
        big.close()
    assert accounting.stats.counters["engine_swaps_refused"] == 0  # check() only says why; load() counts


def test_a_reload_of_the_engine_in_service_is_no_load(root, caplog) -> None:
    folder = root[0]
    swap, accounting, _ = swap_for(folder)
    try:
        swap.request_reload()
        with caplog.at_level("INFO", logger="inspector.serving"):
            assert swap.due() is None
        assert "is already the engine in service" in caplog.text
        assert swap.due() is None and accounting.stats.counters["engine_swaps"] == 0
    finally:
        swap.close()
