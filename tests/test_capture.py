"""Capture for retraining and evidence crops (inspector/capture/): what is written is what the policies chose,
pre-labels equal the events, a stalled disk loses captures and never frames, caps hold, kills leave no half
file, hostile ids stay inside the folder; then `trainer review` and `trainer train` on the result."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import wait_for

from inspector import config
from inspector.capture.names import day_of, image_name, safe_name
from inspector.capture.policies import Policies, RateCap, sampled, uncertain
from inspector.capture.store import Disk, Store
from inspector.capture.tap import CaptureTap
from inspector.errors import ConfigError
from inspector.feed import synthetic_payloads
from inspector.io.memory import MemoryStreams
from inspector.postprocess import PostprocessParams
from inspector.protocol import FRAME_FIELD, Defect, FrameMessage, unpack_event
from inspector.serving import load_engine
from inspector.worker import Worker

HOSTILE = ["../../escape", "/etc/passwd", "a\x00b", "x" * 256, ".", "..", "a/b", "a_b", "ü-ß", "C:\\win", "-rf"]
DAY = 1_764_720_000.0  # 2025-12-03T00:00:00Z


def frames(n: int, ts: float = DAY, ids: list[str] | None = None, encoding: str = "gray8") -> list[FrameMessage]:
    pool = synthetic_payloads(3, 8, encoding)
    out = []
    for i in range(n):
        data, enc, h, w = pool[i % len(pool)]
        frame_id = ids[i] if ids is not None else f"cam-a-{i}"
        out.append(FrameMessage(frame_id, "cam-a" if i % 3 else "cam-b", i, ts + i, h, w, enc, data,
                                coil=f"C{i // 10}", pos_mm=float(i)))
    return out


def run_burst(tiny_engine: Path, folder: Path, msgs: list[FrameMessage], disk: Disk | None = None,
              on_demand: frozenset[str] | None = None, **capture):
    cfg = config.load(engine__path=str(tiny_engine), batching__batch_size=4, batching__max_wait_ms=5.0,
                      redis__block_ms=50)
    cfg = config.replace(cfg, capture={"enabled": True, "folder": str(folder), **capture})
    streams = MemoryStreams()
    tap = CaptureTap(cfg.capture, disk=disk, on_demand=None if on_demand is None else lambda: on_demand)
    while on_demand is not None and tap.wanted != on_demand:  # the writer thread reads the set first
        time.sleep(0.01)
    pipe = Worker(streams, streams, load_engine(cfg), cfg, taps=[tap])
    for m in msgs:
        streams.add({FRAME_FIELD: m.pack()})
    try:
        stats = pipe.run(burst=True, handle_signals=False)
        events = [unpack_event(e) for e in streams.events]
    finally:
        pipe.close()
    return events, tap, stats


def read_csv(path: Path) -> dict[tuple[str, int], str]:
    csv.field_size_limit(1 << 23)  # a random tiny engine's RLE is long
    with open(path, newline="") as fh:
        return {(r["ImageId"], int(r["ClassId"])): r["EncodedPixels"] for r in csv.DictReader(fh)}


def meta_lines(day: Path) -> list[dict]:
    return [json.loads(line) for line in (day / "meta.jsonl").read_text().splitlines()]


# -- names ------------------------------------------------------------------------------------------------
def test_hostile_ids_stay_inside_and_never_collide(tmp_path) -> None:
    names = [safe_name(i) for i in HOSTILE]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith((".", "-"))
        assert len(name) <= 100 and (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert safe_name("cam-3-17") == "cam-3-17"  # a plain id is kept as it is
    assert safe_name("a/b") != safe_name("a_b")  # sanitising alone would make these meet
    assert day_of(1e300) == "9999-12-31" and day_of(0.0) == "1970-01-01"


# -- policies ---------------------------------------------------------------------------------------------
def test_policies_order_band_and_caps() -> None:
    params = PostprocessParams(thresholds=(0.5,) * 4, presence_threshold=(0.6,) * 4)
    scores = np.array([[0.1, 0.1], [0.65, 0.2], [0.0, 0.0], [0.0, 0.0]])  # class 2 presence 0.05 from 0.6
    assert uncertain(scores, params, 0.1) and not uncertain(scores, params, 0.01)
    assert not uncertain(None, params, 0.5)
    clock = [0.0]
    cfg = config.CaptureConfig(enabled=True, sample_every=1, sample_per_hour=2, rare_classes=(4,), rare_per_hour=1,
                               uncertain_band=0.1)
    pol = Policies(cfg, lambda: clock[0])
    msg = frames(1)[0]
    rare = [Defect(4, "1 10", 10, 0.9, [[0, 0, 1, 10, 10]])]
    got = [pol.choose(msg, rare, scores, params, frozenset())[0] for _ in range(5)]
    assert [c.policy if c else None for c in got] == ["rare", "uncertain", "uncertain", "uncertain", "uncertain"]
    assert got[0].matched == ("rare", "uncertain", "random")
    on = frozenset({"coil:C0"})
    assert pol.choose(msg, [], None, params, on)[0].policy == "on_demand"
    cap = RateCap(3, lambda: clock[0])
    assert [cap.admit() for _ in range(4)] == [True, True, True, False]
    clock[0] += 1200.0  # a third of an hour: one more
    assert [cap.admit() for _ in range(2)] == [True, False]
    assert sum(sampled(f"f{i}", 4) for i in range(4000)) in range(850, 1150)


def test_config_keys_are_checked(tmp_path) -> None:
    for text, key in (("capture:\n  sample_every: -1\n", "capture.sample_every"),
                      ("capture:\n  rare_classes: [5]\n", "capture.rare_classes"),
                      ("capture:\n  max_bytes: 10\n", "capture.max_bytes"),
                      ("capture:\n  folder: ' '\n", "capture.folder"),
                      ("capture:\n  evidense: true\n", "capture.evidense"),
                      ("capture:\n  on_demand_key: 'inspect:{other}:capture'\n", "capture.on_demand_key")):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
            config.load(path)
        assert "\n" not in str(info.value)
    assert not config.load().capture.enabled


# -- the worker ---------------------------------------------------------------------------------------------
def test_burst_writes_exactly_what_the_policies_chose(tiny_engine, tmp_path) -> None:
    msgs = frames(24, ids=[f"cam-a-{i}" for i in range(24 - len(HOSTILE))] + HOSTILE)
    events, tap, _ = run_burst(tiny_engine, tmp_path / "cap", msgs, on_demand=frozenset({"camera:cam-b"}),
                               sample_every=3, evidence=True, evidence_per_frame=3, queue_size=1000)
    assert len(events) == 24 and all(e["status"] == "ok" for e in events)
    by_id = {e["frame_id"]: e for e in events}
    want = {i for i, e in by_id.items() if sampled(i, 3) or e["camera"] == "cam-b"}
    assert 0 < len(want) < 24
    day = tmp_path / "cap" / day_of(DAY)
    meta = meta_lines(day)
    assert sorted(m["frame_id"] for m in meta) == sorted(want)
    assert sorted(p.name for p in (day / "images").iterdir()) == sorted(image_name(i, "gray8") for i in want)
    for m in meta:  # the policy recorded is one that matched, and the image is whole
        e = by_id[m["frame_id"]]
        assert m["policy"] in m["matched"] and m["engine"] == e["model"] and m["entry_id"] == e["entry_id"]
        assert len(m["scores"]["presence"]) == 4
        assert cv2.imread(str(day / "images" / m["image"]), cv2.IMREAD_GRAYSCALE).shape == (256, 1600)
    assert read_csv(day / "predicted.csv") == {(image_name(i, "gray8"), d["class_id"]): d["rle"]
                                              for i in want for d in by_id[i]["defects"]}
    crops = 0
    for e in events:  # every defect carries its crops' paths; at most K a frame, largest first, all written
        paths = [(c[4], p) for d in e["defects"] for c, p in zip(d["components"], d["evidence"], strict=True)]
        kept = [(area, p) for area, p in paths if p is not None]
        assert len(kept) == min(3, len(paths))
        assert min((a for a, _ in kept), default=0) >= max((a for a, p in paths if p is None), default=0)
        for _, p in kept:
            assert p.startswith(f"evidence/{day_of(e['ts'])}/{safe_name(e['frame_id'])}/")
            assert cv2.imread(str(tmp_path / "cap" / p)) is not None
            crops += 1
    assert crops > 0 and tap.snapshot()["evidence:written"] == crops
    assert tap.snapshot()["captures:written"] == len(want)
    inside = (tmp_path / "cap").resolve()
    assert all(inside in p.resolve().parents for p in tmp_path.rglob("*") if p.is_file())


class StalledDisk(Disk):
    """The real disk behind a gate the test holds shut: every write blocks until it opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def write(self, path: Path, data: bytes, partial: Path) -> None:
        self.gate.wait()
        super().write(path, data, partial)


