"""The line service against a real, private redis-server: events written as the worker writes them (the events
stream is its input: a contract tested as data), coil ends as the tracking system sends them."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import redis
import yaml
from conftest import ROOT, wait_for

from inspector import config
from inspector.line import report as reporting
from inspector.line import synth
from inspector.line.records import pack_end
from inspector.line.service import LineService

pytestmark = pytest.mark.redis
ROLL = 1884.96


def line_config(url: str, reports: Path, **coils: object) -> dict:
    return {"redis": {"url": url},
            "line": {"cameras": {"top-1": {"surface": "top", "x_offset_mm": 0.0},
                                 "top-2": {"surface": "top", "x_offset_mm": 1590.0}},
                     "rolls_mm": {"work-top": ROLL}, "end_grace_s": 0.0},
            "coils": {"reports_dir": str(reports), "close_every_s": 0.05, **coils}}


def acceptance_coil(client: redis.Redis, name: str = "C-ACC") -> None:
    """Two cameras, 40 frames each (256 mm), a class 1 roll mark on top-1 at the work roll's pitch (one repeat
    in a rejected frame), top-2's frames 10-12 missing, top-1's frames 20-21 rejected, a class 3 defect across
    the seam (frame 5), a class 2 defect across top-2's frames 30/31, one class 4 and one class 3 alone."""
    marks = {int((1500 + k * ROLL) // 256): round(1500 + k * ROLL) for k in range(5)}  # frame -> y mm
    pipe = client.pipeline(transaction=False)
    for k in range(40):
        pos = k * 256.0
        for cam in ("top-1", "top-2"):
            boxes: list[synth.Box] = []
            if cam == "top-2" and k in (10, 11, 12):
                continue  # never reached the stream
            if cam == "top-1" and k in (20, 21):
                pipe.xadd("inspect:{main}:events", synth.event(cam, name, pos, status="rejected", seq=k, error="bad"))
                continue
            if cam == "top-1" and k in marks:
                boxes.append((1, 394, marks[k] - k * 256 - 6, 12, 12))
            if k == 5:
                boxes.append((3, 1580, 100, 20, 30) if cam == "top-1" else (3, 0, 100, 20, 30))
            if cam == "top-2" and k == 30:
                boxes.append((2, 800, 236, 10, 20))
            if cam == "top-2" and k == 31:
                boxes.append((2, 800, 0, 10, 30))
            if cam == "top-1" and k == 3:
                boxes.append((4, 1000, 50, 30, 30))
            if cam == "top-2" and k == 35:
                boxes.append((3, 100, 100, 8, 8))
            pipe.xadd("inspect:{main}:events", synth.event(cam, name, pos, boxes, seq=k))
    pipe.xadd("inspect:{main}:coil-ends", pack_end(name, 40 * 256.0))
    pipe.execute()


def entries(client: redis.Redis) -> list[dict]:
    return [msgpack.unpackb(f[b"c"], raw=False) for _, f in client.xrange("inspect:{main}:coils")]


def burst(cfg_dict: dict) -> LineService:
    service = LineService(config.from_dict(cfg_dict))
    service.run(burst=True, handle_signals=False)
    service.close()
    return service


def test_a_synthetic_coil_gives_the_expected_report(redis_url, tmp_path) -> None:
    client = redis.Redis.from_url(redis_url)
    acceptance_coil(client)
    burst(line_config(redis_url, tmp_path))
    (e,) = entries(client)
    assert e["coil"] == "C-ACC" and e["length_mm"] == 10240.0 and e["closed_by"] == "coil-end"
    assert e["defects"] == {"1": 4, "2": 1, "3": 2, "4": 1}  # seam and frame-boundary defects counted once each
    assert e["coverage"] == {"top-1": round(1 - 512 / 10240, 4), "top-2": round(1 - 768 / 10240, 4)}
    assert e["gaps_mm"] == {"top-1": [[5120.0, 5632.0]], "top-2": [[2560.0, 3328.0]]}
    assert e["frames"] == {"top-1": {"ok": 38, "rejected": 2}, "top-2": {"ok": 37, "rejected": 0}}
    (mark,) = e["periodic"]
    assert mark["roll"] == "work-top" and mark["class_id"] == 1 and mark["surface"] == "top"
    assert mark["repeats"] == 4 and abs(mark["pitch_mm"] - ROLL) < 1 and mark["x_mm"] == 400.0
    assert mark["first_mm"] == 1500.0
    assert e["grade"] == "hold" and "periodic marks: 1 > 0" in e["decided_by"]
    doc = json.loads((tmp_path / "C-ACC.json").read_text())
    rows = [dict(zip(doc["defect_fields"], r, strict=True)) for r in doc["defect_rows"]]
    seam = [r for r in rows if r["class_id"] == 3 and r["parts"] == 2]
    assert len(seam) == 1 and (seam[0]["x0_mm"], seam[0]["x1_mm"]) == (1580.0, 1610.0)
    boundary = [r for r in rows if r["class_id"] == 2]
    assert len(boundary) == 1 and (boundary[0]["y0_mm"], boundary[0]["y1_mm"]) == (7916.0, 7966.0)
    assert e["report"] == str(tmp_path / "C-ACC")
    assert (tmp_path / "C-ACC.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "C-ACC.html").read_text()
    assert "work-top" in page and "data:image/png;base64," in page and "http" not in page  # self-contained
    assert client.zcard("inspect:{main}:line:open") == 0 and not client.exists("inspect:{main}:line:log:C-ACC")
    meta = "inspect:{main}:line:meta:C-ACC"
    assert client.hget(meta, b"status") == b"done" and client.ttl(meta) > 0


def files(folder: Path) -> dict[str, object]:
    """The report files without their timestamps (closed_ts and the entry id live in the JSON and the HTML)."""
    out: dict[str, object] = {}
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        doc.pop("closed_ts"), doc.pop("report_id")
        doc["report"] = Path(doc["report"]).name
        out[path.name] = doc
    for path in sorted(folder.glob("*.png")):
        out[path.name] = path.read_bytes()
    return out


def comparable(items: list[dict]) -> dict[str, bytes]:
    out = {}
    for e in items:
        e = {k: v for k, v in e.items() if k != "closed_ts"}
        e["report"] = Path(e["report"]).name
        assert e["coil"] not in out, f"two reports for coil {e['coil']}"
        out[e["coil"]] = msgpack.packb(e)
    return out


def test_a_crash_between_the_close_and_the_files_rewrites_the_same_files(redis_url, tmp_path) -> None:
    client = redis.Redis.from_url(redis_url)
    acceptance_coil(client)
    burst(line_config(redis_url, tmp_path / "clean"))
    clean_entries, clean_files = comparable(entries(client)), files(tmp_path / "clean")
    client.flushall()
    acceptance_coil(client)
    cfg = config.from_dict(line_config(redis_url, tmp_path / "crashed"))
    service = LineService(cfg)  # fold everything, then close as the loop does, and "crash" before the files
    while service.step():
        pass
    state = service.store.state("C-ACC")
    rep = reporting.build(state, cfg, "coil-end")
    assert isinstance(service.store.close(state, reporting.entry(rep, 1.0), None, 1.0, "coil-end"), str)
    assert not (tmp_path / "crashed").exists() and client.smembers("inspect:{main}:line:unwritten") == {b"C-ACC"}
    service.close()
    burst(line_config(redis_url, tmp_path / "crashed"))  # the restart
    assert comparable(entries(client)) == clean_entries and files(tmp_path / "crashed") == clean_files
    assert client.scard("inspect:{main}:line:unwritten") == 0


def many_coils(client: redis.Redis, coils: int = 12) -> None:
    cams = config.from_dict({"line": line_config("redis://x", Path("."))["line"]}).line.cameras
    for i in range(coils):
        pipe = client.pipeline(transaction=False)
        mark = synth.Mark(1 + i % 4, 300.0 + 50 * i, ROLL, 200.0 + 10 * i)
        for fields in synth.coil(f"K{i:03d}", cams, 30, defects_per_frame=3, seed=i, mark=mark):
            pipe.xadd("inspect:{main}:events", fields)
        pipe.xadd("inspect:{main}:coil-ends", pack_end(f"K{i:03d}", 30 * 256.0))
        pipe.execute()


def coils_cmd(cfg_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "inspector.cli", "coils", "--config", str(cfg_path), *extra]


@pytest.mark.slow
def test_sigkilled_five_times_and_two_replicas_give_the_same_reports_once_each(redis_url, tmp_path) -> None:
    client = redis.Redis.from_url(redis_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    many_coils(client)
    burst(line_config(redis_url, tmp_path / "clean"))
    clean = comparable(entries(client))
    clean_files = files(tmp_path / "clean")
    assert len(clean) == 12 and sum(bool(e["periodic"]) for e in entries(client)) >= 10  # marks found

    client.flushall()
    many_coils(client)
    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(yaml.safe_dump(line_config(redis_url, tmp_path / "killed")))
    rng = random.Random(5)
    for kill in range(5):
        proc = subprocess.Popen(coils_cmd(cfg_path, "--worker-id", "7"), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        target = 2 * kill + 1

        def reported(p: subprocess.Popen = proc, t: int = target) -> bool:
            return client.xlen("inspect:{main}:coils") >= t or p.poll() is not None

        wait_for(reported, what="reports")
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere in a fold, a close or the files
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert client.xlen("inspect:{main}:coils") < 12  # killed with coils still open
    subprocess.run(coils_cmd(cfg_path, "--worker-id", "7", "--burst"), env=env, check=True, timeout=300,
                   capture_output=True)
    assert comparable(entries(client)) == clean and files(tmp_path / "killed") == clean_files

    client.flushall()
    many_coils(client)
    cfg_path = tmp_path / "replicas.yaml"
    cfg_path.write_text(yaml.safe_dump(line_config(redis_url, tmp_path / "replicas")))
    replicas = [subprocess.Popen(coils_cmd(cfg_path, "--worker-id", str(i)), env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for i in (1, 2)]
    wait_for(lambda: client.xlen("inspect:{main}:coils") >= 12 and client.scard("inspect:{main}:line:unwritten") == 0,
             what="all reports")
    for proc in replicas:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert comparable(entries(client)) == clean and files(tmp_path / "replicas") == clean_files
    stats = "inspect:{main}:line:stats:" + os.uname().nodename
    folded = [int(client.hget(f"{stats}-coils-{i}", "folded") or 0) for i in (1, 2)]
    assert sum(folded) == client.xlen("inspect:{main}:events")  # every event folded once, by one replica or the other


def test_hostile_events_and_unknown_cameras_are_counted_never_a_crash(redis_url, tmp_path, caplog) -> None:
    client = redis.Redis.from_url(redis_url)
    hostile = [{b"e": b"\xc1 not msgpack"}, {b"x": b"1"},
               {b"e": msgpack.packb({"coil": "x" * 100_000, "camera": "top-1", "status": "ok", "pos_mm": 0.0})},
               {b"e": msgpack.packb({"coil": 7, "camera": "top-1", "status": "ok", "pos_mm": 0.0})},
               {b"e": msgpack.packb({"coil": "H1", "camera": "top-1", "status": "ok", "pos_mm": -5.0})},
               {b"e": msgpack.packb({"coil": "H1", "camera": ["top-1"], "status": "ok", "pos_mm": 1.0})}]
    for fields in hostile:
        client.xadd("inspect:{main}:events", fields)
    for k in range(3):
        client.xadd("inspect:{main}:events", synth.event("cam-x", "H1", k * 256.0, [(1, 5, 5, 5, 5)], seq=k))
    client.xadd("inspect:{main}:events", synth.event("top-1", "H1", 0.0, [(1, 5, 5, 5, 5)]))
    client.xadd("inspect:{main}:events", synth.event("top-1", "H1", None))  # no position: counted, not placed
    client.xadd("inspect:{main}:coil-ends", {b"c": b"garbage"})
    client.xadd("inspect:{main}:coil-ends", pack_end("y" * 65, 1.0))
    client.xadd("inspect:{main}:coil-ends", pack_end("H1", 256.0))
    with caplog.at_level(logging.WARNING, logger="inspector.line.service"):
        service = burst(line_config(redis_url, tmp_path))
    s = service.stats.snapshot()
    assert s["bad_events"] == len(hostile) and s["unknown_camera"] == 3 and s["bad_coil_ends"] == 2
    assert sum("'cam-x'" in r.getMessage() for r in caplog.records) == 1  # logged once per camera
    (e,) = entries(client)
    assert e["coil"] == "H1" and e["unknown_camera_events"] == 3 and e["unplaced_events"] == 1
    assert e["defects"]["1"] == 1 and e["length_mm"] == 256.0
    assert client.xpending("inspect:{main}:events", "coils")["pending"] == 0


def test_a_coil_closes_when_idle_once_its_cameras_moved_on(redis_url, tmp_path) -> None:
    client = redis.Redis.from_url(redis_url)
    for k in range(3):
        client.xadd("inspect:{main}:events", synth.event("top-1", "I1", k * 256.0, seq=k))
    client.xadd("inspect:{main}:events", synth.event("top-2", "I1", 0.0))
    client.xadd("inspect:{main}:events", synth.event("top-1", "I2", 0.0, seq=3))  # top-1 moved on, top-2 not yet
    cfg = config.from_dict({**line_config(redis_url, tmp_path), "line": {
        **line_config(redis_url, tmp_path)["line"], "coil_idle_s": 0.05}})
    service = LineService(cfg)
    for _ in range(20):
        service.step()
    assert client.xlen("inspect:{main}:coils") == 0  # idle, but top-2 is still on I1
    client.xadd("inspect:{main}:events", synth.event("top-2", "I2", 0.0, seq=1))
    wait_for(lambda: service.step() is not None and client.xlen("inspect:{main}:coils") == 1, what="idle close")
    (e,) = entries(client)
    assert e["coil"] == "I1" and e["closed_by"] == "idle" and e["length_mm"] == 768.0
    service.close()
