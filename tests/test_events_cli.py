"""`inspector feed` at a dataset root and its frame ids, and `inspector events` printing what the stream holds
(real Redis, a real tiny engine, real Severstal frames)."""

from __future__ import annotations

import threading

import pytest
import redis
from click.testing import CliRunner
from conftest import events

from inspector import eventlog
from inspector.cli import main
from inspector.feed import corrupt

pytestmark = pytest.mark.redis


def test_feed_at_a_dataset_root_names_files_and_events_prints_them(redis_url, tiny_engine, sample_dir) -> None:
    runner = CliRunner()
    fed = runner.invoke(main, ["feed", "--redis-url", redis_url, "--folder", str(sample_dir), "--count", "6",
                               "--camera", "cam-7"])
    assert fed.exit_code == 0, fed.output
    assert "sent 6 frames to inspect:{main}:frames" in fed.output and str(sample_dir / "images") in fed.output
    client = redis.Redis.from_url(redis_url)
    client.xadd("inspect:{main}:frames", corrupt("not_msgpack"))
    ran = runner.invoke(main, ["run", "--redis-url", redis_url, "--engine", str(tiny_engine), "--burst"])
    assert ran.exit_code == 0, ran.output
    stems = sorted(p.stem for p in (sample_dir / "images").iterdir())[:6]
    got = events(client)
    assert [e["frame_id"] for e in got[:6]] == [f"cam-7-{stem}-{i}" for i, stem in enumerate(stems)]

    shown = runner.invoke(main, ["events", "--redis-url", redis_url])
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if " seq " in line]
    assert len(lines) == 7 and "7 event(s) shown of 7" in shown.output
    for line, event in zip(lines, got, strict=True):
        assert event["frame_id"] in line and event["status"] in line
        if event["status"] == "ok":
            assert f"[{event['model']}]" in line
            for d in event["defects"]:
                assert f"class {d['class_id']}: {d['area']} px" in line
            if not event["defects"]:
                assert "no defect" in line
    rejected = runner.invoke(main, ["events", "--redis-url", redis_url, "--status", "rejected"])
    rows = [line for line in rejected.output.splitlines() if " seq " in line]
    assert len(rows) == 1 and "rejected" in rows[0] and "msgpack" in rows[0]
    two = runner.invoke(main, ["events", "--redis-url", redis_url, "--camera", "cam-7", "--count", "2"])
    rows = [line for line in two.output.splitlines() if " seq " in line]
    assert [got[4]["frame_id"] in rows[0], got[5]["frame_id"] in rows[1]] == [True, True]


def test_follow_prints_events_as_they_come(redis_url, tiny_engine, sample_dir) -> None:
    client = redis.Redis.from_url(redis_url)
    runner = CliRunner()
    assert runner.invoke(main, ["feed", "--redis-url", redis_url, "--folder", str(sample_dir / "images"),
                                "--count", "2"]).exit_code == 0
    assert runner.invoke(main, ["run", "--redis-url", redis_url, "--engine", str(tiny_engine),
                                "--burst"]).exit_code == 0
    key = "inspect:{main}:events"
    first = client.xrange(key)
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        for _, event in eventlog.follow(client, key, first[-1][0].decode(), eventlog.Filter(), block_ms=100,
                                        stop=done.is_set):
            seen.append(event["frame_id"])
            done.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    client.xadd(key, first[0][1])  # an event entry arriving later (the first one's fields again)
    watcher.join(60)
    assert seen == [events(client)[0]["frame_id"]]


def test_feed_at_a_folder_without_images_is_one_line(redis_url, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("no frames here")
    out = CliRunner().invoke(main, ["feed", "--redis-url", redis_url, "--folder", str(tmp_path), "--count", "1"])
    assert out.exit_code == 78 and out.output.count("\n") == 1
    assert "no .jpg/.png images" in out.output and "Traceback" not in out.output
