"""The shipped systemd units: they parse (`systemd-analyze verify`), score <= 2.5 with `systemd-analyze security
--offline=true`, keep secrets out of Environment=, and still start the worker under their restrictions
(tests/unit_sandbox.py: bubblewrap + seccomp, since PID 1 here is not systemd and systemd-run cannot run)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import unit_sandbox as us
from conftest import ROOT, events

from inspector import config
from inspector.feed import feed, messages, redis_adder, synthetic_payloads
from inspector.io import acl
from inspector.io.redis_server import PrivateRedis

UNITS = {"inspector.service": "inspector.service", "inspector@.service": "inspector@main-0.service",
         "inspector-coils.service": "inspector-coils.service", "inspector-screen.service": "inspector-screen.service"}
SHIPPED_CONFIG = ROOT / "config" / "inspector.yaml"  # what every unit's ExecStart reads
GPU_DROP_IN = ROOT / "config" / "inspector-gpu.conf"
JIT_DROP_IN = ROOT / "config" / "inspector-jit.conf"
VENV_BIN = Path(sys.prefix) / "bin"
# the venv, its interpreter, and the shared venv's site-packages a checkout's thin .venv reads (scripts/env.sh):
# bound back, read-only, under ProtectHome
PYTHON = list(dict.fromkeys([sys.prefix, sys.base_prefix, *(p for p in sys.path if p.endswith("site-packages")
                                                            and not p.startswith(sys.prefix) and os.path.isdir(p))]))
MAX_EXPOSURE = 2.5
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (Debian: systemd)")


def installed(tmp_path: Path, unit: str, drop_in: Path | None = None) -> Path:
    """The unit as it would sit in /etc/systemd/system, its ExecStart pointing at this venv's inspector (the
    one path `verify` checks exists); a drop-in beside it in <unit>.d/."""
    name = UNITS[unit]
    text = (ROOT / "config" / unit).read_text().replace("/opt/steel-inspector/.venv/bin/", f"{VENV_BIN}/")
    path = tmp_path / (unit if "@" in unit else name)
    path.write_text(text)
    if drop_in is not None:
        folder = tmp_path / f"{path.name}.d"
        folder.mkdir()
        shutil.copy(drop_in, folder / drop_in.name)
    return tmp_path / name


def exposure(unit: Path) -> float:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", unit.name], cwd=unit.parent,
                         capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert found, out.stdout[-500:] + out.stderr[-500:]
    return float(found.group(1))


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_without_a_warning(tmp_path, unit: str) -> None:
    path = installed(tmp_path, unit)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", path.name], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and (out.stdout + out.stderr).strip() == "", out.stdout + out.stderr


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_unit_scores_ok(tmp_path, unit: str) -> None:
    assert exposure(installed(tmp_path, unit)) <= MAX_EXPOSURE


@needs_analyze
def test_gpu_drop_in_is_applied_and_still_scores_ok(tmp_path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "gpu").mkdir()
    plain = exposure(installed(tmp_path / "cpu", "inspector.service"))
    gpu = exposure(installed(tmp_path / "gpu", "inspector.service", GPU_DROP_IN))
    assert plain < gpu <= MAX_EXPOSURE  # the drop-in opens /dev/nvidia* and W+X memory: a little more exposed
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", "inspector.service"], cwd=tmp_path / "gpu",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and (out.stdout + out.stderr).strip() == "", out.stdout + out.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_no_secret_in_environment(unit: str) -> None:
    d = us.service_directives(ROOT / "config" / unit)
    everything = " ".join(v for values in d.values() for v in values)
    assert "REDIS_URL" not in " ".join(d.get("Environment", [])) and not re.search(r"://[^\s/]*:[^\s/]*@", everything)
    assert any(v.startswith("redis-url:") for v in d.get("LoadCredential", []))
    assert "0.0.0.0" not in " ".join(d.get("ExecStart", []))  # metrics on loopback unless an operator says so


# -- the worker under the unit's restrictions --------------------------------------------------------------------

@pytest.fixture(scope="module")
def sandbox_redis(tmp_path_factory: pytest.TempPathFactory):
    """A redis-server whose only users are an admin, worker-main, coils-main and screen-main as `inspector acl
    --config config/inspector.yaml` prints them (capture and previews on: the worker's user grants them)."""
    cfg = config.load(str(SHIPPED_CONFIG))
    folder = tmp_path_factory.mktemp("units-redis")
    (folder / "users.acl").write_text(
        f"user default on #{hashlib.sha256(b'admin-pw').hexdigest()} ~* &* +@all\n"
        + "".join(acl.role(name, cfg).aclfile_line(f"{name}-pw") + "\n" for name in ("worker", "coils", "screen")))
    server = PrivateRedis(extra=("--aclfile", str(folder / "users.acl")))
    server.start()
    yield server
    server.stop()


def run_in_unit(tmp_path: Path, server: PrivateRedis, engine: Path, backend: str, drop_in: Path | None = None,
                frames: int = 6) -> tuple[subprocess.CompletedProcess[str], int]:
    """`inspector run --burst` as config/inspector.service starts it, in the sandbox, its Redis URL (with the
    worker user's password) handed over as the unit's credential; returns the process and the events written."""
    admin = redis.Redis(port=server.port, password="admin-pw")
    admin.flushall()
    admin.acl_log_reset()
    feed(redis_adder(admin, "inspect:{main}:frames"), messages(synthetic_payloads(0, 2), "cam-u"), frames)
    files = [ROOT / "config" / "inspector.service", *([drop_in] if drop_in else [])]
    d = us.service_directives(*files)
    (argv,) = d["ExecStart"]
    exec_start = argv.split()
    assert exec_start[:2] == ["/opt/steel-inspector/.venv/bin/inspector", "run"]
    credential = tmp_path / "redis-url"
    credential.write_text(f"redis://worker-main:worker-pw@127.0.0.1:{server.port}/0\n")
    box = us.Sandbox(d, "inspector.service", read_only=PYTHON,
                     binds={str(ROOT): "/opt/steel-inspector", str(engine.resolve()): "/opt/engine"})
    # the venv's interpreter stands in for /opt/steel-inspector/.venv/bin/inspector (no venv in the checkout),
    # the package comes from the checkout bound at the unit's WorkingDirectory; the rest is ExecStart's
    # (a free metrics port: the unit's 9108 may be taken on a shared test machine)
    argv = [sys.executable, "-m", "inspector.cli", *exec_start[1:], "--burst", "--engine", "/opt/engine",
            "--backend", backend, "--device", "cpu", "--threads", "1", "--metrics-address", "127.0.0.1:0"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/opt/steel-inspector", "HOME": "/nonexistent"}
    try:
        out = box.run(argv, env, timeout=300, load_credentials={"redis-url": credential})
    finally:
        box.cleanup()
    return out, len(events(admin))


@pytest.mark.redis
@pytest.mark.skipif(us.available() is not None, reason=str(us.available()))
def test_worker_starts_under_the_unit_and_processes_frames(tmp_path, sandbox_redis, tiny_engine) -> None:
    out, n = run_in_unit(tmp_path, sandbox_redis, tiny_engine, "onnxruntime")  # ONNX Runtime: no drop-in
    assert out.returncode == 0, out.stderr[-3000:]
    assert n == 6 and "worker-pw" not in out.stderr + out.stdout
    # the shipped config turns capture (the on-demand set, SMEMBERS) and previews (SET ... EX) on: both granted
    admin = redis.Redis(port=sandbox_redis.port, password="admin-pw")
    assert admin.exists("inspect:{main}:frames:preview:cam-u") and admin.acl_log() == []


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.skipif(us.available() is not None, reason=str(us.available()))
def test_torch_on_cpu_needs_the_jit_drop_in(tmp_path, sandbox_redis, tiny_engine) -> None:
    """oneDNN's run-time kernels need W+X memory: refused under MemoryDenyWriteExecute=yes with the fix named
    (exit 78, no restart loop), served with config/inspector-jit.conf."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "jit").mkdir()
    out, n = run_in_unit(tmp_path / "plain", sandbox_redis, tiny_engine, "torch")
    assert out.returncode == 78 and n == 0, out.stderr[-3000:]
    assert "inspector-jit.conf" in out.stderr.strip().splitlines()[-1]
    out, n = run_in_unit(tmp_path / "jit", sandbox_redis, tiny_engine, "torch", JIT_DROP_IN)
    assert out.returncode == 0 and n == 6, out.stderr[-3000:]


@pytest.mark.redis
@pytest.mark.skipif(us.available() is not None, reason=str(us.available()))
def test_the_sandbox_holds(tmp_path) -> None:
    """What the worker runs under: no capabilities, read-only checkout, no W+X memory, no foreign sockets."""
    d = us.service_directives(ROOT / "config" / "inspector.service")
    box = us.Sandbox(d, "inspector.service", read_only=PYTHON, binds={str(ROOT): "/opt/steel-inspector"})
    script = ("import mmap, os, socket\n"
              "status = open('/proc/self/status').read()\n"
              "assert 'CapEff:\\t0000000000000000' in status and 'NoNewPrivs:\\t1' in status, status\n"
              "for probe in (lambda: open('README.md', 'a'), lambda: mmap.mmap(-1, 4096, prot=7),\n"
              "              lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW),\n"
              "              lambda: os.setpriority(os.PRIO_PROCESS, 0, 5), lambda: os.listdir('/root/.ssh')):\n"
              "    try:\n        probe()\n    except OSError:\n        continue\n"
              "    raise SystemExit(f'allowed: {probe}')\n"
              "print(os.getuid(), open(os.environ['CREDENTIALS_DIRECTORY'] + '/redis-url').read())\n")
    try:
        out = box.run([sys.executable, "-c", script], {"PATH": "/usr/bin:/bin"}, timeout=60)
    finally:
        box.cleanup()
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["65534", "redis://127.0.0.1:6379/0"]  # SetCredential='s default


@pytest.mark.skipif(us.available() is not None, reason=str(us.available()))
def test_the_engine_libraries_get_every_thread_in_the_sandbox() -> None:
    """The system-call filter must not cost throughput: torch sizes its intra-op pool from what it may pin (the
    unit re-allows sched_setaffinity for that; without it, one thread), and ONNX Runtime finds the CPU's features."""
    script = "import torch; print(torch.get_num_threads()); import onnxruntime"
    outside = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    d = us.service_directives(ROOT / "config" / "inspector.service")
    box = us.Sandbox(d, "inspector.service", read_only=PYTHON, binds={str(ROOT): "/opt/steel-inspector"})
    try:
        inside = box.run([sys.executable, "-c", script], {"PATH": "/usr/bin:/bin"}, timeout=120)
    finally:
        box.cleanup()
    assert inside.returncode == 0 and inside.stdout == outside.stdout, inside.stderr[-2000:]
    assert "cpuinfo" not in inside.stderr  # ORT: "Failed to initialize PyTorch cpuinfo library" when /proc is cut


@pytest.mark.redis
@pytest.mark.skipif(us.available() is not None, reason=str(us.available()))
def test_line_service_starts_under_its_unit_and_writes_a_report(tmp_path, sandbox_redis) -> None:
    """config/inspector-coils.service: `inspector coils --burst` as its ExecStart runs it, as coils-main, writing
    only below its ReadWritePaths= (a test folder stands in for /opt/steel-inspector/reports)."""
    from test_line_redis import acceptance_coil, entries

    admin = redis.Redis(port=sandbox_redis.port, password="admin-pw")
    admin.flushall()
    acceptance_coil(admin)
    (ROOT / "reports").mkdir(exist_ok=True)  # the mount point, as the unit's WorkingDirectory has it (git-ignored)
    reports = tmp_path / "reports"
    reports.mkdir()
    d = us.service_directives(ROOT / "config" / "inspector-coils.service")
    (exec_start,) = d["ExecStart"]
    credential = tmp_path / "redis-url"
    credential.write_text(f"redis://coils-main:coils-pw@127.0.0.1:{sandbox_redis.port}/0\n")
    box = us.Sandbox(d, "inspector-coils.service", read_only=PYTHON, binds={str(ROOT): "/opt/steel-inspector"},
                     writable={"/opt/steel-inspector/reports": str(reports)})
    argv = [sys.executable, "-m", "inspector.cli", *exec_start.split()[1:], "--burst", "--metrics-address",
            "127.0.0.1:0"]
    try:
        out = box.run(argv, {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/opt/steel-inspector"}, timeout=300,
                      load_credentials={"redis-url": credential})
    finally:
        box.cleanup()
    assert out.returncode == 0, out.stderr[-3000:]
    (report,) = entries(admin)
    assert report["coil"] == "C-ACC" and (reports / "C-ACC.json").exists() and (reports / "C-ACC.png").exists()
    assert admin.acl_log() == []


@pytest.mark.redis
@pytest.mark.skipif(us.available() is not None, reason=str(us.available()))
def test_screen_starts_under_its_unit_and_serves_its_page(tmp_path, sandbox_redis) -> None:
    """config/inspector-screen.service: `inspector screen` as its ExecStart runs it, as screen-main, with no
    writable path; its page answers on loopback with the line's state, its one alarm (no worker: worker-not-ready)
    written by its user, nothing refused."""
    import json
    import socket
    import urllib.request

    from conftest import wait_for

    admin = redis.Redis(port=sandbox_redis.port, password="admin-pw")
    admin.flushall()
    admin.acl_log_reset()
    d = us.service_directives(ROOT / "config" / "inspector-screen.service")
    assert "ReadWritePaths" not in d and "StateDirectory" not in d  # it writes no file
    (exec_start,) = d["ExecStart"]
    assert exec_start.split()[1:2] == ["screen"] and "--address 127.0.0.1:8090" in exec_start
    with socket.socket() as s:  # a free port for the unit's 8090 (which may be taken on a shared test machine)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    credential = tmp_path / "redis-url"
    credential.write_text(f"redis://screen-main:screen-pw@127.0.0.1:{sandbox_redis.port}/0\n")
    box = us.Sandbox(d, "inspector-screen.service", read_only=PYTHON, binds={str(ROOT): "/opt/steel-inspector"})
    argv = [sys.executable, "-m", "inspector.cli", *exec_start.split()[1:], "--address", f"127.0.0.1:{port}"]
    bpf = box.work / "filter.bpf"
    fd = os.open(bpf, os.O_RDONLY) if us.seccomp_filter(box.directives, bpf) else None
    proc = subprocess.Popen(box.command(argv, {"redis-url": credential}, fd), umask=int(us.last(d, "UMask"), 8),
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "/opt/steel-inspector"},
                            pass_fds=(fd,) if fd is not None else (), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def state() -> dict | None:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=5) as reply:
                return json.loads(reply.read())
        except OSError:
            return None

    try:
        wait_for(lambda: (state() or {}).get("alarms"), 120, "the screen's page with its alarm")
        page = state()
        assert page["line"] == "main" and [a["id"] for a in page["alarms"]] == ["worker-not-ready"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            assert reply.status == 200
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
        if fd is not None:
            os.close(fd)
        box.cleanup()
    assert admin.hkeys("inspect:{main}:alarms:active") == [b"worker-not-ready"] and admin.acl_log() == []
    assert "screen-pw" not in err
