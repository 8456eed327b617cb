"""The capture size caps under a long run: the demo (private Redis, two synthetic cameras at the demo's rate, the
shipped engine, the coils service) with every capture policy and evidence crops on, and caps far below what the run
writes (default 2 MB of frames, 1 MB of crops), for 30 minutes. A sampler measures both folders every 2 s.

    python benchmarks/capture_cap.py [--seconds 1800] [--max-mb 2] [--evidence-max-mb 1]

Writes benchmarks/results/capture_cap_cpu.json: the caps, the largest sizes seen, what the writer kept and
dropped. A cap holds when the largest size seen stays within it: the writer deletes whole days, oldest first
(never the day being written), and when that is not enough refuses the write (`over_cap`), so within one day
(this run) the cap fills and later captures are dropped and counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector import bench, config  # noqa: E402
from inspector import demo as demoing  # noqa: E402


def size(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except FileNotFoundError:  # deleted by the writer's cap while we walked
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1800.0)
    ap.add_argument("--max-mb", type=float, default=2.0)
    ap.add_argument("--evidence-max-mb", type=float, default=1.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "capture_cap_cpu.json"))
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="capture-cap-"))
    cfg = demoing.with_capture(config.load(engine__path=str(ROOT / "engines" / "current"),
                                           engine__require_gate=False), str(folder))
    cfg = config.replace(cfg, capture={"max_bytes": int(args.max_mb * 1e6),
                                       "evidence_max_bytes": int(args.evidence_max_mb * 1e6)})
    stop = threading.Event()
    seen = {"frames": 0, "evidence": 0, "samples": 0}

    def sample() -> None:
        while not stop.wait(2.0):
            evidence = folder / "evidence"
            frames_bytes = size(folder) - (size(evidence) if evidence.exists() else 0)
            seen["frames"] = max(seen["frames"], frames_bytes)
            seen["evidence"] = max(seen["evidence"], size(evidence) if evidence.exists() else 0)
            seen["samples"] += 1

    lines: list[str] = []
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    demoing.run(cfg, cfg.camera.fps, args.seconds, out=lambda s: lines.append(s), every_s=60.0)
    stop.set()
    sampler.join()
    result = {
        "benchmark": "capture_cap", "seconds": round(time.monotonic() - t0, 1), "fps_per_camera": cfg.camera.fps,
        "cap_bytes": cfg.capture.max_bytes, "evidence_cap_bytes": cfg.capture.evidence_max_bytes,
        "largest_frames_bytes_seen": seen["frames"], "largest_evidence_bytes_seen": seen["evidence"],
        "samples": seen["samples"], "final_frames_bytes": size(folder) - size(folder / "evidence"),
        "final_evidence_bytes": size(folder / "evidence"),
        "demo_lines": [x for x in lines if x.startswith(("final:", "capture", "captures"))],
        **bench.environment(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("environment", "machine", "versions")}, indent=2))


if __name__ == "__main__":
    main()
