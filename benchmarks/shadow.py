"""What a shadow engine costs the live line: `inspector bench` in memory (the same frames, the same engine), once
without a shadow and once with `engine.shadow` (the same engine as candidate: the cost is the point, not the
agreement) at a budget of 10% of the live engine's time, sampling every frame so that the budget is what binds.
Runs alternate (off, on, off, on, ...) so that drift on a shared VM falls on both.

    python benchmarks/shadow.py [--frames 400] [--rounds 2] [--budget 0.1]

Writes benchmarks/results/shadow_cpu.json: per run fps, engine fps and their ratio, and with the shadow the frames
it compared and the share of live engine time it spent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector import bench, config  # noqa: E402


def run(frames: int, shadow: str | None, budget: float, report: Path) -> dict:
    over = {"engine__path": str(ROOT / "engines" / "current")}
    if shadow:
        over.update(engine__shadow=shadow, engine__shadow_every=1, engine__shadow_budget=budget,
                    engine__shadow_report=str(report), engine__shadow_summary_s=3600.0)
    result = bench.offline(config.load(**over), frames)
    row = {k: result[k] for k in ("fps", "engine_fps", "fps_over_engine_fps", "frames", "wall_s")}
    if shadow:
        r = json.loads(report.read_text())
        infer_s = result["stage_ms_per_frame"]["infer"] * result["frames"] / 1000
        row.update(shadow_frames_compared=r["frames_compared"], shadow_counts=r["counts"],
                   shadow_seconds=r["shadow_seconds"], shadow_ms_per_frame=r["ms_per_frame"],
                   shadow_share_of_live_engine_time=round(r["shadow_seconds"] / infer_s, 3) if infer_s else None)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shadow_cpu.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report = Path(args.out).with_suffix(".report.tmp.json")
    shadow = str((ROOT / "engines" / "current").resolve())
    runs = []
    for i in range(args.rounds):
        for with_shadow in (False, True):
            row = {"round": i, "shadow": with_shadow, **run(args.frames, shadow if with_shadow else None,
                                                             args.budget, report)}
            print(json.dumps(row), flush=True)
            runs.append(row)
    report.unlink(missing_ok=True)
    off = [r["fps_over_engine_fps"] for r in runs if not r["shadow"]]
    on = [r["fps_over_engine_fps"] for r in runs if r["shadow"]]
    out = {"benchmark": "shadow", "frames": args.frames, "budget": args.budget, "runs": runs,
           "fps_over_engine_fps": {"without_shadow": off, "with_shadow": on, "min_with_shadow": min(on)},
           **bench.environment()}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"fps / engine fps: without shadow {off}, with the shadow at {args.budget:.0%}: {on} -> {args.out}")


if __name__ == "__main__":
    main()
