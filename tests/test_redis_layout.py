"""The key layout (inspector/io/keys.py): every key of a line carries its hash tag; how the names before it map
(README "Scaling past one Redis", checked against its table); standalone users keep their old names; the
config errors that keep a line in one hash slot; the template unit's instance names."""

from __future__ import annotations

import logging
import re

import pytest
import redis
from conftest import ROOT, drain, events, make_cfg
from test_redis_scale import add_frames

from inspector import config
from inspector.errors import ConfigError
from inspector.io.keys import LEGACY, hash_tag, line_key
from inspector.io.redis_streams import RedisStreams
from inspector.pipeline import from_config


def readme_mapping() -> dict[str, str]:
    """README's table of the names before the line layout -> the names now (first two columns)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Scaling past one Redis"):]
    section = section[:section.index("\n## ", 5)]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", section, re.M)
    assert rows, "README's Scaling section lost its key table"
    return dict(rows)


def test_readme_table_is_the_layout() -> None:
    keys = config.load().redis.keys()
    now = {LEGACY["frames_key"]: keys.frames, LEGACY["events_key"]: keys.events, LEGACY["dead_key"]: keys.dead,
           "inspect:stats:<consumer>": keys.stats("<consumer>"),
           "inspect:stats:alive:<group>:<consumer>": keys.alive("<consumer>").replace("inspectors", "<group>"),
           "inspect:stats:camera:<group>:<camera>": keys.camera("<camera>")[0].replace("inspectors", "<group>")}
    assert readme_mapping() == now
    assert {hash_tag(k) for k in now.values()} == {"main"}  # one slot for all of a line's keys


def test_every_key_of_a_line_shares_its_slot() -> None:
    keys = config.load(None, redis__line="hot-strip", redis__mode="cluster").redis.keys()
    names = [keys.frames, keys.events, keys.dead, keys.stats("w"), keys.alive("w"), *keys.camera("c"),
             keys.named("coils"), keys.named("coil-ends")]
    assert {hash_tag(n) for n in names} == {"hot-strip"}
    assert keys.named("coils") == line_key("hot-strip", "coils") == "inspect:{hot-strip}:coils"


def test_old_names_keep_working_in_standalone(redis_url, tiny_engine) -> None:
    """A config/inspector.yaml from before redis.line names the old keys: the worker uses them as they are."""
    client = redis.Redis.from_url(redis_url)
    old = {f"redis__{field}": name for field, name in LEGACY.items()}
    add_frames(client, 6, key="inspect:frames", skip={3})
    cfg = make_cfg(redis_url, tiny_engine, **old)
    pipe = from_config(cfg)
    drain(pipe)
    pipe.sink.report({"frames": 5.0})
    pipe.close()
    assert len(events(client, "inspect:events")) == 6 and client.xlen("inspect:{main}:events") == 0
    assert client.hget("inspect:frames:camera:inspectors:cam", "gaps") == b"1"  # camera state beside its stream
    assert client.exists("inspect:stats:test-worker")
    assert not any(b"{main}" in k for k in client.scan_iter())


def test_frames_left_on_the_old_name_are_pointed_out(redis_url, tiny_engine, caplog) -> None:
    client = redis.Redis.from_url(redis_url)
    add_frames(client, 2, key="inspect:frames")  # cameras still on the name before redis.line
    source = RedisStreams(make_cfg(redis_url, tiny_engine).redis)
    with caplog.at_level(logging.WARNING):
        source.wait_ready(5)
    source.close()
    assert "inspect:frames" in caplog.text and "redis.frames_key" in caplog.text and "RENAME" in caplog.text


@pytest.mark.parametrize("over, words", [
    # (config, words of the one-line error)
    ({"redis__mode": "cluster", "redis__frames_key": "inspect:frames"}, ["'redis.frames_key'", "{main}"]),  # no tag
    ({"redis__mode": "cluster", "redis__stats_key": "stats"}, ["'redis.stats_key'", "inspect:{main}:stats"]),
    ({"redis__line": "b", "redis__events_key": "inspect:{a}:events"}, ["'redis.events_key'", "{a}", "{b}"]),
    ({"redis__line": "a:{b}"}, ["'redis.line'"]),                                 # a tag inside the tag
    ({"redis__line": ""}, ["'redis.line'"]),
    ({"redis__mode": "cluster", "redis__url": "redis://h:7000/3"}, ["'redis.url'", "database 0"]),
    ({"redis__mode": "sentinel"}, ["'redis.sentinels'"]),
    ({"redis__mode": "sentinel", "redis__sentinels": ["h:26379"]}, ["'redis.sentinel_service'"]),
    ({"redis__mode": "sentinel", "redis__sentinels": ["h"], "redis__sentinel_service": "s"}, ["HOST:PORT"]),
    ({"redis__mode": "raft"}, ["'redis.mode'", "standalone, cluster, sentinel"]),
    ({"redis__min_replicas_acked": 1, "redis__replica_wait_ms": 20_000}, ["'redis.replica_wait_ms'"]),
])
def test_layout_mistakes_are_one_line_naming_the_key(over, words) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(None, **over)
    text = str(err.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_cluster_accepts_tagged_keys_and_standalone_any() -> None:
    assert config.load(None, redis__mode="cluster", redis__frames_key="cams:{main}:in").redis.keys().frames == \
        "cams:{main}:in"
    assert config.load(None, redis__frames_key="anything").redis.keys().frames == "anything"


def test_template_unit_instance_is_line_and_worker() -> None:
    from click.testing import CliRunner

    from inspector.cli import _instance, main

    unit = (ROOT / "config" / "inspector@.service").read_text()
    assert "--instance %i" in re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
    assert _instance("hot-strip-1", None, None) == ("hot-strip", 1)
    assert _instance("main-0", None, None) == ("main", 0)
    for bad in ("main", "main-x", "-1"):
        out = CliRunner().invoke(main, ["run", "--instance", bad])
        assert out.exit_code == 2 and "LINE-N" in out.output
