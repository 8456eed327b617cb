"""One contract, two implementations: every case runs against the in-memory twin, a real Redis and a real Redis
Cluster (3 masters + 3 replicas)."""

from __future__ import annotations

import pytest

from inspector import config
from inspector.feed import corrupt, messages, synthetic_payloads
from inspector.io.base import Outcome
from inspector.io.client import connect
from inspector.io.memory import MemoryStreams
from inspector.io.redis_streams import RedisStreams
from inspector.protocol import FRAME_FIELD


class Twin:
    """A uniform handle on one implementation: add frames, open a source, see the dead letters."""

    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self.memory = MemoryStreams(max_deliveries=4) if kind == "memory" else None
        mode = "cluster" if kind == "cluster" else "standalone"
        self.cfg = config.load(None, url, redis__consumer="c1", redis__max_deliveries=4, redis__mode=mode) \
            if url else None
        self.client = connect(self.cfg.redis) if url else None
        self.keys = self.cfg.redis.keys() if url else None

    def add(self, fields: dict[bytes, bytes]) -> str:
        if self.memory is not None:
            return self.memory.add(fields)
        return self.client.xadd(self.keys.frames, fields).decode()

    def source(self):  # a (re)started worker
        if self.memory is not None:
            self.memory.recover()
            return self.memory
        return RedisStreams(self.cfg.redis)

    def dead(self) -> list[dict[bytes, bytes]]:
        if self.memory is not None:
            return self.memory.dead
        return [f for _, f in self.client.xrange(self.keys.dead)]


@pytest.fixture(params=["memory", "redis", "cluster"])
def twin(request) -> Twin:
    if request.param == "memory":
        return Twin("memory", None)
    if request.param == "cluster":  # Redis Cluster: every key of a call in the line's slot
        return Twin("cluster", request.getfixturevalue("cluster_url"))
    return Twin("redis", request.getfixturevalue("redis_url"))


def frames(n: int, camera: str = "cam", start: int = 0) -> list[dict[bytes, bytes]]:
    gen = messages(synthetic_payloads(0, 2), camera, start)
    return [{FRAME_FIELD: next(gen).pack()} for _ in range(n)]


def test_publish_is_fenced(twin: Twin) -> None:
    twin.add(frames(1)[0])
    source = twin.source()
    (entry,) = source.read(1, None)
    assert source.publish([Outcome(entry, b"e")]).done == [True]
    assert source.publish([Outcome(entry, b"again")]).done == [False]  # acked: never a second event


def test_dead_letters_carry_the_same_fields(twin: Twin) -> None:
    bad = corrupt("truncated")
    many = {f"k{i}".encode(): b"v" for i in range(100)}
    big = {FRAME_FIELD: b"x" * 5_000_000}
    for fields in (bad, many, big):
        twin.add(fields)
    source = twin.source()
    entries = source.read(3, None)
    source.publish([Outcome(e, b"rejected", "because") for e in entries])
    dead = twin.dead()
    assert len(dead) == 3
    for d, e in zip(dead, entries, strict=True):
        assert d[b"error"] == b"because" and d[b"source_id"] == e.id.encode() and d[b"deliveries"] == b"1"
        assert b"consumer" in d
    assert dead[0][FRAME_FIELD] == bad[FRAME_FIELD]  # original fields, unchanged
    assert b"fields" in dead[1] and b"k0" not in dead[1]  # over 64 fields: kept packed in one value
    assert len(dead[2][FRAME_FIELD]) == 4_000_000 and b"truncated" in dead[2]  # over the payload limit: cut


def test_pending_reread_once_per_restart_then_isolated_then_poison(twin: Twin) -> None:
    twin.add(frames(1)[0])
    deliveries, isolate, poison = [], [], []
    for _ in range(5):
        source = twin.source()
        got = source.read(1, None)
        assert source.read(1, None) == []  # the pending pass ends after one round
        deliveries.append(got[0].deliveries)
        isolate.append(got[0].isolate)
        poison.append(got[0].poison is not None)
    assert deliveries == [1, 2, 3, 4, 5]
    assert isolate == [False, False, True, True, True] and poison == [False, False, False, False, True]


def test_restart_rereads_its_pending_once_then_reads_new_frames(twin: Twin) -> None:
    first, second = frames(2)
    a = twin.add(first)
    (got,) = twin.source().read(2, None)  # delivered, never published: the worker dies
    b = twin.add(second)
    source = twin.source()
    assert [(e.id, e.deliveries) for e in source.read(2, None)] == [(a, 2)]  # the pending pass: only its own
    assert [(e.id, e.deliveries) for e in source.read(2, None)] == [(b, 1)]  # then the stream, once
    assert source.read(2, None) == []
    assert got.id == a


@pytest.mark.parametrize("seqs, order, expected", [
    # (seqs added to the stream, the order three readers publish their batches, (after, before, kind) reports)
    ([0, 1, 2, 3, 4, 5], [0, 1, 2], []),                                  # no gap
    ([0, 1, 2, 4, 5, 6], [2, 1, 0], [(2, 4, "gap")]),                     # one gap, published in reverse
    ([0, 1, 3, 4, 8, 9], [1, 2, 0], [(1, 3, "gap"), (4, 8, "gap")]),      # two gaps, mixed order
    ([5, 6, 0, 1, 2, 3], [0, 1, 2], [(6, 0, "reset")]),                   # the camera restarted at 0
    ([0, 1, 1, 2, 3, 4], [0, 1, 2], []),                                  # a seq sent twice is no gap
    ([0, 1, 2, 10**9, 10**9 + 1, 10**9 + 2], [0, 1, 2], [(2, 10**9, "reset")]),  # implausible jump
])
def test_gaps_confirmed_once_in_any_publish_order(twin: Twin, seqs, order, expected) -> None:
    gen = messages(synthetic_payloads(0, 1), "cam")
    msg = next(gen)
    ids = [twin.add({FRAME_FIELD: type(msg)(**{**msg.__dict__, "seq": s, "id": f"f{s}"}).pack()}) for s in seqs]
    source = twin.source()
    batches = [source.read(2, None) for _ in range(3)]
    assert [e.id for b in batches for e in b] == ids
    reports = []
    for i in order:
        outs = [Outcome(e, b"e", None, "cam", seqs[ids.index(e.id)]) for e in batches[i]]
        reports += [(g.after, g.before, g.kind) for g in source.publish(outs).gaps]
    assert reports == expected
