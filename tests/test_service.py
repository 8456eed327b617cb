"""What the admin and the vision engineer see: /metrics, /healthz, /readyz, the systemd notify protocol, and
engine swaps without a stop, each against a running worker, real Redis and real HTTP / unix sockets."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from conftest import engines_folder, events, make_cfg, wait_for, worker_cmd

from inspector import engines
from inspector.feed import feed, messages, redis_adder, synthetic_payloads
from inspector.health import Health, app, serve
from inspector.io.redis_server import PrivateRedis, free_port
from inspector.metrics import Metrics
from inspector.notify import Notifier
from inspector.pipeline import from_config
from trainer.build_engine import switch_current

pytestmark = pytest.mark.redis


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str) -> float:
    """The value of one sample line `name value` (labels included in `name`)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_scraped_from_a_running_worker(redis_url, tiny_engine, worker_env) -> None:
    client = redis.Redis.from_url(redis_url)
    port = free_port()
    worker = subprocess.Popen(worker_cmd(redis_url, tiny_engine, "--metrics-address", f"127.0.0.1:{port}"),
                              env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        feed(redis_adder(client, "inspect:{main}:frames"), messages(synthetic_payloads(0, 4), "cam-m"), 8)
        wait_for(lambda: client.xlen("inspect:{main}:events") >= 8, what="first events")
        wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, what="ready")
        first = get(f"http://127.0.0.1:{port}/metrics")[1]
        feed(redis_adder(client, "inspect:{main}:frames"), messages(synthetic_payloads(0, 4), "cam-m", 8), 8)
        wait_for(lambda: client.xlen("inspect:{main}:events") >= 16, what="more events")
        second = get(f"http://127.0.0.1:{port}/metrics")[1]
        assert metric(first, "inspector_frames_total") == 8 and metric(second, "inspector_frames_total") == 16
        assert metric(second, 'inspector_events_total{status="ok"}') == 16
        assert metric(second, "inspector_latency_seconds_count") == 16
        assert metric(second, 'inspector_stage_seconds_count{stage="infer"}') > 0
        for name in ("inspector_group_lag", "inspector_group_pending", "inspector_batch_size_bucket",
                     "inspector_engine_fps", "inspector_engine_info", "inspector_reconnects_total",
                     "inspector_fenced_out_total", "inspector_dead_letters_total", "inspector_redis_up"):
            assert name in second, name
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_readyz_before_engine_and_while_redis_is_down(tiny_engine) -> None:
    server = PrivateRedis()
    url = server.start()
    health, metrics = Health(live_timeout_s=5), Metrics()
    http = serve(("127.0.0.1", 0), app(health, metrics.wsgi()))
    ready = f"http://127.0.0.1:{http.server_port}/readyz"
    try:
        assert get(ready) == (503, "engine not loaded\n")
        pipe = from_config(make_cfg(url, tiny_engine, redis__socket_timeout_s=1.0), health=health, metrics=metrics)
        runner = threading.Thread(target=pipe.run, kwargs={"handle_signals": False}, daemon=True)
        runner.start()
        wait_for(lambda: get(ready)[0] == 200, what="ready")
        server.halt()
        wait_for(lambda: get(ready)[0] == 503, timeout=30, what="not ready while Redis is down")
        assert "redis" in get(ready)[1]
        server.start()
        wait_for(lambda: get(ready)[0] == 200, timeout=30, what="ready again")
        pipe.stop()
        runner.join(60)
        pipe.close()
    finally:
        http.shutdown()
        server.stop()