def test_stalled_disk_drops_captures_never_frames(tiny_engine, tmp_path) -> None:
    msgs = frames(20)
    normal, _, _ = run_burst(tiny_engine, tmp_path / "a", msgs, sample_every=1, queue_size=2)
    disk = StalledDisk()
    stalled, tap, stats = run_burst(tiny_engine, tmp_path / "b", msgs, disk=disk, sample_every=1, queue_size=2)
    strip = lambda es: [{k: v for k, v in e.items() if k not in ("done_ts", "entry_id")} for e in es]  # noqa: E731
    assert strip(stalled) == strip(normal) and stats.counters["frames"] == 20
    counts = tap.snapshot()
    assert counts["chosen:random"] == 20 and counts["captures:queue_full"] >= 20 - 3
    assert stats.counters["tap_errors"] == 0
    disk.gate.set()  # the disk recovers: what was queued is written, the rest stays dropped
    wait_for(lambda: sum(tap.snapshot().get(f"captures:{r}", 0) for r in ("written", "queue_full")) == 20,
             what="the queued captures written")
    counts = tap.snapshot()
    assert counts["captures:written"] + counts["captures:queue_full"] == 20
    assert len(meta_lines(tmp_path / "b" / day_of(DAY))) == counts["captures:written"]


def test_size_caps_hold_and_the_oldest_day_goes_first(tiny_engine, tmp_path) -> None:
    cap = 1_000_000
    msgs = [m for d in range(6) for m in frames(4, ts=DAY + d * 86_400, ids=[f"d{d}-{i}" for i in range(4)])]
    _, tap, _ = run_burst(tiny_engine, tmp_path / "cap", msgs, sample_every=1, max_bytes=cap, evidence=True,
                          evidence_max_bytes=cap, queue_size=1000)
    root = tmp_path / "cap"
    days = lambda r: sorted(p.name for p in r.iterdir() if p.is_dir() and p.name[0].isdigit())  # noqa: E731
    usage = lambda r: sum(p.stat().st_size for p in r.rglob("*") if p.is_file())  # noqa: E731
    assert usage(root) - usage(root / "evidence") <= cap and usage(root / "evidence") <= cap
    kept = days(root)
    assert kept and kept == [day_of(DAY + d * 86_400) for d in range(6)][-len(kept):]  # the newest survive
    assert len(kept) < 6 and tap.captures.deleted_days >= 6 - len(kept)
    store = Store(root, cap)  # a restart finds the same usage on disk
    assert store.used == usage(root) - usage(root / "evidence")
    assert not store.room(day_of(DAY), cap)  # an old day's frame never deletes newer days


