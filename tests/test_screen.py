"""`inspector screen` against a real Redis: the state it reads (a coil folded by the real line service), the
alarms it writes once, and an OPC UA client (asyncua) reading its variables and receiving an alarm event."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from pathlib import Path

import msgpack
import pytest
import redis
from conftest import wait_for

from inspector import config
from inspector.line import synth
from inspector.line.service import LineService
from inspector.screen.app import Screen

pytestmark = pytest.mark.redis
CAMERAS = {"top-1": {"surface": "top", "x_offset_mm": 0.0}, "top-2": {"surface": "top", "x_offset_mm": 1590.0}}
ALIVE = "inspect:{main}:frames:alive:inspectors:w-0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(url: str, tmp: Path, **more: object) -> config.Config:
    return config.from_dict({
        "redis": {"url": url}, "line": {"cameras": CAMERAS, "rolls_mm": {"work-top": 1884.96}},
        "coils": {"reports_dir": str(tmp / "reports")}, "screen": {"address": "127.0.0.1:0", "every_s": 0.2},
        "alarms": {"rules": [{"name": "worker-not-ready", "kind": "worker_not_ready"},
                             {"name": "roll-mark", "kind": "periodic"}]}, **more})


def _fold_coil(cfg: config.Config, client: redis.Redis, name: str = "C1") -> None:
    mark = synth.Mark(4, 800.0, 1884.96, 300.0, size_px=16)
    for fields in synth.coil(name, cfg.line.cameras, 30, defects_per_frame=1.0, seed=3, mark=mark):
        client.xadd("inspect:{main}:events", fields)
    service = LineService(cfg)
    try:
        service.store.wait_ready(5)
        while service.step(block_ms=None):
            pass
    finally:
        service.close()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


def test_screen_reads_the_coil_and_writes_each_alarm_once(redis_url, tmp_path) -> None:
    client = redis.Redis.from_url(redis_url)
    cfg = _cfg(redis_url, tmp_path)
    _fold_coil(cfg, client)
    screen = Screen(cfg)
    base = screen.start()
    try:
        wait_for(lambda: _get(base + "state").get("coil", {}).get("coil") == "C1", 30, "the coil on the screen")
        state = _get(base + "state")
        coil = state["coil"]
        assert coil["length_mm"] == 30 * 256 and coil["periodic"] and coil["boxes"]
        assert {a["id"] for a in state["alarms"]} == {"worker-not-ready", "roll-mark@C1"}
        client.set(ALIVE, b"1")  # a worker comes up: its alarm clears
        wait_for(lambda: {a["id"] for a in _get(base + "state")["alarms"]} == {"roll-mark@C1"}, 30, "a clear")
        entries = [msgpack.unpackb(f[b"a"], raw=False) for _, f in client.xrange("inspect:{main}:alarms")]
        assert [(e["state"], e["id"]) for e in entries] == [("fired", "roll-mark@C1"), ("fired", "worker-not-ready"),
                                                          ("cleared", "worker-not-ready")]
        assert client.hkeys("inspect:{main}:alarms:active") == [b"roll-mark@C1"]
        with urllib.request.urlopen(base + "healthz", timeout=10) as reply:
            assert reply.status == 200
    finally:
        screen.stop()
    again = Screen(cfg)  # a restarted screen knows what is active: nothing fired twice
    again.view.poll()
    again.close()
    assert client.xlen("inspect:{main}:alarms") == 3


def test_opcua_variables_and_alarm_events(redis_url, tmp_path) -> None:
    from asyncua import Client, ua

    client = redis.Redis.from_url(redis_url)
    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}/steel-inspector/"
    cfg = _cfg(redis_url, tmp_path, opcua={"endpoint": endpoint})
    _fold_coil(cfg, client)
    screen = Screen(cfg)
    screen.start()
    got: list = []

    class Handler:
        def event_notification(self, event) -> None:
            got.append(event)

    async def session() -> dict:
        async with Client(endpoint, timeout=10) as opc:
            idx = await opc.get_namespace_index("urn:steel-inspector")
            line = await opc.nodes.objects.get_child([f"{idx}:SteelInspector", f"{idx}:main"])
            etype = await opc.nodes.root.get_child(["0:Types", "0:EventTypes", "0:BaseEventType",
                                                     f"{idx}:InspectorAlarmEventType"])
            sub = await opc.create_subscription(50, Handler())
            await sub.subscribe_events(line, etype)

            async def value(name: str):
                return await (await line.get_child(f"{idx}:{name}")).read_value()

            async def until(name: str, want) -> None:
                for _ in range(300):
                    if await value(name) == want:
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{name} never became {want!r} (is {await value(name)!r})")

            await until("CurrentCoil", "C1")
            client.set(ALIVE, b"1")  # the worker comes up: WorkerReady, and worker-not-ready clears (an event)
            await until("WorkerReady", True)
            for _ in range(300):
                if any(getattr(e, "State", None) == "cleared" for e in got):
                    break
                await asyncio.sleep(0.1)
            out = {name: await value(name) for name in ("CurrentCoil", "RunningGrade", "CoilLength_m",
                                                        "ActiveAlarms", "ActiveAlarmCount", "WorkerReady",
                                                        "WorkersReady", "LastEventTime")}
            out["defects"] = [await (await line.get_child([f"{idx}:Defects", f"{idx}:Class{k}"])).read_value()
                              for k in "1234"]
            with pytest.raises(ua.UaStatusCodeError):  # read-only for clients
                await (await line.get_child(f"{idx}:CurrentCoil")).write_value("X")
            await sub.delete()
            return out

    try:
        values = asyncio.run(session())
        state = json.loads(screen.hub.json)
    finally:
        screen.stop()
    coil = state["coil"]
    assert values["CurrentCoil"] == "C1" and values["RunningGrade"] == coil["grade"]
    assert values["CoilLength_m"] == pytest.approx(coil["length_mm"] / 1000)
    assert values["defects"] == [coil["defects"][k] for k in "1234"] and sum(values["defects"]) > 0
    assert values["WorkerReady"] is True and values["WorkersReady"] == 1
    assert values["ActiveAlarmCount"] == 1 and values["ActiveAlarms"][0].startswith("roll-mark: periodic mark")
    assert values["LastEventTime"].year >= 2024
    cleared = [e for e in got if getattr(e, "State", None) == "cleared"]
    assert [e.AlarmId for e in cleared] == ["worker-not-ready"]
    assert cleared[0].Severity == 100 and "worker" in cleared[0].Message.Text


def test_last_defects_carry_evidence_crops_when_events_have_them(redis_url, tmp_path) -> None:
    """Events gain `evidence` (paths of crops, parallel to `components`) with capture on: the screen lists them
    and serves the files from screen.evidence_dir; events without it are shown without."""
    from inspector.protocol import EVENT_FIELD

    client = redis.Redis.from_url(redis_url)
    crops = tmp_path / "capture"
    (crops / "evidence" / "2026-12-03" / "f1").mkdir(parents=True)
    (crops / "evidence" / "2026-12-03" / "f1" / "4_0.jpg").write_bytes(b"\xff\xd8crop\xff\xd9")
    plain = synth.event("top-1", "C9", 0.0, [(4, 10, 10, 20, 20)], seq=0)
    with_crop = msgpack.unpackb(synth.event("top-1", "C9", 256.0, [(4, 10, 10, 20, 20)], seq=1)[EVENT_FIELD])
    with_crop["defects"][0]["evidence"] = ["evidence/2026-12-03/f1/4_0.jpg"]
    client.xadd("inspect:{main}:events", plain)
    client.xadd("inspect:{main}:events", {EVENT_FIELD: msgpack.packb(with_crop)})
    screen = Screen(_cfg(redis_url, tmp_path, screen={"address": "127.0.0.1:0", "every_s": 0.2,
                                                      "evidence_dir": str(crops)}))
    base = screen.start()
    try:
        wait_for(lambda: len(_get(base + "state")["defects"]) == 2, 30, "both defects listed")
        newest, oldest = _get(base + "state")["defects"]
        assert newest["evidence"] == ["evidence/2026-12-03/f1/4_0.jpg"] and oldest["evidence"] == []
        with urllib.request.urlopen(base + "evidence/" + newest["evidence"][0], timeout=10) as reply:  # as the page
            assert reply.read() == b"\xff\xd8crop\xff\xd9"
    finally:
        screen.stop()


def test_cli_refuses_a_bad_address_naming_the_key() -> None:
    from click.testing import CliRunner

    from inspector.cli import EX_CONFIG, main

    result = CliRunner().invoke(main, ["screen", "--address", "localhost"])
    assert result.exit_code == EX_CONFIG and "'screen.address'" in result.output
