"""Every module imports without tensorrt (and without onnxruntime where it is not needed at import)."""

import pkgutil
import subprocess
import sys

from conftest import ROOT

import inspector
import trainer


def modules() -> list[str]:
    names = []
    for pkg in (inspector, trainer):
        names.append(pkg.__name__)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    return names


def test_every_module_imports_with_tensorrt_missing() -> None:
    code = ("import sys; sys.modules['tensorrt'] = None; sys.modules['onnxruntime'] = None\n"
            "import importlib\n"
            f"for name in {modules()!r}:\n    importlib.import_module(name)\n"
            "assert sys.modules['tensorrt'] is None\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_tensorrt_backend_says_how_to_get_tensorrt(tiny_engine) -> None:
    code = ("import sys; sys.modules['tensorrt'] = None\n"
            "from inspector import engines, backends\n"
            f"b = backends.create(engines.load({str(tiny_engine)!r}), backends.Choice('tensorrt', 'cuda', ''))\n"
            "try:\n    b.activate()\nexcept Exception as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "EngineError" in out.stdout and "tensorrt" in out.stdout


def test_the_cli_and_config_load_without_torch() -> None:
    """`inspector --help`, `inspector acl` and a config check pay nothing for torch (1.6 s here): heavy imports
    live in the functions that need them."""
    code = ("import sys\nimport inspector.cli, trainer.cli\nfrom inspector import config\n"
            "config.load(None, 'redis://127.0.0.1:6379/0', engine__backend='onnxruntime', engine__device='cpu')\n"
            "print(sorted(m for m in ('torch', 'onnxruntime', 'cv2', 'tensorrt', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-3000:]
