"""The line layer's pure parts: frame keys, records, geometry, roll marks, grades, report files (no Redis)."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from inspector import config
from inspector.config import CameraPlacement, GradeLimits
from inspector.errors import ConfigError, DecodeError
from inspector.feed import messages, synthetic_payloads
from inspector.line import geometry, grade, periodic, records
from inspector.line.geometry import StripDefect
from inspector.line.records import Record
from inspector.protocol import FRAME_FIELD, parse_frame, placement

CAMS = {"top-1": CameraPlacement("top", 0.0, 1.0, 1.0), "top-2": CameraPlacement("top", 1590.0, 1.0, 1.0),
        "bot-1": CameraPlacement("bottom", 0.0, 0.5, 2.0)}


def frame_fields(**over) -> dict[bytes, bytes]:
    msg = next(messages(synthetic_payloads(0, 1), "cam"))
    body = msgpack.unpackb(msg.pack(), raw=False)
    body.update(over)
    return {FRAME_FIELD: msgpack.packb(body, use_bin_type=True)}


def test_frames_without_coil_keys_are_still_valid_and_with_them_carry_them() -> None:
    assert parse_frame(frame_fields()).coil is None and parse_frame(frame_fields()).pos_mm is None
    m = parse_frame(frame_fields(coil="C-17", pos_mm=1234))
    assert m.coil == "C-17" and m.pos_mm == 1234.0 and isinstance(m.pos_mm, float)
    assert parse_frame({FRAME_FIELD: m.pack()}) == m  # the round trip keeps them


@pytest.mark.parametrize("over, words", [
    ({"coil": 123}, "'coil' must be a string"),                 # wrong type
    ({"coil": True}, "'coil' must be a string"),                # bool is not a string
    ({"coil": ""}, "1..64 characters, got 0"),                  # empty
    ({"coil": "x" * 100_000}, "got 100000 characters"),        # a 100 KB id
    ({"coil": b"C1"}, "got bytes"),                             # bytes, not str
    ({"pos_mm": -1.0}, "'pos_mm' must be a finite number >= 0"),  # negative position
    ({"pos_mm": float("nan")}, "'pos_mm' must be a finite"),   # NaN
    ({"pos_mm": float("inf")}, "'pos_mm' must be a finite"),   # infinity
    ({"pos_mm": "12"}, "got str"),                              # a string
    ({"pos_mm": False}, "got False"),                           # bool is not a number
])
def test_hostile_coil_keys_are_decode_errors(over: dict, words: str) -> None:
    fields = frame_fields(**{"coil": "C1", "pos_mm": 10.0, **over})
    with pytest.raises(DecodeError, match="frame key") as err:
        parse_frame(fields)
    assert words in str(err.value)
    coil, pos = placement(fields)  # what the rejected event echoes: the valid key only
    assert (coil is None) == ("coil" in over) and (pos is None) == ("pos_mm" in over)


def test_records_round_trip_and_hostile_events_are_acked_with_a_reason() -> None:
    from inspector.line.synth import event

    ok = records.parse("5-0", event("top-1", "C1", 256.0, [(3, 10, 20, 5, 6)]), CAMS)
    assert ok.kind == records.STORE and ok.coil == "C1" and ok.ms == 5
    (r,) = records.decode_log(ok.record)
    assert r == Record(5, "top-1", 256.0, True, (3, 10, 20, 5, 6, 30))
    assert records.parse("1-0", event("cam-x", "C1", 0.0), CAMS).kind == records.UNKNOWN_CAMERA
    assert records.parse("1-0", event("top-1", "C1", None), CAMS).kind == records.UNPLACED
    assert records.parse("1-0", event("top-1", None, 0.0), CAMS).kind == records.ACK
    hostile = [None, {}, {b"e": b"\xc1garbage"}, {b"e": msgpack.packb([1, 2])},
               {b"e": msgpack.packb({"coil": "x" * 100_000, "camera": "top-1", "status": "ok"})},
               {b"e": msgpack.packb({"coil": 5, "camera": "top-1", "status": "ok"})},
               {b"e": msgpack.packb({"coil": "C", "camera": "top-1", "status": "ok", "pos_mm": -3.0})},
               {b"e": msgpack.packb({"coil": "C", "camera": "top-1", "status": "ok", "pos_mm": 1.0,
                                     "defects": [{"class_id": 9, "components": []}]})},
               {b"e": msgpack.packb({"coil": "C", "camera": "top-1", "status": "ok", "pos_mm": 1.0,
                                     "defects": [{"class_id": 1, "components": [[1, 2, 3]]}]})}]
    for fields in hostile:
        got = records.parse("1-0", fields, CAMS)
        assert got.kind == records.ACK and got.reason, fields


def rec(camera: str, pos: float, *boxes: tuple[int, int, int, int, int], ok: bool = True) -> Record:
    return Record(0, camera, pos, ok, tuple(v for b in boxes for v in (*b, b[3] * b[4])))


def test_pixels_to_strip_millimetres() -> None:
    (p,) = geometry.parts([rec("bot-1", 1000.0, (2, 10, 20, 4, 5))], CAMS)
    assert (p.surface, p.x0, p.x1, p.y0, p.y1, p.area_mm2) == ("bottom", 5.0, 7.0, 1040.0, 1050.0, 20.0)


def test_a_defect_across_a_frame_boundary_and_one_across_a_seam_are_one_each() -> None:
    recs = [rec("top-1", 0.0, (3, 1580, 100, 20, 30)), rec("top-2", 0.0, (3, 0, 100, 20, 30)),  # seam
            rec("top-2", 256.0, (2, 800, 236, 10, 20)), rec("top-2", 512.0, (2, 800, 0, 10, 30)),  # boundary
            rec("top-1", 512.0, (2, 800, 0, 10, 30), (2, 812, 0, 10, 30))]  # same frame: two components stay two
    merged = geometry.merge(geometry.parts(recs, CAMS), 1.0)
    seam = [d for d in merged if d.class_id == 3]
    assert len(seam) == 1 and (seam[0].x0, seam[0].x1, seam[0].parts) == (1580.0, 1610.0, 2)
    assert seam[0].cameras == ("top-1", "top-2")
    boundary = [d for d in merged if d.class_id == 2 and d.x0 > 1590]
    assert len(boundary) == 1 and (boundary[0].y0, boundary[0].y1, boundary[0].length_mm) == (492.0, 542.0, 50.0)
    assert boundary[0].area_mm2 == 500.0
    assert len([d for d in merged if d.class_id == 2 and d.x0 < 1590]) == 2
    assert [d.id for d in merged] == list(range(1, len(merged) + 1))


def test_coverage_and_gaps_from_missing_and_rejected_frames() -> None:
    recs = [rec("top-1", k * 256.0, ok=k != 3) for k in range(10) if k not in (6, 7)]
    fraction, gaps = geometry.coverage(recs, "top-1", 256.0, 2560.0, 1.0)
    assert gaps == [(768.0, 1024.0), (1536.0, 2048.0)] and fraction == pytest.approx(1 - 768 / 2560)
    jittered = [rec("top-1", k * 256.0 + (0.4 if k % 2 else 0.0)) for k in range(10)]  # encoder jitter, no gap
    assert geometry.coverage(jittered, "top-1", 256.0, 2560.0, 1.0) == (1.0, [])


def defect(i: int, y: float, x: float, cls: int = 1, surface: str = "top") -> StripDefect:
    return StripDefect(i, cls, surface, x - 5, x + 5, y - 5, y + 5, 100.0, 1, ("top-1",))


LINE = config.LineConfig(rolls_mm={"work-top": 1884.96, "backup": 4712.39})


def test_a_roll_mark_with_a_missed_repeat_is_found_and_named() -> None:
    ys = [500 + k * 1884.96 for k in range(6) if k != 2]  # the third repeat missed (a rejected frame)
    rng = np.random.default_rng(1)
    noise = [defect(100 + i, float(rng.uniform(0, 12000)), float(rng.uniform(0, 1600))) for i in range(40)]
    found = periodic.find([defect(i, y, 700.0 + (i % 3)) for i, y in enumerate(ys)] + noise, 12000.0, LINE)
    (f,) = found
    assert (f.class_id, f.surface, f.roll, f.repeats, f.missed) == (1, "top", "work-top", 5, 1)
    assert abs(f.pitch_mm - 1884.96) < 1 and abs(f.x_mm - 701) < 1 and f.first_mm == 500.0


def test_a_pitch_no_roll_explains_is_found_with_roll_null() -> None:
    (f,) = periodic.find([defect(i, 300 + i * 1234.5, 200.0, cls=4) for i in range(4)], 6000.0, LINE)
    assert f.roll is None and f.pitch_mm == pytest.approx(1234.5, abs=0.1) and f.repeats == 4


def test_no_mark_in_random_defects_nor_below_min_repeats() -> None:
    rng = np.random.default_rng(3)
    randoms = [defect(i, float(rng.uniform(0, 1e6)), float(rng.uniform(0, 1600)), cls=int(rng.integers(1, 5)))
               for i in range(3000)]
    assert periodic.find(randoms, 1e6, LINE) == []
    assert periodic.find([defect(0, 100, 50), defect(1, 1984.96, 50)], 5000, LINE) == []  # two are not a mark


@pytest.mark.slow
def test_roll_marks_and_merging_on_a_coil_of_200000_defects() -> None:
    """Bounded cost: 200,000 defects on a 5 km coil, one mark at the work roll's pitch, runs (O(n log n))."""
    rng = np.random.default_rng(7)
    n = 200_000
    ys, xs = rng.uniform(0, 5e6, n), rng.uniform(0, 1600, n)
    cls = rng.integers(1, 5, n)
    parts = [geometry.Part(int(c), "top", "top-1", i, float(x), float(x) + 3, float(y), float(y) + 3, 9.0)
             for i, (c, x, y) in enumerate(zip(cls, xs, ys, strict=True))]
    parts += [geometry.Part(2, "top", "top-1", n + k, 1200.0, 1206.0, 1000 + k * 1884.96, 1006 + k * 1884.96, 36.0)
              for k in range(0, 2600) if k % 7]  # every seventh turn missed
    merged = geometry.merge(parts, 1.0)
    assert len(merged) > 190_000
    found = periodic.find(merged, 5e6, LINE)
    marks = [f for f in found if f.roll == "work-top"]
    assert len(marks) == 1 and marks[0].class_id == 2 and marks[0].repeats > 2000
    assert abs(marks[0].pitch_mm - 1884.96) < 0.5


