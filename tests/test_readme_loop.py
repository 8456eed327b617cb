"""The README's retraining loop, as written: the block after the `readme-loop` marker is copied out of README.md
and run by bash in a copy of this checkout (set up by its own scripts/activate against a throwaway shared venv),
with only its two settings changed: STEPS=2 and DATA = a copy of the Severstal sample. README and code cannot
drift apart without this failing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, borrowed_site_packages, copy_checkout

pytestmark = pytest.mark.slow
MARKER = "<!-- readme-loop: tests/test_readme_loop.py runs the next block -->"


def readme_loop() -> str:
    text = (ROOT / "README.md").read_text()
    assert MARKER in text, "README.md lost the readme-loop marker"
    found = re.search(r"```bash\n(.*?)```", text[text.index(MARKER):], re.S)
    assert found, "no ```bash block after the readme-loop marker"
    return found.group(1)


def _setting(block: str, name: str, value: str) -> str:
    """Set NAME=... (the block's own line for it, which must exist) to value."""
    changed, n = re.subn(rf"^{name}=\S+", f"{name}={value}", block, flags=re.M)
    assert n == 1, f"the README loop has no single {name}= line"
    return changed


def test_the_readme_loop_runs_as_written(sample_dir, tmp_path) -> None:
    block = readme_loop()
    assert "config/trainer-cpu-demo.yaml" in block  # the loop names the CPU config
    checkout = copy_checkout(tmp_path / "checkout", skip=("docs/", "benchmarks/"))
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data, ignore=shutil.ignore_patterns("unlabeled_test_images"))
    script = _setting(_setting(block, "STEPS", "2"), "DATA", str(data))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(INSPECTOR_VENV=str(tmp_path / "shared-venv"), INSPECTOR_VENV_SPEC="",
               PYTHONPATH=str(borrowed_site_packages(tmp_path / "site")))
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    shipped = (checkout / "engines" / "SHIPPED").read_text().strip()
    assert "40 frames, 35 with defects" in out  # trainer check on the sample
    assert "scoring the validation split of runs/r1" in out  # evaluate said which split
    assert "parity vs FP32 PyTorch on 8 of" in out and "installed: engines/current ->" in out
    built = [p.name for p in (checkout / "engines").iterdir()
             if p.is_dir() and not p.is_symlink() and p.name != shipped and not p.name.startswith(".")]
    assert len(built) == 1 and built[0] in out  # listed by `trainer engines`
    assert os.readlink(checkout / "engines" / "current") == shipped  # and switched back
    assert (checkout / "runs" / "r1" / "best.pt").exists() and any((checkout / "runs" / "r1" / "overlays").iterdir())
    for name in ("engines/current", f"engines/{built[0]}/model.onnx", "runs/r1/best.pt"):  # out of git's way
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=ROOT)
        assert ignored.returncode == 0, f"{name} would show in git status"
    for name in ("engines/SHIPPED", f"engines/{shipped}/manifest.json"):  # still shipped
        kept = subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=ROOT)
        assert kept.returncode == 1, f"{name} is ignored"
