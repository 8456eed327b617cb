"""End to end: frames with coil and position through the worker (a tiny real engine) and `inspector coils`."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
import redis
import yaml
from click.testing import CliRunner
from conftest import drain, events, make_cfg

from inspector.cli import main
from inspector.feed import redis_adder, synthetic_payloads
from inspector.line.records import pack_end
from inspector.pipeline import from_config
from inspector.protocol import FRAME_FIELD, FrameMessage

pytestmark = pytest.mark.redis


def test_frames_with_coil_and_position_become_one_report(redis_url, tiny_engine, tmp_path) -> None:
    client = redis.Redis.from_url(redis_url)
    payloads = synthetic_payloads(0, 4)
    frames = []
    for k in range(6):
        for cam in ("top-1", "bot-1"):
            data, enc, h, w = payloads[k % 4]
            frames.append({FRAME_FIELD: FrameMessage(f"{cam}-{k}", cam, k, 1.0, h, w, enc, data, coil="E2E-1",
                                                     pos_mm=k * 256.0).pack()})
    hostile = [FrameMessage("h1", "top-1", 90, 1.0, 256, 1600, "gray8", payloads[0][0], coil="x" * 100_000,
                            pos_mm=0.0),
               FrameMessage("h2", "top-1", 91, 1.0, 256, 1600, "gray8", payloads[0][0], coil="E2E-1", pos_mm=-1.0)]
    frames += [{FRAME_FIELD: m.pack()} for m in hostile]
    redis_adder(client, "inspect:{main}:frames")(frames)
    drain(from_config(make_cfg(redis_url, tiny_engine)))
    got = events(client)
    assert len(got) == 14 and all(e["v"] == 2 for e in got)
    ok = [e for e in got if e["status"] == "ok"]
    assert len(ok) == 12 and {(e["coil"], e["pos_mm"]) for e in ok} == {("E2E-1", k * 256.0) for k in range(6)}
    bad = {e["frame_id"]: e for e in got if e["status"] == "rejected"}
    assert bad["h1"]["coil"] is None and "'coil'" in bad["h1"]["error"]  # a 100 KB id: rejected, not echoed
    assert bad["h2"]["coil"] == "E2E-1" and bad["h2"]["pos_mm"] is None and "'pos_mm'" in bad["h2"]["error"]
    client.xadd("inspect:{main}:coil-ends", pack_end("E2E-1", 6 * 256.0))

    cfg = tmp_path / "line.yaml"
    cfg.write_text(yaml.safe_dump({
        "line": {"cameras": {"top-1": {"surface": "top"}, "bot-1": {"surface": "bottom"}}, "end_grace_s": 0},
        "coils": {"reports_dir": str(tmp_path / "reports")}}))
    result = CliRunner().invoke(main, ["coils", "--config", str(cfg), "--redis-url", redis_url, "--burst"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output.strip().splitlines()[-1])
    assert stats["folded"] == 13 and stats["reports"] == 1  # 12 frames + the placed-less rejected one
    (entry,) = [msgpack.unpackb(f[b"c"], raw=False) for _, f in client.xrange("inspect:{main}:coils")]
    assert entry["coil"] == "E2E-1" and entry["length_mm"] == 1536.0
    assert entry["coverage"] == {"bot-1": 1.0, "top-1": 1.0} and entry["unplaced_events"] == 1
    assert entry["frames"] == {"bot-1": {"ok": 6, "rejected": 0}, "top-1": {"ok": 6, "rejected": 0}}
    components = sum(len(d["components"]) for e in ok for d in e["defects"])
    assert 0 < sum(entry["defects"].values()) <= components or components == 0  # merging only joins parts
    for suffix in (".json", ".png", ".html"):
        assert Path(entry["report"] + suffix).stat().st_size > 0


def test_coils_config_error_is_one_line(tmp_path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("line:\n  cameras:\n    top-1: {surface: side}\n")
    result = CliRunner().invoke(main, ["coils", "--config", str(cfg)])
    assert result.exit_code == 78
    assert result.output.strip().splitlines() == [
        "Error: ConfigError: config key 'line.cameras.top-1.surface' is out of range: use one of top, bottom"]
