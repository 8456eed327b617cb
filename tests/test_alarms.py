"""Alarm rules as data: each kind fires once when its condition starts and clears once when it ends."""

from __future__ import annotations

import dataclasses
import re

import pytest

from inspector import config as config_mod
from inspector.alarms import AlarmBook, Facts, evaluate
from inspector.config import AlarmRule
from inspector.errors import ConfigError
from inspector.line.geometry import StripDefect
from inspector.line.periodic import Finding

T0 = 1_700_000_000.0


def _defect(i: int, cls: int, y_mm: float, x_mm: float = 800.0, area: float = 100.0,
            surface: str = "top") -> StripDefect:
    return StripDefect(i, cls, surface, x_mm - 5, x_mm + 5, y_mm - 5, y_mm + 5, area, 1, ("top-1",))


BASE = Facts(now=T0, started=T0 - 100, coil="C1", length_mm=20_000.0, cameras=("top-1", "top-2"),
             last_seen={"top-1": T0, "top-2": T0}, coverage={"top-1": 1.0, "top-2": 1.0}, workers_live=1)
MARK = Finding(4, "top", 800.0, 1885.0, "work-top", 4, 300.0, 0, (1, 2, 3, 4))

# rule, facts where it holds, the alarm id, a word its text must carry
CASES = [
    # a large class-4 defect anywhere on the coil
    (AlarmRule("big", "defect", class_id=4, min_area_mm2=5000),
     dataclasses.replace(BASE, defects=[_defect(1, 4, 3000, area=6000)]), "big@C1", "6000 mm²"),
    # the same rule limited to a zone across: the defect at 800 mm is inside [700, 900]
    (AlarmRule("zone", "defect", zone_mm=(700.0, 900.0)),
     dataclasses.replace(BASE, defects=[_defect(1, 3, 3000, x_mm=800)]), "zone@C1", "700-900 mm across"),
    # density: 4 defects in the last 2 m = 2 per metre
    (AlarmRule("dense", "density", per_metre=2.0, window_m=2.0),
     dataclasses.replace(BASE, defects=[_defect(i, 3, 18_500 + 300 * i) for i in range(4)]), "dense@C1",
     "per metre"),
    # a periodic mark found
    (AlarmRule("mark", "periodic", class_id=4), dataclasses.replace(BASE, findings=[MARK]), "mark@C1", "work-top"),
    # coverage below the floor after 5 m
    (AlarmRule("cover", "coverage", floor=0.9), dataclasses.replace(BASE, coverage={"top-1": 0.5, "top-2": 1.0}),
     "cover@C1/top-1", "50%"),
    # a camera silent for 12 s
    (AlarmRule("quiet", "camera_silent", silent_s=10),
     dataclasses.replace(BASE, last_seen={"top-1": T0, "top-2": T0 - 12}), "quiet/top-2", "top-2"),
    # no live worker
    (AlarmRule("worker", "worker_not_ready"), dataclasses.replace(BASE, workers_live=0), "worker", "0 worker"),
]


@pytest.mark.parametrize(("rule", "holding", "alarm_id", "word"), CASES, ids=[c[0].name for c in CASES])
def test_each_rule_fires_once_and_clears_once(rule: AlarmRule, holding: Facts, alarm_id: str, word: str) -> None:
    book = AlarmBook()
    assert evaluate([rule], BASE) == {}  # the condition does not hold on the quiet line
    assert book.update(evaluate([rule], BASE), T0) == []
    fired = book.update(evaluate([rule], holding), T0 + 1)
    assert [(t.state, t.id) for t in fired] == [("fired", alarm_id)]
    assert word in fired[0].text and rule.name in fired[0].text
    assert book.update(evaluate([rule], holding), T0 + 2) == []  # still holding: not fired again
    cleared = book.update(evaluate([rule], BASE), T0 + 3)
    assert [(t.state, t.id) for t in cleared] == [("cleared", alarm_id)]
    assert book.update(evaluate([rule], BASE), T0 + 4) == []


def test_below_the_limits_nothing_fires() -> None:
    rules = [AlarmRule("big", "defect", class_id=4, min_area_mm2=5000),
             AlarmRule("zone", "defect", zone_mm=(0.0, 100.0)),  # the defect sits at 800 mm
             AlarmRule("dense", "density", per_metre=2.0, window_m=2.0),
             AlarmRule("old", "defect", window_m=5.0),  # the defect lies 17 m back
             AlarmRule("cover", "coverage", floor=0.9, after_m=25.0)]  # coil only 20 m so far
    facts = dataclasses.replace(BASE, defects=[_defect(1, 4, 3000, area=4999)], coverage={"top-1": 0.5})
    assert evaluate(rules, facts) == {}


