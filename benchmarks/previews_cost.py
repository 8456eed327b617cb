"""What the operator previews cost the worker: `inspector bench` (offline, the same frames, the same engine) with
preview.enabled off and on, interleaved, plus the two per-preview costs measured alone: the consumer thread's
part (`PreviewTap.finished` per record) and the render thread's (decode, masks, downscale, JPEG).

    python benchmarks/previews_cost.py [--frames 400] [--rounds 1] [--engine engines/current]

Writes benchmarks/results/previews_<device>.json. The acceptance: fps / engine fps with previews on stays at least
0.95 of the same figure with them off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector import config as config_mod  # noqa: E402
from inspector import rle, synth  # noqa: E402
from inspector.bench import environment, offline  # noqa: E402
from inspector.decode import encode  # noqa: E402
from inspector.io.base import Entry  # noqa: E402
from inspector.pipeline import FrameRecord  # noqa: E402
from inspector.preview import MemoryPreviews, PreviewTap, render  # noqa: E402
from inspector.protocol import Defect, FrameMessage  # noqa: E402

KEEP = ("fps", "engine_fps", "fps_over_engine_fps", "latency_ms_p50", "latency_ms_p99", "frames", "wall_s",
        "preview_counts", "backend", "device", "model", "batch_size")


def alone(cfg: config_mod.Config) -> dict[str, float]:
    """Per record: the tap's consumer-thread cost; per preview: render time and size (a real frame's defects)."""
    frame = synth.frame(0, 3)
    image = frame.image
    msg = FrameMessage("f", "cam", 0, time.time(), image.shape[0], image.shape[1], "jpeg", encode(image, "jpeg"))
    tap = PreviewTap(cfg.preview, MemoryPreviews())
    records = [FrameRecord(Entry(f"1-{i}", {}), msg) for i in range(8)]
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        tap.finished(records, None)  # type: ignore[arg-type]  # all but the first are not due: the common case
    finished_us = (time.perf_counter() - t0) / (n * len(records)) * 1e6
    tap.close()
    defects = [Defect(c + 1, rle.encode(m), int(m.sum()), 0.9, []) for c, m in enumerate(frame.masks) if m.any()]
    times, size = [], 0
    for _ in range(30):
        t0 = time.perf_counter()
        size = len(render(msg, defects, cfg.preview))
        times.append(time.perf_counter() - t0)
    return {"tap_finished_us_per_record": round(finished_us, 3), "render_ms": round(1000 * statistics.median(times), 2),
            "preview_bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--engine", default="engines/current")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for state in ("off", "on"):
            cfg = config_mod.load(None, engine__path=args.engine, engine__device=args.device,
                                  preview__enabled=state == "on")
            result = offline(cfg, args.frames)
            runs[state].append({k: result[k] for k in KEEP})
            print(state, {k: result[k] for k in ("fps", "engine_fps", "fps_over_engine_fps")}, flush=True)
    ratio = {s: round(statistics.median(r["fps_over_engine_fps"] for r in rs), 3) for s, rs in runs.items()}
    device = runs["on"][0]["device"].split(":")[0]
    out = {"benchmark": "previews_cost", "frames": args.frames, "rounds": args.rounds, "runs": runs,
           "fps_over_engine_fps_off": ratio["off"], "fps_over_engine_fps_on": ratio["on"],
           "on_over_off": round(ratio["on"] / ratio["off"], 3), "alone": alone(config_mod.load(None)),
           **environment()}
    path = Path(args.out or ROOT / "benchmarks" / "results" / f"previews_{device}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("fps_over_engine_fps_off", "fps_over_engine_fps_on", "on_over_off",
                                          "alone")}))


if __name__ == "__main__":
    main()
