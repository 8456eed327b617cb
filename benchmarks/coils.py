"""The line service's cost: events/s folded by one `inspector coils`, the replicas 3,000 frames/s takes, and a
200,000-defect coil's Redis memory and report time. Writes benchmarks/results/coils_cpu.json (and, with --docs,
the strip map and page in docs/ from a synthetic four-camera coil).

    python benchmarks/coils.py [--events 20000] [--docs]

Runs against a private redis-server; the service runs in this process (one loop thread, as `inspector coils`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector import config  # noqa: E402
from inspector.bench import environment  # noqa: E402
from inspector.io.redis_server import PrivateRedis  # noqa: E402
from inspector.line import report as reporting  # noqa: E402
from inspector.line import synth  # noqa: E402
from inspector.line.records import pack_end  # noqa: E402
from inspector.line.service import LineService  # noqa: E402

ROLL = 1884.96
TWO = {"top-1": {"surface": "top", "x_offset_mm": 0.0}, "top-2": {"surface": "top", "x_offset_mm": 1590.0}}
FOUR = {**TWO, "bottom-1": {"surface": "bottom", "x_offset_mm": 0.0},
        "bottom-2": {"surface": "bottom", "x_offset_mm": 1590.0}}


def cfg_for(url: str, reports: Path, cameras: dict, **coils: object) -> config.Config:
    return config.from_dict({"redis": {"url": url},
                             "line": {"cameras": cameras, "rolls_mm": {"work-top": ROLL}, "end_grace_s": 0.0},
                             "coils": {"reports_dir": str(reports), "close_every_s": 3600.0, **coils}})


def fill(client: redis.Redis, events, key: str = "inspect:events") -> int:
    n, pipe = 0, client.pipeline(transaction=False)
    for fields in events:
        pipe.xadd(key, fields)
        n += 1
        if n % 1000 == 0:
            pipe.execute()
    pipe.execute()
    return n


def fold_rate(url: str, tmp: Path, total: int) -> dict:
    """Events queued up front (coils of 2 cameras x 100 frames, ~2 defects a frame), folded flat out."""
    client = redis.Redis.from_url(url)
    client.flushall()
    cfg = cfg_for(url, tmp / "fold", TWO)
    coils = math.ceil(total / 200)
    n = fill(client, (f for c in range(coils) for f in synth.coil(f"F{c:04d}", cfg.line.cameras, 100, seed=c)))
    client.config_resetstat()
    service = LineService(cfg)
    t0 = time.perf_counter()
    while service.step():
        pass
    fold_s = time.perf_counter() - t0
    stats = client.info("commandstats")
    scripts = {k: v for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")}
    redis_usec = sum(v["usec"] for v in scripts.values())
    service.close()
    rate = n / fold_s
    return {"events": n, "coils": coils, "fold_s": round(fold_s, 2), "events_per_s": round(rate),
            "batch_size": cfg.coils.batch_size, "redis_script_usec_per_event": round(redis_usec / n, 2),
            "replicas_for_3000_frames_per_s": math.ceil(3000 / rate),
            "redis_bound_events_per_s": round(1e6 / (redis_usec / n)) if redis_usec else None}


def big_coil(url: str, tmp: Path) -> dict:
    """One coil of 200,000 defects: 2 cameras x 4,000 frames (1,024 m) x 25 defects, a roll mark."""
    client = redis.Redis.from_url(url)
    client.flushall()
    cfg = cfg_for(url, tmp / "big", TWO)
    mark = synth.Mark(4, 800.0, ROLL, 300.0)
    n = fill(client, synth.coil("BIG", cfg.line.cameras, 4000, defects_per_frame=25, seed=1, mark=mark))
    client.xadd("inspect:coil-ends", pack_end("BIG", 4000 * 256.0))
    service = LineService(cfg)
    t0 = time.perf_counter()
    while service.step():
        pass
    fold_s = time.perf_counter() - t0
    log_bytes = client.memory_usage("inspect:line:log:BIG")
    meta_bytes = client.memory_usage("inspect:line:meta:BIG")
    components = len(client.get("inspect:line:log:BIG"))  # bytes; the count comes from the report below
    state = service.store.state("BIG")
    t1 = time.perf_counter()
    rep = reporting.build(state, cfg, "coil-end")
    build_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    reporting.write_files(rep, time.time(), "0-0", cfg)
    files_s = time.perf_counter() - t2
    t3 = time.perf_counter()
    service.close_due(force=True)  # the real close: build again, fenced XADD, files, free
    close_s = time.perf_counter() - t3
    parts = sum(1 for _ in rep.defects)
    s = rep.summary
    sizes = {p.suffix: p.stat().st_size for p in (tmp / "big").iterdir()}
    service.close()
    return {"events": n, "defects_placed": parts, "log_bytes": components,
            "redis_memory_bytes": log_bytes + meta_bytes, "redis_memory_mb": round((log_bytes + meta_bytes) / 1e6, 2),
            "bytes_per_defect": round((log_bytes + meta_bytes) / parts, 1), "fold_s": round(fold_s, 2),
            "report_build_s": round(build_s, 2), "files_s": round(files_s, 2), "close_s": round(close_s, 2),
            "periodic": s["periodic"], "file_bytes": sizes,
            "freed": not client.exists("inspect:line:log:BIG")}


def docs(url: str, tmp: Path) -> None:
    """docs/coil-report.png and .html: a synthetic 60 m coil on four cameras (both surfaces), a roll mark, a
    camera that lost 5 frames, 3 rejected frames."""
    client = redis.Redis.from_url(url)
    client.flushall()
    cfg = cfg_for(url, tmp / "docs", FOUR)
    cams = cfg.line.cameras
    mark = synth.Mark(4, 2400.0, ROLL, 700.0, size_px=30)
    pipe = client.pipeline(transaction=False)
    for i, fields in enumerate(synth.coil("D-2026-0412", cams, 234, defects_per_frame=1.2, seed=4, mark=mark)):
        cam, k = list(cams)[i % 4], i // 4
        if cam == "bottom-2" and 60 <= k < 65:
            continue  # never reached the stream
        if cam == "top-1" and k in (150, 151, 152):
            fields = synth.event(cam, "D-2026-0412", k * 256.0, status="rejected", seq=k, error="bad frame")
        pipe.xadd("inspect:events", fields)
    pipe.xadd("inspect:coil-ends", pack_end("D-2026-0412", 234 * 256.0))
    pipe.execute()
    service = LineService(cfg)
    service.run(burst=True, handle_signals=False)
    service.close()
    shutil.copy(tmp / "docs" / "D-2026-0412.png", ROOT / "docs" / "coil-report.png")
    shutil.copy(tmp / "docs" / "D-2026-0412.html", ROOT / "docs" / "coil-report.html")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--docs", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "coils_cpu.json"))
    args = ap.parse_args()
    with PrivateRedis(maxmemory="4gb") as url, tempfile.TemporaryDirectory() as tmp:
        if args.docs:
            docs(url, Path(tmp))
        fold = fold_rate(url, Path(tmp), args.events)
        print("fold:", json.dumps(fold), flush=True)
        big = big_coil(url, Path(tmp))
        print("200,000-defect coil:", json.dumps(big), flush=True)
        server = redis.Redis.from_url(url).info("server")["redis_version"]
    result = {"fold": fold, "coil_200k": big, "redis_server": server, **environment()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
