"""The worker against a real, private redis-server: the acceptance behaviour of the protocol."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter

import numpy as np
import pytest
import redis
from conftest import drain, events, make_cfg, wait_for, worker_cmd

from inspector import config
from inspector.feed import corrupt, feed, folder_payloads, messages, redis_adder, synthetic_payloads
from inspector.io.base import Outcome
from inspector.io.redis_streams import RedisStreams
from inspector.pipeline import from_config
from inspector.protocol import PROTOCOL_VERSION

pytestmark = pytest.mark.redis


def test_three_encodings_one_event_each(redis_url, tiny_engine, sample_dir) -> None:
    client = redis.Redis.from_url(redis_url)
    add = redis_adder(client, "inspect:{main}:frames")
    feed(add, messages(synthetic_payloads(0, 3, "gray8"), "cam-gray"), 3)
    feed(add, messages(synthetic_payloads(1, 3, "png"), "cam-png"), 3)
    feed(add, messages(folder_payloads(sample_dir / "images")[:3], "cam-jpeg"), 3)  # real Severstal JPEGs
    pipe = from_config(make_cfg(redis_url, tiny_engine))
    drain(pipe)
    got = events(client)
    assert len(got) == 9 and all(e["status"] == "ok" for e in got)
    assert Counter(e["camera"] for e in got) == {"cam-gray": 3, "cam-png": 3, "cam-jpeg": 3}
    assert all(e["model"] == pipe.engine.model_id and e["done_ts"] >= e["ts"] for e in got)
    assert all(e["v"] == PROTOCOL_VERSION and e["coil"] is None and e["pos_mm"] is None for e in got)
    assert client.xpending("inspect:{main}:frames", "inspectors")["pending"] == 0
    assert client.xlen("inspect:{main}:frames") == 0  # acked by the only group: trimmed


@pytest.mark.parametrize("kind", ["truncated", "wrong_size", "unknown_encoding", "not_msgpack"])
def test_malformed_frame_rejected_and_dead_lettered(redis_url, tiny_engine, kind: str) -> None:
    client = redis.Redis.from_url(redis_url)
    add = redis_adder(client, "inspect:{main}:frames")
    feed(add, messages(synthetic_payloads(0, 2), "cam"), 2)
    bad = corrupt(kind)
    bad_id = client.xadd("inspect:{main}:frames", bad).decode()
    feed(add, messages(synthetic_payloads(0, 2), "cam", start_seq=2), 2)
    pipe = from_config(make_cfg(redis_url, tiny_engine))
    drain(pipe)
    got = events(client)
    assert [e["status"] for e in got].count("rejected") == 1 and len(got) == 5
    rejected = next(e for e in got if e["status"] == "rejected")
    assert rejected["error"] and rejected["defects"] == [] and rejected["entry_id"] == bad_id
    dead = client.xrange("inspect:{main}:frames:dead")
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"f"] == bad[b"f"] and fields[b"error"].decode() == rejected["error"]
    assert fields[b"source_id"].decode() == bad_id and fields[b"consumer"] == b"test-worker"
    assert client.xpending("inspect:{main}:frames", "inspectors")["pending"] == 0


def test_sigkill_mid_batch_loses_nothing_and_duplicates_nothing(redis_url, tiny_engine, worker_env) -> None:
    client = redis.Redis.from_url(redis_url)
    total = 80
    feed(redis_adder(client, "inspect:{main}:frames"), messages(synthetic_payloads(0, 8), "cam-k"), total)
    cmd = worker_cmd(redis_url, tiny_engine)
    worker = subprocess.Popen(cmd, env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: client.xlen("inspect:{main}:events") >= 8 or worker.poll() is not None, what="first events")
    assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    published = client.xlen("inspect:{main}:events")
    pending = client.xpending("inspect:{main}:frames", "inspectors")["pending"]
    assert published < total and pending > 0  # killed with frames read but not yet published
    subprocess.run([*cmd, "--burst"], env=worker_env, check=True, timeout=300, capture_output=True)
    ids = [e["frame_id"] for e in events(client)]
    assert len(ids) == total and len(set(ids)) == total  # every frame once, none twice
    assert client.xpending("inspect:{main}:frames", "inspectors")["pending"] == 0


def test_sigterm_finishes_in_flight_and_exits_zero(redis_url, tiny_engine, worker_env) -> None:
    client = redis.Redis.from_url(redis_url)
    feed(redis_adder(client, "inspect:{main}:frames"), messages(synthetic_payloads(0, 4), "cam-t"), 40)
    worker = subprocess.Popen(worker_cmd(redis_url, tiny_engine), env=worker_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    wait_for(lambda: client.xlen("inspect:{main}:events") >= 4, what="first events")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    # whatever was read was published: nothing left pending for this consumer
    assert client.xpending("inspect:{main}:frames", "inspectors")["pending"] == 0
    assert len({e["frame_id"] for e in events(client)}) == client.xlen("inspect:{main}:events")


def test_fence_refuses_publish_after_claim(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    feed(redis_adder(client, "inspect:{main}:frames"), messages(synthetic_payloads(0, 1), "cam-f"), 1)
    cfg = make_cfg(redis_url, tiny_engine)
    slow = RedisStreams(cfg.redis)
    (entry,) = slow.read(1, None)  # read, then this worker stops heartbeating (it never started here)
    other = RedisStreams(config.replace(cfg, redis={"consumer": "other"}).redis)
    assert [e.id for e in other.read(1, None)] == [entry.id]  # claimed: no heartbeat key for `slow`
    assert slow.publish([Outcome(entry, b"late event")]).done == [False]
    assert client.xlen("inspect:{main}:events") == 0
    assert other.publish([Outcome(entry, b"event")]).done == [True]
    assert client.xlen("inspect:{main}:events") == 1


def test_live_worker_frames_are_not_claimed(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    feed(redis_adder(client, "inspect:{main}:frames"), messages(synthetic_payloads(0, 1), "cam-l"), 2)
    cfg = make_cfg(redis_url, tiny_engine, redis__claim_every_s=0.01)
    busy = RedisStreams(cfg.redis)
    busy.heartbeat()
    assert len(busy.read(1, None)) == 1  # a long batch: alive, heartbeating
    other = RedisStreams(config.replace(cfg, redis={"consumer": "other"}).redis)
    got = other.read(5, None)
    assert len(got) == 1 and got[0].deliveries == 1  # only the unread frame, not busy's
    busy.close()  # a clean stop drops the heartbeat: what is still pending can be claimed at once
    time.sleep(0.02)
    assert len(other.read(5, None)) == 1


def test_poison_frame_over_delivery_limit_goes_to_dead_letters(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    feed(redis_adder(client, "inspect:{main}:frames"), messages(synthetic_payloads(0, 1), "cam-p"), 1)
    cfg = make_cfg(redis_url, tiny_engine, redis__max_deliveries=2)
    for _ in range(2):  # two deliveries that never finished (the worker crashed each time)
        RedisStreams(cfg.redis).read(1, None)
    drain(from_config(cfg))
    (event,) = events(client)
    assert event["status"] == "rejected" and "delivered 3 times" in event["error"]
    dead = client.xrange("inspect:{main}:frames:dead")
    assert len(dead) == 1 and dead[0][1][b"deliveries"] == b"3"


def test_redis_restart_without_persistence_recreates_group(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    add = redis_adder(client, "inspect:{main}:frames")
    pipe = from_config(make_cfg(redis_url, tiny_engine))
    feed(add, messages(synthetic_payloads(0, 2), "cam-r"), 2)
    drain(pipe)
    client.flushall()  # what a restart without persistence looks like to the worker
    feed(add, messages(synthetic_payloads(0, 2), "cam-r", start_seq=2), 3)
    for _ in range(6):
        try:
            pipe.step()
        except Exception as exc:  # the first read after the loss may report it; the worker retries
            assert "NOGROUP" in str(exc) or "vanished" in str(exc)
    assert len(events(client)) == 3


def test_events_trimmed_approximately(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    client.config_set("stream-node-max-entries", 10)
    n = 60
    feed(redis_adder(client, "inspect:{main}:frames"), messages(synthetic_payloads(0, 1), "cam-m"), n)
    drain(from_config(make_cfg(redis_url, tiny_engine, redis__events_maxlen=10)))
    assert client.xlen("inspect:{main}:events") < n // 2
    assert client.xpending("inspect:{main}:frames", "inspectors")["pending"] == 0


def test_stats_hash_reported_and_expires(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    feed(redis_adder(client, "inspect:{main}:frames"), messages(synthetic_payloads(0, 2), "cam-s"), 4)
    pipe = from_config(make_cfg(redis_url, tiny_engine))
    pipe.run(burst=True, handle_signals=False)
    stats = client.hgetall("inspect:{main}:stats:test-worker")
    assert int(stats[b"frames"]) == 4 and float(stats[b"fps"]) > 0
    assert 0 < client.ttl("inspect:{main}:stats:test-worker") <= pipe.cfg.redis.stats_ttl_s


def test_unreachable_redis_is_a_clear_error(tiny_engine) -> None:
    from inspector.errors import SourceUnavailable
    from inspector.io.redis_server import free_port

    cfg = make_cfg(f"redis://127.0.0.1:{free_port()}/0", tiny_engine, redis__socket_timeout_s=0.5)
    with pytest.raises(SourceUnavailable, match="unreachable"):
        RedisStreams(cfg.redis).read(1, None)


def test_jpeg_frames_of_real_data_yield_defect_fields(redis_url, tiny_engine, sample_dir) -> None:
    client = redis.Redis.from_url(redis_url)
    feed(redis_adder(client, "inspect:{main}:frames"), messages(folder_payloads(sample_dir / "images"), "cam-r"), 8)
    drain(from_config(make_cfg(redis_url, tiny_engine)))
    for e in events(client):
        for d in e["defects"]:
            assert set(d) == {"class_id", "rle", "area", "score", "components"}
            assert all(len(c) == 5 for c in d["components"])
            assert sum(c[4] for c in d["components"]) == d["area"]
            assert 0.0 <= d["score"] <= 1.0 and np.isfinite(d["score"])
