"""The GPU acceptance run keeps what it measured whatever happens to a step: a step that hangs past its box is ended
and the run goes on; a run killed inside a step leaves every earlier step's result, and says which one was
running. (Its steps themselves run on the CPU with `--cpu-check`: see benchmarks/gpu_acceptance.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, wait_for

SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.py"


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def read(out: Path) -> dict:
    return json.loads((out / "gpu_acceptance.json").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_step_that_hangs_past_its_box_is_ended_and_the_run_goes_on(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-check", "--out", str(tmp_path), "--steps",
                           "sleep:0,sleep:600,sleep:1", "--box", "sleep:600=3"], env=env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = read(tmp_path)
    steps = doc["steps"]
    assert list(steps) == ["sleep:0", "sleep:600", "sleep:1"] == doc["order"]
    assert steps["sleep:0"]["status"] == "ok" and steps["sleep:0"]["result"] == {"sleeping_s": 0.0}
    hung = steps["sleep:600"]
    assert hung["status"] == "timed out" and "box of 3 s" in hung["error"] and hung["wall_s"] < 30
    assert hung["result"] == {"sleeping_s": 600.0}  # what it had recorded before it was ended
    assert not alive(hung["pid"])  # its process is gone
    assert steps["sleep:1"]["status"] == "ok"  # the run went on
    assert "box 3 s" in done.stdout  # each step's box is printed


def test_a_run_killed_inside_a_step_keeps_every_earlier_result(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--cpu-check", "--out", str(tmp_path), "--steps",
                             "environment,sleep:600"], env=env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    step_pid = None
    try:
        def sleeping() -> bool:
            path = tmp_path / "gpu_acceptance.json"
            return path.exists() and read(tmp_path)["steps"].get("sleep:600", {}).get("status") == "running"

        wait_for(sleeping, timeout=300, what="the second step to start")
        step_pid = read(tmp_path)["steps"]["sleep:600"]["pid"]
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run, as a device tool's time limit would end it
        proc.wait(timeout=30)
        doc = read(tmp_path)
        env_step = doc["steps"]["environment"]
        assert env_step["status"] == "ok" and env_step["result"]["torch"] and "labeller" in env_step["result"]
        assert doc["summary"]["status"]["environment"] == "ok" and doc["commit"]
        assert doc["steps"]["sleep:600"]["status"] == "running"  # the step the run died in says so
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if step_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(step_pid, signal.SIGKILL)  # the step runs in its own session: end it too