def test_rate_cap_holds_in_the_worker(tiny_engine, tmp_path) -> None:
    _, tap, _ = run_burst(tiny_engine, tmp_path / "cap", frames(20), sample_every=1, sample_per_hour=5)
    counts = tap.snapshot()
    assert counts["matched:random"] == 20 and counts["chosen:random"] == 5 and counts["captures:written"] == 5


WRITER = """
import sys
from pathlib import Path
from inspector.capture.store import Store
store = Store(Path(sys.argv[1]), 10**12)
blob = bytes(range(256)) * (8 * 2**20 // 256)
i = 0
while True:
    store.room("2025-12-03", len(blob))
    store.write("2025-12-03", f"images/{i}.bin", blob)
    i += 1
"""


def test_sigkill_mid_write_leaves_no_partial_file(tmp_path) -> None:
    root = tmp_path / "cap"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], env=env)
    images = root / "2025-12-03" / "images"
    try:
        deadline = time.monotonic() + 120
        while not (images.is_dir() and len(list(images.iterdir())) >= 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    expected = bytes(range(256)) * (8 * 2**20 // 256)
    files = list(images.iterdir())
    assert len(files) >= 3 and all(p.read_bytes() == expected for p in files)
    left = root / f".partial-{proc.pid}"
    assert left.is_dir()  # the killed writer's temporary files, never under images/
    Store(root, 10**12)  # the next writer sweeps what the kill left half-written
    assert not left.exists()


@pytest.mark.redis
def test_on_demand_set_in_redis(redis_url) -> None:
    import redis

    from inspector.capture import OnDemand

    cfg = config.load(redis__url=redis_url, capture__enabled=True)
    reader = OnDemand(cfg)
    try:
        assert reader() == frozenset()
        redis.Redis.from_url(redis_url).sadd("inspect:{main}:capture", "camera:cam-b", "coil:C7")
        assert reader() == {"camera:cam-b", "coil:C7"}
    finally:
        reader.close()


# -- review and train -------------------------------------------------------------------------------------------
def test_review_then_train(tiny_engine, tmp_path) -> None:
    from trainer.cli import main as trainer

    _, _, _ = run_burst(tiny_engine, tmp_path / "cap", frames(8), sample_every=1)
    day = tmp_path / "cap" / day_of(DAY)
    runner = CliRunner()
    refused = runner.invoke(trainer, ["train", "--data", str(day), "--out", str(tmp_path / "run")])
    assert refused.exit_code != 0 and "trainer review" in refused.output and len(refused.output.splitlines()) == 1
    (tmp_path / "drop.txt").write_text("cam-a-1\n")
    done = runner.invoke(trainer, ["review", "--data", str(day), "--out", str(tmp_path / "rev"), "--drop",
                                   str(tmp_path / "drop.txt")])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output.strip().splitlines()[-1])
    assert summary["frames"] == 8 and summary["accepted"] == 7
    assert len(list((tmp_path / "rev" / "overlays").iterdir())) == 8
    predicted = read_csv(day / "predicted.csv")
    assert read_csv(day / "train.csv") == {k: v for k, v in predicted.items() if k[0] != "cam-a-1.png"}
    (tmp_path / "accept.txt").write_text("cam-a-2.png\ncam-a-3\n")  # an ImageId or its stem
    (tmp_path / "fixed.csv").write_text("ImageId,ClassId,EncodedPixels\ncam-a-2.png,1,\ncam-a-3,2,1 5\n")
    again = runner.invoke(trainer, ["review", "--data", str(day), "--out", str(tmp_path / "rev2"), "--no-overlays",
                                    "--accept", str(tmp_path / "accept.txt"), "--corrections",
                                    str(tmp_path / "fixed.csv")])
    assert again.exit_code == 0, again.output
    assert read_csv(day / "train.csv") == {("cam-a-3.png", 2): "1 5"}  # cam-a-2 made defect-free
    (tmp_path / "bad.txt").write_text("../../etc/passwd\n")
    refused = runner.invoke(trainer, ["review", "--data", str(day), "--out", str(tmp_path / "rev3"), "--drop",
                                      str(tmp_path / "bad.txt")])
    assert refused.exit_code != 0 and "not an image of this capture folder" in refused.output
    runner.invoke(trainer, ["review", "--data", str(day), "--out", str(tmp_path / "rev"), "--no-overlays", "--drop",
                            str(tmp_path / "drop.txt")])
    from trainer.data import load_dataset

    assert sorted(s.image_id for s in load_dataset(day)) == sorted(f"cam-a-{i}.png" for i in range(8) if i != 1)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("encoder: tu-mobilenetv3_small_100\ndecoder_channels: [16, 16, 16, 8, 8]\nscale: 0.5\n"
                    "max_steps: 1\nbatch_size: 2\ncrop_width: 256\ndevice: cpu\n")
    trained = runner.invoke(trainer, ["train", "--data", str(day), "--out", str(tmp_path / "run"), "--config",
                                      str(tiny)])
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "run" / "best.pt").exists() or (tmp_path / "run" / "last.pt").exists()


