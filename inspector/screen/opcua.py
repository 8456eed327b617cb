"""The line's state for a PLC or SCADA over OPC UA (asyncua), served by `inspector screen` with opcua.endpoint set.

Address space (namespace opcua.namespace; README "OPC UA nodes"):

    Objects/SteelInspector/<line>            object, event notifier: InspectorAlarmEventType events
        CurrentCoil        String    the coil the cameras are on ("" before the first)
        RunningGrade       String    the grade the coil would get if it ended now
        CoilLength_m       Double    how far along the coil the frames reach
        Defects/Class1..4  UInt32    defects per class on the current coil (merged on the strip)
        ActiveAlarms       String[]  the text of each active alarm
        ActiveAlarmCount   UInt32
        WorkerReady        Boolean   at least one worker live and ready (its heartbeat present)
        WorkersReady       UInt32
        LastEventTime      DateTime  the newest event's publish time (UTC)

Every variable is read-only for clients (asyncua's default access level: CurrentRead); only this process writes.
Each alarm transition is one event: Message = the alarm's text, Severity 700 fired / 100 cleared, and the
properties AlarmId, State (fired | cleared), Rule. Runs on the screen's event loop; asyncua imported here only.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from inspector.config import CLASS_KEYS, Config
from inspector.screen.view import Snapshot, counts

log = logging.getLogger(__name__)
EVENT_TYPE = "InspectorAlarmEventType"
SEVERITY = {"fired": 700, "cleared": 100}


class OpcuaPublisher:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.server: Any = None
        self.nodes: dict[str, Any] = {}
        self.generator: Any = None
        self._last: dict[str, Any] = {}

    async def start(self) -> None:
        from asyncua import Server, ua

        if not log.isEnabledFor(logging.DEBUG):  # asyncua logs every standard node it adds (a thousand lines)
            logging.getLogger("asyncua").setLevel(logging.WARNING)
        server = Server()
        await server.init()
        server.set_endpoint(self.cfg.opcua.endpoint)
        server.set_server_name(f"steel-inspector line {self.cfg.redis.line}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(self.cfg.opcua.namespace)
        root = await server.nodes.objects.add_folder(idx, "SteelInspector")
        line = await root.add_object(idx, self.cfg.redis.line)
        defects = await line.add_folder(idx, "Defects")
        V = ua.VariantType
        spec: list[tuple[Any, str, Any, Any]] = [
            (line, "CurrentCoil", "", V.String), (line, "RunningGrade", "", V.String),
            (line, "CoilLength_m", 0.0, V.Double), (line, "ActiveAlarms", [], V.String),
            (line, "ActiveAlarmCount", 0, V.UInt32), (line, "WorkerReady", False, V.Boolean),
            (line, "WorkersReady", 0, V.UInt32),
            (line, "LastEventTime", datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC), V.DateTime),
            *[(defects, f"Class{k}", 0, V.UInt32) for k in CLASS_KEYS]]
        for parent, name, value, kind in spec:
            self.nodes[name] = await parent.add_variable(idx, name, ua.Variant(value, kind))
        etype = await server.create_custom_event_type(idx, EVENT_TYPE, ua.ObjectIds.BaseEventType, [
            ("AlarmId", V.String), ("State", V.String), ("Rule", V.String)])
        self.generator = await server.get_event_generator(etype, line)
        self.kinds = {name: kind for _parent, name, _value, kind in spec}
        await server.start()
        self.server = server
        log.info("OPC UA on %s: namespace %s, object SteelInspector/%s", self.cfg.opcua.endpoint,
                 self.cfg.opcua.namespace, self.cfg.redis.line)

    async def update(self, snapshot: Snapshot) -> None:
        from asyncua import ua

        d = snapshot.data
        coil = d.get("coil") or {}
        ready = sum(1 for w in d.get("workers", []) if w.get("ready"))
        last = d.get("last_event_ts")
        values: dict[str, Any] = {
            "CurrentCoil": coil.get("coil") or "", "RunningGrade": coil.get("grade") or "",
            "CoilLength_m": float(coil.get("length_mm") or 0.0) / 1000, "ActiveAlarms": [a["text"] for a in
                                                                                            d.get("alarms", [])],
            "ActiveAlarmCount": len(d.get("alarms", [])), "WorkerReady": ready > 0, "WorkersReady": ready,
            **{f"Class{k}": n for k, n in counts(d).items()},
        }
        if last:
            values["LastEventTime"] = datetime.datetime.fromtimestamp(last, datetime.UTC)
        for name, value in values.items():
            if self._last.get(name) != value:
                await self.nodes[name].write_value(ua.Variant(value, self.kinds[name]))
                self._last[name] = value
        for t in snapshot.transitions:
            event = self.generator.event
            event.Message = ua.LocalizedText(t.text)
            event.Severity = SEVERITY[t.state]
            event.AlarmId, event.State, event.Rule = t.id, t.state, t.rule
            await self.generator.trigger(message=t.text)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