def test_grade_is_the_first_whose_limits_hold_and_says_which_limit_decided() -> None:
    line = config.LineConfig(grades=(GradeLimits("A", {"3": 5}, {"3": 100}, 0, 0.9), GradeLimits("B", {}, {}, 0),
                                     GradeLimits("C", {}, {}, 5)))
    clean = grade.measures([], [], {"top-1": 1.0}, 100_000.0)
    assert grade.grade(clean, line) == grade.Grade("A", "every limit of grade A holds")
    many = grade.measures([defect(i, i * 10.0, 10.0, cls=3) for i in range(6)], [], {"top-1": 1.0}, 100_000.0)
    assert grade.grade(many, line) == grade.Grade("B", "grade A refused: class 3: 6.0 defects per 100 m > 5")
    blind = grade.measures([], [], {"top-1": 0.5}, 100_000.0)
    assert grade.grade(blind, line).decided_by == "grade A refused: coverage of top-1: 0.500 < 0.9"
    mark = periodic.Finding(1, "top", 10.0, 1884.9, "work-top", 4, 10.0, 0, (1, 2, 3, 4))
    marked = grade.measures([], [mark], {"top-1": 1.0}, 100_000.0)
    assert grade.grade(marked, line) == grade.Grade("C", "grade B refused: periodic marks: 1 > 0")
    assert grade.grade(grade.measures([], [mark] * 6, {}, 1.0), line).grade == "hold"


