"""Past one Redis: the worker on a real Sentinel set-up (a master, a replica, three sentinels on loopback) whose
master is SIGKILLed mid-stream: the worker follows the promotion, and with min_replicas_acked 1 nothing is lost;
and what min_replicas_acked does while a replica is away."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

import pytest
import yaml
from conftest import wait_for, worker_cmd
from test_redis_cluster import Camera, one_event_per_entry, settled

from inspector import config
from inspector.io.client import close, connect
from inspector.io.redis_server import PrivateSentinel

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def sentinel_setup():
    setup = PrivateSentinel("inspector", down_after_ms=1000, failover_timeout_ms=3000)
    setup.start()
    yield setup
    setup.stop()


def test_master_killed_worker_follows_promotion_nothing_lost(sentinel_setup, tiny_engine, worker_env, tmp_path,
                                                             record_property) -> None:
    cfg_file = tmp_path / "sentinel.yaml"
    cfg_file.write_text(yaml.safe_dump({"redis": {
        "mode": "sentinel", "sentinels": sentinel_setup.addresses, "sentinel_service": "inspector",
        "min_replicas_acked": 1, "frames_trim": "off", "block_ms": 100}}))
    cfg = config.load(cfg_file)
    keys, client = cfg.redis.keys(), connect(cfg.redis)
    log = (tmp_path / "worker.log").open("w")
    # in sentinel mode the URL gives only password and db: the sentinels name the master
    worker = subprocess.Popen(worker_cmd("redis://127.0.0.1/0", tiny_engine, "--config", str(cfg_file)),
                              env=worker_env, stdout=log, stderr=subprocess.STDOUT)
    camera = Camera(client, keys.frames, 120, 20.0, 1)
    try:
        camera.start()
        wait_for(lambda: client.xlen(keys.events) >= 20, what="events before the kill")
        master = sentinel_setup.master()
        sentinel_setup.kill(master)
        killed, killed_wall = time.monotonic(), time.time()
        wait_for(lambda: sentinel_setup.master() != master, what="the sentinels promote the replica", every=0.05)
        promoted = time.monotonic() - killed
        wait_for(lambda: any(e["done_ts"] > killed_wall for e in new_events(client, keys)), what="an event on "
                 "the new master", every=0.05)
        follows = time.monotonic() - killed
        sentinel_setup.revive(master)  # its restart: the sentinels make it a replica of the new master
        camera.join(timeout=240)
        assert camera.error is None, camera.error
        wait_for(lambda: settled(client, keys), timeout=240, what="every frame answered", every=0.5)
        confirmed_again = time.monotonic() - killed
    finally:
        worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=60)
        log.close()
    for name, value in (("promoted_s", promoted), ("worker_follows_s", follows), ("settled_s", confirmed_again)):
        record_property(name, round(value, 2))
    print(f"promoted after {promoted:.2f} s, first event on the new master {follows:.2f} s after the kill, "
          f"all settled {confirmed_again:.2f} s after")
    seen = [e["frame_id"] for e in one_event_per_entry(client, keys)]
    assert set(camera.confirmed) <= set(seen) and len(camera.confirmed) == 120  # nothing confirmed went missing
    assert len(seen) - len(set(seen)) <= 16  # a camera batch sent again after the failover, at most once
    text = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in text and "retrying" in text  # the failover was retried, visibly
    close(client)


def new_events(client, keys) -> list[dict]:
    from inspector.protocol import EVENT_FIELD, unpack_event

    return [unpack_event(f[EVENT_FIELD]) for _, f in client.xrevrange(keys.events, count=5)]


def test_publish_waits_for_its_replica_and_is_never_redone(tiny_engine) -> None:
    """min_replicas_acked 1 with the replica down: publish raises (retried by the worker) and, asked again with the
    same batch, confirms it instead of publishing it twice; once the replica is back the batch counts as done."""
    import redis

    from inspector.errors import SourceUnavailable
    from inspector.feed import messages, synthetic_payloads
    from inspector.io.base import Outcome
    from inspector.io.redis_server import PrivateRedis
    from inspector.io.redis_streams import RedisStreams
    from inspector.protocol import FRAME_FIELD

    with PrivateRedis() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        replica = PrivateRedis(extra=("--replicaof", "127.0.0.1", str(port)))
        replica.start()
        try:
            client = redis.Redis.from_url(url)
            wait_for(lambda: client.info("replication")["connected_slaves"] == 1, what="the replica")
            cfg = config.load(None, url, redis__consumer="c1", redis__min_replicas_acked=1,
                              redis__replica_wait_ms=200).redis
            source = RedisStreams(cfg)
            gen = messages(synthetic_payloads(0, 1), "cam")
            for _ in range(3):
                client.xadd(cfg.keys().frames, {FRAME_FIELD: next(gen).pack()})
            batch = [Outcome(e, b"e", None, "cam", i) for i, e in enumerate(source.read(3, None))]
            replica.kill()
            for _ in range(2):  # the worker's retries while the replica is away
                with pytest.raises(SourceUnavailable, match="held by 0 of the 1 replicas"):
                    source.publish(batch)
            assert client.xlen(cfg.keys().events) == 3  # published once, on the master
            replica.start()
            wait_for(lambda: client.info("replication").get("slave0", {}).get("state") == "online",
                     what="the replica back in sync")
            # the worker retries until the replica has acknowledged (a freshly synced replica may take a while to
            # send its first REPLCONF ACK): every try confirms, none publishes again
            deadline, result = time.monotonic() + 30, None
            while result is None:
                try:
                    result = source.publish(batch)
                except SourceUnavailable as exc:
                    assert "held by 0 of the 1 replicas" in str(exc) and time.monotonic() < deadline, exc
                    assert client.xlen(cfg.keys().events) == 3
                    time.sleep(0.2)
            assert result.done == [True, True, True]  # confirmed, not redone
            assert client.xlen(cfg.keys().events) == 3 and client.xpending(cfg.keys().frames, "inspectors")[
                "pending"] == 0
            source.close()
        finally:
            replica.stop()
