"""The learning loop end to end, timed (README "Learning from the line"):

    worker (`inspector run`, capture on) <- real frames -> capture/<day> -> `trainer review` (accept all)
        -> `trainer train --data capture/<day>` (config/trainer-cpu-demo.yaml, a few steps)
        -> `trainer build-engine` (installs engines/current) -> the running worker swaps to it

Everything runs in a temporary folder against a private redis-server: a copy of the shipped engine as the
worker's engines/current, the worker as its own process, each trainer step as the command an engineer types.
The retrain is a few steps only: it shows the loop works, not a better model. Writes
benchmarks/results/learn_loop_<cpu|gpu>.json with each step's seconds.

    python benchmarks/learn_loop.py [--frames 24] [--steps 4] [--out benchmarks/results/learn_loop_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.bench import environment  # noqa: E402
from inspector.capture.names import day_of  # noqa: E402
from inspector.feed import feed, folder_payloads, messages, redis_adder  # noqa: E402
from inspector.io.redis_server import PrivateRedis  # noqa: E402
from inspector.protocol import EVENT_FIELD, unpack_event  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "severstal-sample" / "images"


def wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"learn_loop: timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)


def step(name: str, cmd: list[str], times: dict[str, float], log: Path) -> str:
    """Run one command as an engineer would type it; returns its last line of output."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    times[name] = round(time.perf_counter() - t0, 2)
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n{done.stderr}{done.stdout}")
    if done.returncode:
        raise SystemExit(f"learn_loop: {name} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    print(f"{name}: {times[name]} s", flush=True)
    return (done.stdout.strip().splitlines() or [""])[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--images", default=str(SAMPLE))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import redis
    import torch

    kind = "gpu" if torch.cuda.is_available() else "cpu"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"learn_loop_{kind}.json")
    work = Path(tempfile.mkdtemp(prefix="learn-loop-"))
    log = work / "log.txt"
    server = PrivateRedis()
    url = server.start()
    worker = None
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    try:
        shipped = (ROOT / "engines" / "current").resolve()
        engines = work / "engines"
        engines.mkdir()
        shutil.copytree(shipped, engines / shipped.name)
        (engines / "current").symlink_to(shipped.name)
        capture = work / "capture"
        # require_gate off and --no-gate below: a 4-step retrain on pseudo-labels is the loop's mechanics, not a
        # candidate for a line (the gate would rightly refuse it: README "The quality gate")
        settings = {"redis": {"url": url}, "engine": {"path": str(engines / "current"), "watch_every_s": 1.0,
                                                      "require_gate": False},
                    "capture": {"enabled": True, "folder": str(capture), "sample_every": 1,
                                "sample_per_hour": 100_000, "evidence": True},
                    "metrics": {"report_every_s": 5.0}}
        (work / "inspector.yaml").write_text(yaml.safe_dump(settings))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        with open(work / "worker.log", "w") as worker_log:  # the child keeps its own copy of the descriptor
            worker = subprocess.Popen([sys.executable, "-m", "inspector.cli", "run", "--config",
                                       str(work / "inspector.yaml")], stdout=worker_log, stderr=subprocess.STDOUT,
                                      env=env, cwd=ROOT)
        client = redis.Redis.from_url(url)
        events_key = "inspect:{main}:events"

        def events() -> list[dict]:
            return [unpack_event(f[EVENT_FIELD]) for _, f in client.xrange(events_key)]

        add = redis_adder(client, "inspect:{main}:frames")
        payloads = folder_payloads(args.images, "original")
        start = time.time()
        feed(add, messages(payloads, "line-cam"), args.frames)
        day = capture / day_of(start)
        wait(lambda: (day / "meta.jsonl").exists() and len((day / "meta.jsonl").read_text().splitlines())
             >= args.frames, 300, f"{args.frames} captured frames")
        times["worker_capture"] = round(time.perf_counter() - t0, 2)
        first = events()
        old_model = first[0]["model"]
        print(f"worker_capture: {times['worker_capture']} s ({len(first)} events from {old_model})", flush=True)
        trainer = [sys.executable, "-m", "trainer.cli"]
        reviewed = json.loads(step("review", [*trainer, "review", "--data", str(day), "--out", str(work / "review")],
                                   times, log))
        step("train", [*trainer, "train", "--data", str(day), "--out", str(work / "run"), "--config",
                       str(ROOT / "config" / "trainer-cpu-demo.yaml"), "--max-steps", str(args.steps)], times, log)
        step("build_engine", [*trainer, "build-engine", "--checkpoint", str(work / "run" / "best.pt"),
                              "--engines", str(engines), "--format", "onnx", "--data", str(day),
                              "--parity-frames", "4", "--no-gate"], times, log)
        new_folder = (engines / "current").resolve()
        t0 = time.perf_counter()
        seq = [args.frames]

        def swapped() -> bool:  # keep frames coming until an event names the new engine
            feed(add, messages(payloads, "line-cam", start_seq=seq[0]), 2)
            seq[0] += 2
            return any(e["model"] == new_folder.name for e in events())

        wait(swapped, 120, f"an event from {new_folder.name}")
        times["swap"] = round(time.perf_counter() - t0, 2)
        print(f"swap: {times['swap']} s", flush=True)
        wait(lambda: len(events()) >= seq[0], 120, "one event per frame fed")
        everything = events()
        result = {
            "frames_fed": seq[0], "events": len(everything), "captured": len((day / "meta.jsonl").read_text()
                                                                            .splitlines()),
            "evidence_crops": sum(1 for p in (capture / "evidence").rglob("*.jpg")),
            "review": reviewed, "train_steps": args.steps, "old_model": old_model, "new_model": new_folder.name,
            "events_from_new_model": sum(e["model"] == new_folder.name for e in everything),
            "step_seconds": times, "total_seconds": round(time.perf_counter() - t_all, 2),
            "note": "a few training steps: the loop works end to end; the model is not meant to be better",
            **environment(),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("step_seconds", "total_seconds", "new_model")}))
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