@pytest.mark.parametrize("data, key", [
    ({"line": {"cameras": {"top-1": {"surface": "side"}}}}, "line.cameras.top-1.surface"),
    ({"line": {"cameras": {"top-1": {"mm_per_px_across": 0}}}}, "line.cameras.top-1.mm_per_px_across"),
    ({"line": {"cameras": {"top-1": {"x_ofset_mm": 0}}}}, "line.cameras.top-1.x_ofset_mm"),
    ({"line": {"rolls_mm": {"work-top": -1}}}, "line.rolls_mm.work-top"),
    ({"line": {"rolls_mm": ["a"]}}, "line.rolls_mm"),
    ({"line": {"periodic_min_repeats": 1}}, "line.periodic_min_repeats"),
    ({"line": {"grades": [{"name": "A", "max_per_100m": {"5": 1}}]}}, "line.grades.A.max_per_100m.5"),
    ({"line": {"grades": [{"max_periodic": 0}]}}, "line.grades[].name"),
    ({"coils": {"batch_size": 0}}, "coils.batch_size"),
    ({"coils": {"metrics_address": "nope"}}, "coils.metrics_address"),
    ({"coils": {"event_key": "x"}}, "coils.event_key"),
])
def test_line_config_errors_are_one_line_naming_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_dict(data)
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


def test_file_stems_are_safe_for_any_coil_id() -> None:
    from inspector.line.report import stem

    assert stem("C-2026.001_a") == "C-2026.001_a"
    for hostile in ("../../etc/passwd", "a/b", ".hidden", "x\x00y", "ü"):
        s = stem(hostile)
        assert "/" not in s and not s.startswith(".") and s.isascii() and len(s) < 90
    assert stem("a/b") != stem("a_b")  # a replaced character never makes two coils share files
    assert math.isfinite(len(stem("x" * 64)))