def test_clear_after_s_keeps_a_flapping_condition_one_alarm() -> None:
    rule = AlarmRule("dense", "density", per_metre=2.0, window_m=2.0, clear_after_s=5.0)
    dense = dataclasses.replace(BASE, defects=[_defect(i, 3, 18_500 + 300 * i) for i in range(4)])
    book = AlarmBook(clear_after_s={"dense": 5.0})
    states = [[t.state for t in book.update(evaluate([rule], facts), T0 + k)]
              for k, facts in enumerate([dense, BASE, dense, BASE, BASE, BASE, BASE, BASE, BASE])]
    # fired at 0; gone at 1 and back at 2 (not cleared); gone from 3: cleared 5 s later, at 8
    assert states == [["fired"], [], [], [], [], [], [], [], ["cleared"]]


def test_the_next_coil_is_a_new_condition() -> None:
    rule = AlarmRule("mark", "periodic")
    book = AlarmBook()
    book.update(evaluate([rule], dataclasses.replace(BASE, findings=[MARK])), T0)
    moved = book.update(evaluate([rule], dataclasses.replace(BASE, coil="C2", findings=[MARK])), T0 + 1)
    assert [(t.state, t.id) for t in moved] == [("cleared", "mark@C1"), ("fired", "mark@C2")]


def test_a_camera_never_seen_counts_from_the_start() -> None:
    rule = AlarmRule("quiet", "camera_silent", silent_s=10)
    facts = dataclasses.replace(BASE, last_seen={"top-1": T0})
    assert list(evaluate([rule], facts)) == ["quiet/top-2"]
    assert list(evaluate([rule], dataclasses.replace(facts, started=T0 - 5))) == []
    # without line.cameras, every camera seen is watched; with it, only the placed ones (a one-off name is not)
    assert list(evaluate([rule], dataclasses.replace(facts, cameras=(), last_seen={"x": T0 - 20}))) == ["quiet/x"]
    assert list(evaluate([rule], dataclasses.replace(BASE, last_seen={**BASE.last_seen, "warmup": T0 - 99}))) == []


@pytest.mark.parametrize(("rules", "key"), [
    ([{"name": "x", "kind": "density"}], "alarms.rules.x.per_metre"),  # density without a rate
    ([{"name": "x", "kind": "coverage"}], "alarms.rules.x.floor"),  # coverage without a floor
    ([{"name": "x", "zone_mm": [900, 100]}], "alarms.rules.x.zone_mm"),  # zone backwards
    ([{"name": "x"}, {"name": "x"}], "alarms.rules.x"),  # the same name twice
    ([{"name": "x", "kind": "loud"}], "alarms.rules.kind"),  # an unknown kind
    ([{"kind": "defect"}], "alarms.rules[].name"),  # no name
    ([{"name": "x", "class_id": 5}], "alarms.rules.class_id"),  # no such class
])
def test_bad_rules_name_the_key(rules: list[dict], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        config_mod.from_dict({"alarms": {"rules": rules}})


def test_default_rules_load() -> None:
    cfg = config_mod.from_dict({})
    assert {r.kind for r in cfg.alarms.rules} == {"defect", "density", "periodic", "coverage", "camera_silent",
                                                  "worker_not_ready"}


def test_shipped_yaml_states_the_defaults() -> None:
    from conftest import ROOT

    shipped, built_in = config_mod.load(ROOT / "config" / "inspector.yaml"), config_mod.from_dict({})
    for section in ("worker", "preview", "alarms", "screen", "opcua"):
        assert getattr(shipped, section) == getattr(built_in, section), section


@pytest.mark.parametrize(("data", "key"), [
    ({"preview": {"every_s": 0}}, "preview.every_s"),  # at least once in a while
    ({"preview": {"quality": 101}}, "preview.quality"),
    ({"preview": {"key_prefix": "inspect:{other}:preview"}}, "preview.key_prefix"),  # another line's slot
    ({"alarms": {"key": "inspect:{other}:alarms"}}, "alarms.key"),
    ({"screen": {"address": "localhost"}}, "screen.address"),  # no port
    ({"opcua": {"endpoint": "http://0.0.0.0:4840/"}}, "opcua.endpoint"),  # not opc.tcp
])
def test_screen_sections_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        config_mod.from_dict(data)
