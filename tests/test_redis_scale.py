"""Running for months beside a mill: a bounded frames stream, several workers, outages, hostile input and the
operator's mistakes, each against real private redis-servers."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import redis
from click.testing import CliRunner
from conftest import assert_names_problem, drain, events, make_cfg, wait_for, worker_cmd

from inspector import config
from inspector.decode import encode
from inspector.feed import feed, messages, redis_adder, synthetic_payloads
from inspector.io.base import Outcome
from inspector.io.redis_server import PrivateRedis
from inspector.io.redis_streams import RedisStreams
from inspector.pipeline import from_config
from inspector.protocol import FRAME_FIELD, Event, FrameMessage

pytestmark = pytest.mark.redis


def add_frames(client: redis.Redis, n: int, camera: str = "cam", start_seq: int = 0, skip: set[int] = frozenset(),
               key: str = "inspect:{main}:frames") -> list[str]:
    """n synthetic gray8 frames with seq start_seq.., leaving out the seqs in `skip`; returns their entry ids."""
    ids: list[str] = []
    for msg in messages(synthetic_payloads(0, 4), camera, start_seq):
        if len(ids) == n:
            return ids
        if msg.seq not in skip:
            ids.append(client.xadd(key, {FRAME_FIELD: msg.pack()}).decode())
    return ids


# -- bounded frames stream --------------------------------------------------------------------------------------

def test_acked_frames_removed_a_second_groups_unread_frames_kept(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create("inspect:{main}:frames", "archive", id="0", mkstream=True)  # another system's group
    ids = add_frames(client, 10)
    drain(from_config(make_cfg(redis_url, tiny_engine)))
    assert len(events(client)) == 10 and client.xlen("inspect:{main}:frames") == 10  # archive has read nothing yet
    archived = client.xreadgroup("archive", "a1", {"inspect:{main}:frames": ">"}, count=5)[0][1]
    client.xack("inspect:{main}:frames", "archive", *[i for i, _ in archived[:3]])  # acks 3, keeps 2 pending
    ids += add_frames(client, 1, start_seq=10)
    drain(from_config(make_cfg(redis_url, tiny_engine)))
    left = [i.decode() for i, _ in client.xrange("inspect:{main}:frames")]
    assert left == ids[3:]  # the first pending entry of `archive` and everything after it stay
    client.xgroup_destroy("inspect:{main}:frames", "archive")
    ids += add_frames(client, 1, start_seq=11)
    drain(from_config(make_cfg(redis_url, tiny_engine)))
    assert client.xlen("inspect:{main}:frames") == 0 and len(events(client)) == 12


def test_own_group_trim_and_retention(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create("inspect:{main}:frames", "archive", id="0", mkstream=True)
    add_frames(client, 6)
    drain(from_config(make_cfg(redis_url, tiny_engine, redis__frames_retention_s=3600.0)))
    assert client.xlen("inspect:{main}:frames") == 6  # kept for an hour, whatever the groups did
    add_frames(client, 2, start_seq=6)
    drain(from_config(make_cfg(redis_url, tiny_engine, redis__frames_trim="own_group")))
    assert client.xlen("inspect:{main}:frames") == 0  # ours acked them: archive's unread frames go (on purpose)
    add_frames(client, 2, start_seq=8)
    drain(from_config(make_cfg(redis_url, tiny_engine, redis__frames_trim="off")))
    assert client.xlen("inspect:{main}:frames") == 2


def test_pending_frames_are_never_trimmed(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    ids = add_frames(client, 8)
    cfg = make_cfg(redis_url, tiny_engine)
    holder = RedisStreams(config.replace(cfg, redis={"consumer": "holder"}).redis)
    holder.heartbeat()
    held = holder.read(2, None)  # a live worker holds the first two
    drain(from_config(cfg))
    assert [i.decode() for i, _ in client.xrange("inspect:{main}:frames")] == ids  # nothing before a pending entry goes
    holder.publish([Outcome(e, b"e", None) for e in held])
    assert client.xlen("inspect:{main}:frames") == 0


# -- tools never touch production keys ---------------------------------------------------------------------------

def test_bench_and_demo_leave_production_keys_alone(redis_url, tiny_engine) -> None:
    from inspector import demo
    from inspector.cli import main

    client = redis.Redis.from_url(redis_url)
    add_frames(client, 5)
    client.xgroup_create("inspect:{main}:frames", "inspectors", id="0")
    client.xreadgroup("inspectors", "plant-worker", {"inspect:{main}:frames": ">"}, count=2)
    client.xadd("inspect:{main}:events", {"e": b"downstream's"})
    before = {k: client.dump(k) for k in client.keys("*")}
    groups = client.xinfo_groups("inspect:{main}:frames")
    result = CliRunner().invoke(main, ["bench", "--redis", "--redis-url", redis_url, "--engine", str(tiny_engine),
                                       "--frames", "8", "--batch-size", "4", "--json"])
    assert result.exit_code == 0, result.output
    cfg = config.load(None, redis_url, engine__path=str(tiny_engine), batching__batch_size=4)
    summary = demo.run(cfg, fps=8, seconds=3, out=lambda line: None, every_s=1.0)
    assert sum(summary.status.values()) > 0
    assert {k: client.dump(k) for k in client.keys("*")} == before  # same keys, same contents
    assert client.xinfo_groups("inspect:{main}:frames") == groups


# -- several workers -------------------------------------------------------------------------------------------

def test_gap_confirmed_once_when_published_out_of_order(redis_url, tiny_engine) -> None:
    """Three workers read consecutive batches and publish them in reverse: no false gap, each real one once."""
    client = redis.Redis.from_url(redis_url)
    add_frames(client, 12, skip={5})  # seqs 0..12 without 5
    cfg = make_cfg(redis_url, tiny_engine)
    workers = [RedisStreams(config.replace(cfg, redis={"consumer": f"w{i}"}).redis) for i in range(3)]
    for w in workers:
        w.heartbeat()
    batches = [w.read(4, None) for w in workers]
    reported = []
    for w, batch in reversed(list(zip(workers, batches, strict=True))):
        outs = [Outcome(e, Event("", e.id, "cam", m.seq, 0, 0, "m", "ok").pack(), None, "cam", m.seq)
                for e in batch for m in [FrameMessage(**msgpack.unpackb(e.fields[FRAME_FIELD]))]]
        reported += w.publish(outs).gaps
    assert [(g.after, g.before, g.missing) for g in reported] == [(4, 6, 1)]
    assert client.hget("inspect:{main}:frames:camera:inspectors:cam", "gaps") == b"1"


@pytest.mark.slow
def test_three_workers_report_exactly_the_real_gaps(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    skip = {50, 120, 121, 122}  # two real gaps: 1 frame, then 3 frames
    add_frames(client, 196, skip=skip)
    pipes = [from_config(make_cfg(redis_url, tiny_engine, consumer=f"worker-{i}", batching__decode_threads=0))
             for i in range(3)]
    threads = [threading.Thread(target=p.run, kwargs={"handle_signals": False}, daemon=True) for p in pipes]
    for t in threads:
        t.start()
    wait_for(lambda: client.xlen("inspect:{main}:events") >= 196, what="196 events")
    for p in pipes:
        p.stop()
    for t in threads:
        t.join(60)
    assert sum(p.stats.counters["seq_gaps"] for p in pipes) == 4
    assert client.hget("inspect:{main}:frames:camera:inspectors:cam", "gap_runs") == b"2"
    assert sum(p.stats.counters["frames"] for p in pipes) == 196
    assert all(p.stats.counters["frames"] > 0 for p in pipes)  # all three did work


@pytest.mark.slow
def test_three_workers_with_random_sigkills_one_event_per_frame(redis_url, tiny_engine, worker_env, tmp_path) -> None:
    cfg_file = tmp_path / "w.yaml"
    cfg_file.write_text("redis:\n  heartbeat_ttl_ms: 1000\n  claim_every_s: 0.2\n  block_ms: 100\n")
    client = redis.Redis.from_url(redis_url)
    total = 400
    rng = random.Random(0)

    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen(worker_cmd(redis_url, tiny_engine, "--config", str(cfg_file), "--worker-id", str(i)),
                                env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    workers = [start(i) for i in range(3)]
    feeder = threading.Thread(target=feed, args=(redis_adder(client, "inspect:{main}:frames"),
                                                 messages(synthetic_payloads(0, 4), "cam-x"), total, 40.0))
    feeder.start()
    kills = 0
    try:
        wait_for(lambda: client.xlen("inspect:{main}:events") >= 10, what="first events")
        while kills < 10:
            time.sleep(rng.uniform(0.5, 2.0))
            i = rng.randrange(3)
            workers[i].send_signal(signal.SIGKILL)
            workers[i].wait()
            kills += 1
            workers[i] = start(i)
        feeder.join()
        wait_for(lambda: len({e["frame_id"] for e in events(client)}) >= total, timeout=240, what="all events",
                 every=0.5)
        wait_for(lambda: client.xpending("inspect:{main}:frames", "inspectors")["pending"] == 0, timeout=60,
                 what="nothing pending")
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
    ids = [e["frame_id"] for e in events(client)]
    assert kills == 10 and len(ids) == total and len(set(ids)) == total  # every frame once, none twice
    assert all(e["status"] == "ok" for e in events(client))


def test_crash_while_recovering_never_dead_letters_a_good_frame(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    add_frames(client, 20)
    cfg = make_cfg(redis_url, tiny_engine)
    RedisStreams(cfg.redis).read(12, None)  # a worker reads 12 frames and is killed
    for _ in range(4):  # restarted four times, killed each time half-way through re-reading its pending list
        restarted = RedisStreams(cfg.redis)
        restarted.read(4, None)
        restarted.read(4, None)
    drain(from_config(cfg))
    got = events(client)
    assert len(got) == 20 and all(e["status"] == "ok" for e in got)
    assert client.xlen("inspect:{main}:frames:dead") == 0


# -- hostile input -------------------------------------------------------------------------------------------

def packed(**over: object) -> dict[bytes, bytes]:
    body = {"id": "x", "camera": "cam-h", "seq": 1, "ts": time.time(), "height": 256, "width": 1600,
            "encoding": "gray8", "data": bytes(256 * 1600)}
    body.update(over)
    return {FRAME_FIELD: msgpack.packb(body, use_bin_type=True)}


def png_header(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + b"\x00" * 20)


def jpeg_header(width: int, height: int) -> bytes:
    import struct

    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\xff\xc0\x00\x0b\x08" \
        + struct.pack(">HH", height, width) + b"\x01\x01\x11\x00" + b"\xff\xd9"


def hostile_entries() -> dict[str, dict[bytes, bytes]]:
    import cv2

    gray = (np.random.default_rng(0).random((256, 1600)) * 255).astype(np.uint8)
    colour = cv2.imencode(".png", np.stack([gray] * 3, axis=2).astype(np.uint16) * 256)[1].tobytes()
    return {
        "empty jpeg": packed(encoding="jpeg", data=b""),
        "empty png": packed(encoding="png", data=b""),
        "png declaring 20000x20000": packed(encoding="png", data=png_header(20000, 20000)),
        "jpeg declaring 20000x20000": packed(encoding="jpeg", data=jpeg_header(20000, 20000)),
        "16-bit png": packed(encoding="png", data=colour),
        "png bytes labelled jpeg": packed(encoding="jpeg", data=encode(gray, "png")),
        "height as string": packed(height="256"),
        "seq as float": packed(seq=1.5),
        "seq 2**64-1": packed(seq=2**64 - 1),
        "negative seq": packed(seq=-3),
        "ts NaN": packed(ts=float("nan")),
        "ts infinite": packed(ts=float("inf")),
        "id as bytes": packed(id=b"x"),
        "id as int": packed(id=7),
        "id of 100 KB": packed(id="x" * 100_000),
        "camera of 10 KB": packed(camera="c" * 10_000),
        "several fields": {FRAME_FIELD: packed()[FRAME_FIELD], b"extra": b"1"},
        "no f field": {b"g": b"1"},
        "not msgpack": {FRAME_FIELD: b"\xc1\xc1\xc1"},
        "msgpack bomb": {FRAME_FIELD: b"\xdf\xff\xff\xff\xff"},  # map header claiming 2**32 entries
        "deep nesting": {FRAME_FIELD: b"\x91" * 5000 + b"\x00"},
        "payload over the limit": packed(data=bytes(5_000_000)),
        "4000 fields": {f"k{i}".encode(): b"v" for i in range(4000)},
        "empty field name": {b"": b"1"},
        "binary field name": {b"\xff\x00": b"1"},
        "truncated msgpack": {FRAME_FIELD: packed()[FRAME_FIELD][:100]},
        "map as a map key": {FRAME_FIELD: b"\x81\x80\x01"},
    }


def test_hostile_payloads_one_rejected_event_each_worker_alive(redis_url, tiny_engine) -> None:
    import cv2

    client = redis.Redis.from_url(redis_url)
    hostile = hostile_entries()
    ids = {client.xadd("inspect:{main}:frames", fields).decode(): name for name, fields in hostile.items()}
    gray = (np.random.default_rng(1).random((256, 1600)) * 255).astype(np.uint8)
    rgb_jpeg = cv2.imencode(".jpg", np.stack([gray] * 3, axis=2))[1].tobytes()  # accepted: converted to gray
    good = [*add_frames(client, 3, camera="cam-good"),
            client.xadd("inspect:{main}:frames", packed(encoding="jpeg", data=rgb_jpeg, id="rgb", seq=9)).decode()]
    drain(from_config(make_cfg(redis_url, tiny_engine)))
    got = {e["entry_id"]: e for e in events(client)}
    assert len(got) == len(hostile) + len(good) == len(events(client))  # one event each, none twice
    for entry_id, name in ids.items():
        assert got[entry_id]["status"] == "rejected", name
        assert_names_problem(got[entry_id]["error"], name)
        assert len(got[entry_id]["frame_id"]) <= 256, name
    assert all(got[i]["status"] == "ok" for i in good)
    dead = {f[b"source_id"].decode(): f for _, f in client.xrange("inspect:{main}:frames:dead")}
    assert set(dead) == set(ids)
    assert b"fields" in dead[next(i for i, n in ids.items() if n == "4000 fields")]
    assert client.xpending("inspect:{main}:frames", "inspectors")["pending"] == 0


def test_implausible_seq_and_ts_do_not_poison_counters(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    add_frames(client, 4, camera="cam-j")
    client.xadd("inspect:{main}:frames", packed(camera="cam-j", seq=2**52, id="far"))  # a jump, not 2**52 lost frames
    client.xadd("inspect:{main}:frames", packed(camera="cam-j", seq=2**52 + 1, id="old", ts=1000.0))  # from 1970
    pipe = from_config(make_cfg(redis_url, tiny_engine))
    drain(pipe)
    c = pipe.stats.counters
    assert c["seq_gaps"] == 0 and c["seq_resets"] == 1 and c["implausible_ts"] == 1
    assert pipe.stats.percentile(99) < 60_000  # the 1970 frame is not in the latency figures


# -- outages -----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_redis_stopped_15_s_and_restarted_with_aof_nothing_lost(tiny_engine, worker_env) -> None:
    server = PrivateRedis(appendonly=True, extra=("--appendfsync", "always"))
    url = server.start()
    client = redis.Redis.from_url(url, socket_timeout=1)
    added: list[str] = []
    stop = threading.Event()

    failed = [0]

    def camera() -> None:  # keeps sending through the outage; a frame counts once XADD succeeded
        for msg in messages(synthetic_payloads(0, 4), "cam-o"):
            if stop.is_set():
                return
            try:
                added.append(client.xadd("inspect:{main}:frames", {FRAME_FIELD: msg.pack()}).decode())
            except redis.RedisError:  # not answered: as the server halted, it may still have stored it
                failed[0] += 1
            time.sleep(0.05)

    worker = subprocess.Popen(worker_cmd(url, tiny_engine), env=worker_env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    sender = threading.Thread(target=camera, daemon=True)
    sender.start()
    try:
        wait_for(lambda: client.xlen("inspect:{main}:events") >= 10, what="events before the outage")
        server.halt()
        time.sleep(15)
        server.start()
        time.sleep(3)
        stop.set()
        sender.join()
        wait_for(lambda: client.xlen("inspect:{main}:events") >= len(added), timeout=120, what="every frame's event")
        time.sleep(1)
        assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
        got = [e["entry_id"] for e in events(client)]
        assert set(added) <= set(got) and len(set(got)) == len(got)  # every confirmed frame, one event each
        assert len(got) - len(added) <= min(failed[0], 1)  # at most the XADD in flight when the server halted
        assert client.xpending("inspect:{main}:frames", "inspectors")["pending"] == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        server.stop()


def test_redis_restarted_empty_worker_goes_on(tiny_engine, worker_env) -> None:
    server = PrivateRedis()
    url = server.start()
    try:
        client = redis.Redis.from_url(url)
        add_frames(client, 4)
        worker = subprocess.Popen(worker_cmd(url, tiny_engine), env=worker_env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        wait_for(lambda: client.xlen("inspect:{main}:events") >= 4, what="first events")
        server.restart()  # no persistence: stream, group and events are gone
        client = redis.Redis.from_url(url)
        wait_for(lambda: client.exists("inspect:{main}:frames") == 1, what="the group to be created again")
        add_frames(client, 4, start_seq=4)
        wait_for(lambda: client.xlen("inspect:{main}:events") >= 4, what="events after the restart")
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        server.stop()


@pytest.mark.slow
def test_warm_stop_with_redis_away_is_bounded(tiny_engine, worker_env, tmp_path) -> None:
    cfg_file = tmp_path / "w.yaml"
    cfg_file.write_text("worker:\n  stop_timeout_s: 3\n")
    server = PrivateRedis(appendonly=True, extra=("--appendfsync", "always"))
    url = server.start()
    try:
        client = redis.Redis.from_url(url)
        add_frames(client, 200)
        worker = subprocess.Popen(worker_cmd(url, tiny_engine, "--config", str(cfg_file)), env=worker_env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: client.xlen("inspect:{main}:events") >= 8, what="first events")
        server.halt()
        t0 = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
        took = time.monotonic() - t0
        log = worker.stderr.read().decode()
        assert took < 20 and code == 0, log[-2000:]
        assert "left pending" in log
        server.start()
        client = redis.Redis.from_url(url)
        assert client.xlen("inspect:{main}:events") + client.xlen("inspect:{main}:frames") >= 200  # nothing lost
    finally:
        server.stop()


# -- the operator's mistakes -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secured_redis():
    server = PrivateRedis(extra=("--requirepass", "s3cret"))
    server.start()
    yield server.port
    server.stop()


MISTAKES = [
    # (case, config text or None, extra arguments, words the message must hold)
    ("yaml syntax error", "redis:\n  url: [unclosed\n", [], ["not valid YAML", "line"]),
    ("section given as a list", "batching:\n  - batch_size: 4\n", [], ["'batching' must be a mapping"]),
    ("url without a scheme", None, ["--redis-url", "127.0.0.1:6379"], ["no scheme", "redis://"]),
    ("malformed port", None, ["--redis-url", "redis://127.0.0.1:notaport/0"], ["malformed"]),
    ("unreachable port", None, ["--redis-url", "redis://127.0.0.1:{free}/0"], ["unreachable", "startup_wait_s"]),
    ("unresolvable host", None, ["--redis-url", "redis://no-such-host.invalid:6379/0"], ["unreachable"]),
    ("wrong password", None, ["--redis-url", "redis://:wrong@127.0.0.1:{secured}/0"], ["refused", "password"]),
    ("no password where one is required", None, ["--redis-url", "redis://127.0.0.1:{secured}/0"],
     ["refused", "password"]),
    ("batch larger than the engine's", None, ["--redis-url", "redis://127.0.0.1:{secured}/0", "--batch-size", "64"],
     ["batching.batch_size 64", "max batch 8"]),
    ("engine folder missing", None, ["--engine", "/nonexistent/engine"], ["trainer build-engine"]),
    ("unknown key", "redis:\n  urll: x\n", [], ["redis.urll"]),
    ("bad metrics address", None, ["--metrics-address", "localhost"], ["metrics.address"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, text, args, words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_operator_mistake_is_one_clear_line(case, text, args, words, tiny_engine, worker_env, tmp_path,
                                            secured_redis) -> None:
    from inspector.io.redis_server import free_port

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(text or "redis:\n  startup_wait_s: 1\n")
    args = [a.format(free=free_port(), secured=secured_redis) for a in args]
    if "--engine" not in args:
        args += ["--engine", str(tiny_engine)]
    out = subprocess.run([sys.executable, "-m", "inspector.cli", "run", "--config", str(cfg_file), *args],
                         env=worker_env, capture_output=True, text=True, timeout=120)
    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    assert out.returncode != 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert last.startswith("Error: "), out.stderr[-2000:]
    for word in words:
        assert word in last, last
    assert "s3cret" not in out.stderr and ":wrong@" not in out.stderr  # passwords never printed
