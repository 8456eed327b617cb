"""One contract, two implementations: every case runs against the in-memory twin, a real Redis and a real Redis
Cluster (3 masters + 3 replicas)."""

from __future__ import annotations

import pytest

from inspector import config
from inspector.feed import corrupt, messages, synthetic_payloads
from inspector.io.base import Outcome
from inspector.io.client import connect
from inspector.io.memory import MemoryStreams
from inspector.io.redis_scripts import MAX_WAITING_SEQS
from inspector.io.redis_streams import RedisStreams
from inspector.protocol import FRAME_FIELD, MAX_DEAD_FIELDS, MAX_DEAD_ITEMS, dead_letter_fields

JUMP = config.CameraConfig().max_seq_jump  # both twins run with the default camera.max_seq_jump


class Twin:
    """A uniform handle on one implementation: add frames, open a source, see the dead letters."""

    def __init__(self, kind: str, url: str | None, **over: object) -> None:
        self.kind = kind
        self.memory = MemoryStreams(max_deliveries=4, max_seq_jump=JUMP) if kind == "memory" else None
        mode = "cluster" if kind == "cluster" else "standalone"
        self.cfg = config.load(None, url, redis__consumer="c1", redis__max_deliveries=4, redis__mode=mode,
                               **over) \
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


def add_seqs(twin: Twin, seqs: list[int]) -> list[str]:
    """Entries whose content does not matter (the test hands camera and seq to publish itself)."""
    return [twin.add({FRAME_FIELD: b"seq %d" % s}) for s in seqs]


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
    ([0, 1, 2, 3 + JUMP, 4 + JUMP, 5 + JUMP], [0, 1, 2], [(2, 3 + JUMP, "gap")]),   # JUMP missing: the widest gap
    ([0, 1, 2, 4 + JUMP, 5 + JUMP, 6 + JUMP], [0, 1, 2], [(2, 4 + JUMP, "reset")]),  # one more: a restart
    ([7, 8, 9, 11, 12, 13], [1, 2, 0], [(9, 11, "gap")]),                # the first seq waits for older entries
    ([0, 1, 2, 4, 5, 6], [1, 2, 0], [(2, 4, "gap")]),                     # a gap waits while 0-1 are in flight
    ([0, 1, 2, 3, 2, 3], [0, 1, 2], [(3, 2, "reset")]),                   # a batch re-sent: below w, a restart
    ([0, 1, 5, 6, 0, 1], [2, 1, 0], [(1, 5, "gap")]),  # a restart waiting with what it follows: sorted in, repeats
    ([3, 2, 1, 0, 4, 5], [0, 1, 2], [(3, 0, "reset"), (1, 4, "gap")]),    # counting down: each batch sorted
])
def test_gaps_confirmed_once_in_any_publish_order(twin: Twin, seqs, order, expected) -> None:
    ids = add_seqs(twin, seqs)
    source = twin.source()
    batches = [source.read(2, None) for _ in range(3)]
    assert [e.id for b in batches for e in b] == ids
    reports = []
    for i in order:
        outs = [Outcome(e, b"e", None, "cam", seqs[ids.index(e.id)]) for e in batches[i]]
        reports += [(g.after, g.before, g.kind) for g in source.publish(outs).gaps]
    assert reports == expected


def test_too_many_waiting_seqs_confirm_the_gap(twin: Twin) -> None:
    """One frame stays in flight; MAX_WAITING_SEQS later seqs wait above a gap, one more confirms it."""
    seqs = [0, 1, *range(3, 3 + MAX_WAITING_SEQS + 1)]
    ids = add_seqs(twin, seqs)
    seq_of = dict(zip(ids, seqs, strict=True))
    source = twin.source()
    reports = []
    (first,) = source.read(1, None)
    reports += source.publish([Outcome(first, b"e", None, "cam", 0)]).gaps  # w = 0
    (held,) = source.read(1, None)  # seq 1: in flight until the end
    while batch := source.read(1000, None):
        before = len(reports)
        reports += source.publish([Outcome(e, b"e", None, "cam", seq_of[e.id]) for e in batch]).gaps
        if len(reports) > before:  # the gap is confirmed by the batch that made the waiting set overflow
            assert batch[-1].id == ids[-1]
    reports += source.publish([Outcome(held, b"e", None, "cam", 1)]).gaps  # far too late: below w
    assert [(g.after, g.before, g.kind) for g in reports] == [(0, 3, "gap"), (2 + MAX_WAITING_SEQS + 1, 1, "reset")]


def test_lua_and_twin_agree_on_random_streams() -> None:
    """The same seeded streams (two cameras, gaps, repeats, restarts, jumps) through the twin and the Lua, the
    batches published in the same shuffled order: the same reports, camera by camera."""
    import random

    from inspector.io.redis_server import PrivateRedis

    server = PrivateRedis()  # its own server: nothing else in the session touches it
    url = server.start()
    try:
        agree_on_random_streams(url, random.Random(7))
    finally:
        server.stop()


def agree_on_random_streams(url: str, rng) -> None:
    for n in range(12):  # each stream on its own line's keys
        memory, redis_twin = Twin("memory", None), Twin("redis", url, redis__line=f"twin-check-{n}")
        streams = {}
        for camera in ("a", "b"):
            seq, streams[camera] = rng.randrange(0, 5), []
            for _ in range(rng.randrange(5, 30)):
                streams[camera].append((camera, seq))
                seq = rng.choice([seq + 1, seq + 1, seq + 1, seq, seq + rng.randrange(2, 5), max(0, seq - 3),
                                  seq + JUMP + rng.randrange(0, 3)])
        plan = []  # the cameras interleaved at random, each in its own order
        while streams["a"] or streams["b"]:
            plan.append(streams[rng.choice([c for c in streams if streams[c]])].pop(0))
        reports, split = {}, {}
        sizes = [rng.randrange(1, 5) for _ in range(len(plan))]
        order = None
        for twin in (memory, redis_twin):
            ids = add_seqs(twin, [s for _, s in plan])
            source = twin.source()
            batches = []
            for size in sizes:
                if batch := source.read(size, None):
                    batches.append(batch)
            assert sum(map(len, batches)) == len(plan)
            order = order or rng.sample(range(len(batches)), len(batches))
            got: dict[str, list] = {"a": [], "b": []}
            where = {entry_id: k for k, entry_id in enumerate(ids)}
            split[twin.kind] = [[where[e.id] for e in b] for b in batches]
            for i in order:
                outs = [Outcome(e, b"e", None, *plan[where[e.id]]) for e in batches[i]]
                published = source.publish(outs)
                assert all(published.done), (twin.kind, i, published.done, [e.id for e in batches[i]])
                for g in published.gaps:
                    got[g.camera].append((g.after, g.before, g.kind))
            reports[twin.kind] = got
        assert split["memory"] == split["redis"]  # the same batches, so the same publishes
        assert reports["memory"] == reports["redis"], (plan, split["memory"], order)


def test_dead_letters_fit_the_lua_bound() -> None:
    """PUBLISH refuses an outcome with more than MAX_DEAD_ITEMS dead-letter items: the widest one fits."""
    widest = {f"k{i}".encode(): b"v" * 20 for i in range(MAX_DEAD_FIELDS)}
    for fields in (widest, {**widest, b"one more": b"v"}, {b"error": b"x" * 50}):
        assert len(dead_letter_fields(fields, "why", "1-0", "c1", 1, 10)) <= MAX_DEAD_ITEMS
    assert len(dead_letter_fields(widest, "why", "1-0", "c1", 1, 10)) > MAX_DEAD_ITEMS - 4
