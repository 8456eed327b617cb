"""Previews: one small JPEG per camera, at most once per every_s, one Redis key per camera with a TTL; the
consumer never waits for them."""

from __future__ import annotations

import threading

import cv2
import msgpack
import numpy as np
import pytest
import redis
from conftest import drain, events, make_cfg

from inspector import rle, synth
from inspector.config import PreviewConfig
from inspector.decode import encode
from inspector.feed import feed, messages, redis_adder, synthetic_payloads
from inspector.io.base import Entry
from inspector.pipeline import FrameRecord, from_config
from inspector.preview import MemoryPreviews, PreviewTap, render
from inspector.protocol import Defect, FrameMessage


def _message(camera: str = "cam", seq: int = 0) -> FrameMessage:
    image = synth.frame(0, seq).image
    return FrameMessage(f"{camera}-{seq}", camera, seq, 1.0, image.shape[0], image.shape[1], "jpeg",
                        encode(image, "jpeg"))


def _record(camera: str, seq: int = 0, defects: list[Defect] | None = None) -> FrameRecord:
    return FrameRecord(Entry(f"1-{seq}", {}), _message(camera, seq), defects=defects or [])


def test_render_draws_each_class_in_its_colour_small() -> None:
    msg = _message()
    mask = np.zeros((msg.height, msg.width), np.uint8)
    mask[100:160, 400:700] = 1  # class 1 (red)
    other = np.zeros_like(mask)
    other[50:90, 1200:1500] = 1  # class 3 (blue)
    defects = [Defect(1, rle.encode(mask), int(mask.sum()), 0.9, [[400, 100, 300, 60, int(mask.sum())]]),
               Defect(3, rle.encode(other), int(other.sum()), 0.9, [[1200, 50, 300, 40, int(other.sum())]])]
    cfg = PreviewConfig(width=800)
    body = msgpack.unpackb(render(msg, defects, cfg), raw=False)
    assert body["classes"] == [1, 3] and (body["width"], body["height"]) == (800, 128)
    assert len(body["jpeg"]) < 60_000  # a few tens of KB
    image = cv2.imdecode(np.frombuffer(body["jpeg"], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (128, 800, 3)
    b, g, r = (image[55:75, 220:330].reshape(-1, 3).mean(0))  # inside class 1's mask, scaled by 1/2
    assert r > b + 40 and r > g + 40
    b, g, r = (image[30:40, 620:730].reshape(-1, 3).mean(0))  # inside class 3's mask
    assert b > r + 30
    b, g, r = (image[100:120, 50:150].reshape(-1, 3).mean(0))  # no mask: grey
    assert abs(r - b) < 12 and abs(r - g) < 12


def test_at_most_one_per_camera_per_every_s() -> None:
    now = [0.0]
    store = MemoryPreviews()
    tap = PreviewTap(PreviewConfig(every_s=1.0), store, clock=lambda: now[0])
    try:
        for step in range(30):  # 3 s of batches of 4 frames from two cameras, every 0.1 s
            now[0] = step * 0.1
            tap.finished([_record("a", 2 * step), _record("b", 2 * step), _record("a", 2 * step + 1),
                          _record("b", 2 * step + 1)], None)  # type: ignore[arg-type]
    finally:
        tap.close()
    assert tap.counts["taken"] == 6 and tap.counts["rendered"] == 6  # t = 0, 1, 2 s for each camera
    assert set(store.latest) == {"a", "b"} and store.puts == 6


def test_a_full_queue_drops_and_counts_never_waits() -> None:
    release = threading.Event()

    class Stuck(MemoryPreviews):
        def put(self, camera: str, value: bytes) -> None:
            release.wait(30)
            super().put(camera, value)

    tap = PreviewTap(PreviewConfig(every_s=1.0, queue=2), Stuck())
    try:
        tap.finished([_record(f"cam-{i}") for i in range(10)], None)  # type: ignore[arg-type]
        # one is being rendered (stuck), two wait in the queue, the rest are dropped, and finished() returned
        assert tap.counts["taken"] + tap.counts["dropped"] == 10 and tap.counts["dropped"] >= 7
    finally:
        release.set()
        tap.close()


def test_camera_names_are_input_so_keys_stay_bounded() -> None:
    store = MemoryPreviews()
    tap = PreviewTap(PreviewConfig(max_cameras=3), store)
    tap.finished([_record(f"cam-{i}") for i in range(6)], None)  # type: ignore[arg-type]
    tap.close()
    assert sorted(store.latest) == ["cam-0", "cam-1", "cam-2"] and tap.counts["other_cameras"] == 3


def test_rejected_frames_are_not_previewed() -> None:
    store = MemoryPreviews()
    tap = PreviewTap(PreviewConfig(), store)
    rec = _record("cam")
    rec.error = "wrong size"
    tap.finished([rec], None)  # type: ignore[arg-type]
    tap.close()
    assert store.puts == 0


@pytest.mark.redis
def test_previews_in_redis_are_bounded(redis_url, tiny_engine) -> None:
    """Many frames from two cameras: one key per camera, with a TTL, a few tens of KB; every event out."""
    client = redis.Redis.from_url(redis_url)
    add = redis_adder(client, "inspect:{main}:frames")
    for cam in ("top-1", "top-2"):
        feed(add, messages(synthetic_payloads(0, 8, "jpeg"), cam), 24)
    cfg = make_cfg(redis_url, tiny_engine, preview__every_s=3600.0, preview__ttl_s=20)
    pipe = from_config(cfg)
    try:
        drain(pipe)
    finally:
        pipe.close()
    assert len(events(client)) == 48
    keys = sorted(client.scan_iter(match="inspect:{main}:frames:preview:*"))
    assert keys == [b"inspect:{main}:frames:preview:top-1", b"inspect:{main}:frames:preview:top-2"]
    for key in keys:
        assert 0 < client.ttl(key) <= 20
        value = client.get(key)
        assert len(value) < 80_000
        body = msgpack.unpackb(value, raw=False)
        assert body["camera"] == key.decode().rsplit(":", 1)[1] and body["seq"] == 0  # the first; the rest not due
        assert cv2.imdecode(np.frombuffer(body["jpeg"], np.uint8), cv2.IMREAD_COLOR).shape == (128, 800, 3)


@pytest.mark.redis
def test_previews_off_leave_no_key(redis_url, tiny_engine) -> None:
    client = redis.Redis.from_url(redis_url)
    feed(redis_adder(client, "inspect:{main}:frames"), messages(synthetic_payloads(0, 4), "cam"), 4)
    pipe = from_config(make_cfg(redis_url, tiny_engine, preview__enabled=False))
    try:
        drain(pipe)
    finally:
        pipe.close()
    assert pipe.taps == [] and not list(client.scan_iter(match="inspect:{main}:frames:preview:*"))