def test_systemd_notify_ready_watchdog_and_pings_stop_when_stuck(redis_url, tiny_engine, tmp_path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    got: list[tuple[float, str]] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                got.append((time.monotonic(), sock.recv(4096).decode()))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})  # ping every 0.1 s
    cfg = make_cfg(redis_url, tiny_engine, metrics__live_timeout_s=1.0, redis__socket_timeout_s=30.0)
    pipe = from_config(cfg, notifier=notifier)
    runner = threading.Thread(target=pipe.run, kwargs={"handle_signals": False}, daemon=True)
    runner.start()
    try:
        wait_for(lambda: any("READY=1" in m for _, m in got), what="READY=1")
        wait_for(lambda: sum("WATCHDOG=1" in m for _, m in got) >= 3, what="watchdog pings")
        client = redis.Redis.from_url(redis_url)
        client.execute_command("CLIENT", "PAUSE", "4000", "ALL")  # every Redis call of the worker hangs
        paused = time.monotonic()
        time.sleep(3.5)
        during = [t for t, m in got if "WATCHDOG=1" in m and paused + 1.5 < t < paused + 3.5]
        assert during == []  # the loops made no progress for over live_timeout_s: no pings
        wait_for(lambda: any("WATCHDOG=1" in m and t > paused + 4 for t, m in got), timeout=20,
                 what="pings to resume")
        pipe.stop()
        runner.join(60)
        assert any("STOPPING=1" in m for _, m in got)
    finally:
        stop.set()
        listener.join()
        sock.close()
        pipe.close()


@pytest.fixture
def two_engines(tmp_path, tiny_engine, tiny_engine_b) -> tuple[Path, str, str]:
    """An engines folder holding both tiny engines, `current` -> the first."""
    root, (a, b) = engines_folder(tmp_path / "engines", tiny_engine, tiny_engine_b)
    switch_current(root, a)
    return root, engines.load(root / a).manifest.engine_id, engines.load(root / b).manifest.engine_id


def test_engine_swap_under_load_and_a_corrupt_engine_refused(redis_url, two_engines) -> None:
    root, first, second = two_engines
    client = redis.Redis.from_url(redis_url)
    metrics = Metrics()
    # ungated tiny engines: this test is about the swap itself (the gate's refusal: tests/test_gate.py)
    cfg = make_cfg(redis_url, root / "current", engine__watch_every_s=0.2, engine__require_gate=False)
    pipe = from_config(cfg, metrics=metrics)
    runner = threading.Thread(target=pipe.run, kwargs={"handle_signals": False}, daemon=True)
    total = 240
    camera = threading.Thread(target=feed, args=(redis_adder(client, "inspect:{main}:frames"),
                                                 messages(synthetic_payloads(0, 4), "cam-s"), total, 60.0))
    runner.start()
    camera.start()
    try:
        wait_for(lambda: client.xlen("inspect:{main}:events") >= 40, what="events from the first engine")
        old_backend = pipe.engine.backend
        switch_current(root, second)
        wait_for(lambda: pipe.engine.model_id == second, what="the swap")
        wait_for(lambda: not old_backend.active, what="the old engine released")
        broken = root / "broken"
        shutil.copytree(root / second, broken)
        (broken / "model.onnx").write_bytes(b"not an onnx file")
        switch_current(root, "broken")
        wait_for(lambda: pipe.stats.counters["engine_swaps_refused"] == 1, what="the refusal")
        camera.join()
        wait_for(lambda: client.xlen("inspect:{main}:events") >= total, what="every event")
    finally:
        pipe.stop()
        runner.join(60)
        pipe.close()
    got = events(client)
    models = [e["model"] for e in got]
    ids = [e["frame_id"] for e in got]
    assert len(ids) == total and len(set(ids)) == total  # 0 lost, 0 duplicated
    switch_at = models.index(second)
    assert set(models[:switch_at]) == {first} and set(models[switch_at:]) == {second}  # one switch point
    assert pipe.engine.model_id == second  # the broken one never served
    scraped = metrics.registry.get_sample_value("inspector_engine_swaps_total", {"result": "refused"})
    assert scraped == 1 and metrics.registry.get_sample_value("inspector_engine_swaps_total", {"result": "done"}) == 1