def test_from_config_wires_the_tap_and_its_metrics(tiny_engine, tmp_path) -> None:
    from inspector.metrics import Metrics
    from inspector.pipeline import from_config

    cfg = config.load(engine__path=str(tiny_engine), batching__batch_size=4, redis__block_ms=50,
                      capture__enabled=True, capture__folder=str(tmp_path / "cap"), capture__sample_every=1,
                      capture__evidence=True)
    metrics, streams = Metrics(), MemoryStreams()
    pipe = from_config(cfg, streams, metrics=metrics)
    try:
        assert "CaptureTap" in [type(t).__name__ for t in pipe.taps]  # beside the preview tap (on by default)
        for m in frames(6):
            streams.add({FRAME_FIELD: m.pack()})
        pipe.run(burst=True, handle_signals=False)
    finally:
        pipe.close()
    assert metrics.registry.get_sample_value("inspector_captures_total", {"result": "written"}) == 6
    assert metrics.registry.get_sample_value("inspector_evidence_total", {"result": "written"}) > 0
    assert all("evidence" in d for e in streams.events for d in unpack_event(e)["defects"])
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(ConfigError, match=r"capture\.folder"):
        from_config(config.replace(cfg, capture={"folder": str(blocked / "cap")}), MemoryStreams())


@pytest.mark.redis
def test_demo_with_capture_prints_per_policy_counts_and_leaves_keys_alone(redis_url, tiny_engine, tmp_path) -> None:
    import redis

    from inspector import demo

    client = redis.Redis.from_url(redis_url)
    client.sadd("inspect:{main}:capture", "camera:plant-cam")  # the plant's own on-demand set
    before = {k: client.dump(k) for k in client.keys("*")}
    cfg = demo.with_capture(config.load(None, redis_url, engine__path=str(tiny_engine), batching__batch_size=4),
                            str(tmp_path / "cap"))
    lines: list[str] = []
    demo.run(cfg, fps=4, seconds=4, out=lines.append, every_s=1.0)
    counts = next(line for line in lines if line.startswith("capture in"))
    kept = int(counts.split("on_demand ")[1].split(" kept")[0])
    assert kept > 0 and kept == sum(m["policy"] == "on_demand" and m["camera"] == "top-2"
                                    for day in (tmp_path / "cap").glob("20*") for m in meta_lines(day))
    assert {k: client.dump(k) for k in client.keys("*")} == before
