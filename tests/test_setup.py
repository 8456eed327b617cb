"""scripts/env.sh and scripts/activate, run for real on copies of this checkout against a throwaway shared venv
made by the same code (INSPECTOR_VENV_SPEC="": no packages, so seconds, not the 6 GB one). The dependencies the
copies' code needs come from this interpreter's site-packages through PYTHONPATH (links, read only)."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

from tests.conftest import borrowed_site_packages, copy_checkout

pytestmark = pytest.mark.slow


BORROWED: list[Path] = []


def _env(shared: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return {**env, "INSPECTOR_VENV": str(shared), "INSPECTOR_VENV_SPEC": "", "PYTHONPATH": str(BORROWED[0]), **more}


@pytest.fixture(scope="module", autouse=True)
def _borrowed(tmp_path_factory: pytest.TempPathFactory) -> None:
    BORROWED[:] = [borrowed_site_packages(tmp_path_factory.mktemp("site"))]


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """An interactive bash (as a person's terminal) running `script`."""
    return subprocess.run(["bash", "-i", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared") / "venv-test"


@pytest.fixture(scope="module")
def checkout_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("a"), skip=("engines/", "docs/", "benchmarks/"))


@pytest.fixture(scope="module")
def checkout_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("b"), skip=("engines/", "docs/", "benchmarks/"))


@pytest.mark.parametrize("script", ["scripts/env.sh", "scripts/activate"])
def test_sourcing_into_an_interactive_shell_leaves_it_open(script, checkout_a, shared) -> None:
    # after sourcing: a failing command, an unset variable and a failing pipeline must not end the shell
    done = _bash(f"source {script}; echo sourced=$?; false; echo \"${{NOT_SET}}alive\"; false | true; "
                 "set -o | grep -E '^(errexit|nounset|pipefail)'; command -v inspector", checkout_a, _env(shared))
    assert "sourced=0" in done.stdout, done.stderr
    assert "alive" in done.stdout
    options = dict(line.split() for line in done.stdout.splitlines() if line.startswith(("errexit", "nounset",
                                                                                          "pipefail")))
    assert options == {"errexit": "off", "nounset": "off", "pipefail": "off"}
    assert done.stdout.strip().endswith(str(checkout_a / ".venv" / "bin" / "inspector"))


def test_a_failed_set_up_returns_and_leaves_path_alone(checkout_a, tmp_path) -> None:
    env = _env(tmp_path / "never", PYTHON=str(tmp_path / "no-such-python"))
    done = _bash('before=$PATH; source scripts/env.sh; echo "rc=$?"; [ "$PATH" = "$before" ] && echo same-path; '
                 "echo alive", checkout_a, env)
    assert "rc=0" not in done.stdout and "rc=" in done.stdout
    assert "same-path" in done.stdout and "alive" in done.stdout
    assert "set-up failed" in done.stderr


def test_every_script_in_both_venvs_runs(checkout_a, shared) -> None:
    done = _bash("source scripts/env.sh", checkout_a, _env(shared))
    assert done.returncode == 0, done.stderr
    assert (shared / ".complete").exists()
    scripts = [p for venv_dir in (shared, checkout_a / ".venv") for p in sorted((venv_dir / "bin").iterdir())
               if os.access(p, os.X_OK) and not p.name.startswith("activate")]
    names = {p.name for p in scripts}
    assert {"pip", "python", "inspector", "trainer"} <= names
    for path in scripts:
        ran = subprocess.run([str(path), "--help"], capture_output=True, text=True, env=_env(shared), timeout=120)
        assert ran.returncode == 0, f"{path}: {ran.stderr[-500:]}"


def test_a_venv_left_by_the_former_rename_is_repaired(checkout_a, tmp_path) -> None:
    legacy = tmp_path / "venv-old"
    venv.create(tmp_path / "venv-old.partial", with_pip=True)  # what the former env.sh did, then renamed
    (tmp_path / "venv-old.partial").rename(legacy)
    pip = legacy / "bin" / "pip"
    broken = subprocess.run(["bash", "-c", f"'{pip}' --version"], capture_output=True, text=True)
    assert broken.returncode != 0 and ".partial" in pip.read_text().splitlines()[0]  # the former defect
    done = _bash("source scripts/env.sh", checkout_a, _env(legacy))
    assert done.returncode == 0, done.stderr
    assert "repairing" in done.stderr
    fixed = subprocess.run([str(legacy / "bin" / "pip"), "--version"], capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr


WHERE = '''
import shutil
from pathlib import Path

import inspector
import trainer


def test_this_checkouts_code():
    root = Path(__file__).resolve().parents[1]
    assert Path(inspector.__file__).resolve().parent == root / "inspector"
    assert Path(trainer.__file__).resolve().parent == root / "trainer"
    assert Path(shutil.which("inspector")).parent == root / ".venv" / "bin"
'''


def test_two_checkouts_never_repoint_each_other(checkout_a, checkout_b, shared) -> None:
    for checkout in (checkout_a, checkout_b):  # b set up after a: the step that used to re-point a
        assert _bash("source scripts/env.sh", checkout, _env(shared)).returncode == 0
        (checkout / "tests" / "test_where.py").write_text(WHERE)
    runs = [subprocess.Popen(["bash", "-c", "source scripts/activate && cd / && python -c 'import inspector; "
                              "print(inspector.__file__)' && cd - >/dev/null && python -m pytest -q -p "
                              "no:cacheprovider tests/test_where.py"], cwd=c, env=_env(shared),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for c in (checkout_a, checkout_b)]  # side by side
    for checkout, run in zip((checkout_a, checkout_b), runs, strict=True):
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0, out
        assert out.splitlines()[0] == str(checkout / "inspector" / "__init__.py")
        assert "1 passed" in out
