"""The GPU acceptance run, built for one chance: ordered steps, each in its own process with its own time box, and
the whole JSON rewritten into the output folder after every step (and before it: a step the run dies in says so).

PREPARE ONCE, on the machine that calls the device tool, from the checkout the tool sends (its root):
    bash ../shared/device/prepare-carry.sh hiredis==3.5.0
  It writes .whl/ (segmentation-models-pytorch, redis, hiredis for Python 3.12: 1.0 MB) and .deb/ (a Redis server:
  1.3 MB), both git-ignored, and prints the line that installs them there. (Run it in a full checkout: in a git
  worktree `.git` is a file and its `.git/info/exclude` line fails; .gitignore ignores both anyway.) What travels:
  the checkout (about 29 MB: the demo engine's 26 MB included, and the 8 real frames of benchmarks/data/severstal-8)
  + .whl + .deb, well inside the tool's 64 MiB. The image already has torch, cupy, scipy, timm, numpy, OpenCV, ONNX,
  ONNX Runtime, pytest, pytest-timeout, prometheus-client, msgpack, pyyaml, click; it has no TensorRT and no CV-CUDA
  (the cvcuda wheel, 103-128 MB, does not fit): those steps say so and skip.
THE ONE COMMAND (device tool):
    run(command="<the line prepare-carry.sh printed> PYTHONUNBUFFERED=1 bash benchmarks/gpu_acceptance.sh
        --out $OUT", carry=[".whl", ".deb"], timeout_s=600)
  $OUT/gpu_acceptance.json and $OUT/gpu_acceptance.log come back; commit the JSON as
  benchmarks/results/gpu_acceptance_h200.json.

    python benchmarks/gpu_acceptance.py --cpu-check --out /tmp/acc   # every step on the CPU, tiny sizes: checks
                                                                     # this script; no figure is a GPU figure

Steps, in order, with their boxes (seconds; printed at the start of each): see STEPS. The boxes add up to 530 s,
under the tool's 600 s per command with the install line before it, and `--budget` (default 545 s from this
script's start) shrinks a step's box to what is left, or skips it, so the run ends in time whatever hangs. The
sanitizer step runs last. A step's own error, a cut step's partial result and its output tail are all in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEP_SCRIPT = Path(__file__).resolve().parent / "gpu_steps.py"
NAME = "gpu_acceptance.json"

STEPS: list[tuple[str, int, str]] = [  # name, box (s), what
    ("environment", 25, "GPU, driver, torch, CuPy, which labeller and engine runtimes import"),
    ("engine_demo", 50, "ms per batch 1..32, the trained demo engine on torch FP16 (its checkpoint), CUDA graphs"),
    ("engine_resnet18", 50, "ms per batch 1..32, an untrained Unet-resnet18, built here without a quality gate"),
    ("gpu_tests", 140, "pytest -m 'gpu or tensorrt', PYTHONPATH extended"),
    ("postprocess", 45, "analyse_device per batch of 32 on real masks, adversarial shapes and the demo engine's "
                        "output, bit for bit against analyse_cpu, against 10% of the engine"),
    ("labeller_worst_case", 35, "the device labeller on spirals, zigzags, noise, full maps: 4 to 128 maps"),
    ("syncs", 35, "host syncs per batch in the pipeline (step()), implicit and explicit"),
    ("bench_flat", 55, "inspector bench --redis, demo engine flat out, JPEG, p50 / p99"),
    ("bench_800", 50, "inspector bench --redis at 800 frames/s offered, p50 / p99"),
    ("sanitizer", 45, "TORCH_CUDA_SANITIZER=1, step() in the main thread, graphs and eager"),
]
ENV = {"sanitizer": {"TORCH_CUDA_SANITIZER": "1"}}  # per-step environment (GPU mode only)


def write(out: Path, doc: dict[str, Any]) -> None:
    """The whole JSON, atomically (a reader never sees half a file)."""
    tmp = out / f".{NAME}.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, out / NAME)


def run_step(name: str, box: float, out: Path, cpu: bool, doc: dict[str, Any], log: Any) -> dict[str, Any]:
    """One step in its own process (its own session: the whole tree is ended at the box); its result file, exit
    status and output tail."""
    result = Path(tempfile.mkdtemp(prefix="gpu-step-")) / "result.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    if not cpu:
        env.update(ENV.get(name, {}))
    cmd = [sys.executable, str(STEP_SCRIPT), name, "--result", str(result), "--out", str(out), "--box", str(box)]
    proc = subprocess.Popen(cmd + (["--cpu-check"] if cpu else []), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    doc["steps"][name] = {"status": "running", "box_s": round(box, 1), "pid": proc.pid,
                          "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write(out, doc)
    tail: list[str] = []

    def pump() -> None:
        for raw in proc.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace")
            tail.append(line)
            del tail[:-60]
            log.write(line)
            sys.stdout.write(f"  {name}| {line}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=box)
    except subprocess.TimeoutExpired:
        code = None
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
    reader.join(timeout=2.0)
    entry: dict[str, Any] = {"box_s": round(box, 1), "wall_s": round(time.monotonic() - t0, 1), "pid": proc.pid,
                             "returncode": code, "output_tail": "".join(tail)[-2500:]}
    try:
        entry["result"] = json.loads(result.read_text())
    except (OSError, json.JSONDecodeError):
        entry["result"] = None
    failed = code != 0 or (entry["result"] or {}).get("error")
    entry["status"] = "timed out" if code is None else "error" if failed else "ok"
    if code is None:
        entry["error"] = f"still running after its box of {box:.0f} s: ended (partial result kept)"
    return entry


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, from whichever steps have run."""
    def res(step: str) -> dict[str, Any]:
        return (doc["steps"].get(step) or {}).get("result") or {}

    out: dict[str, Any] = {"status": {name: step.get("status") for name, step in doc["steps"].items()}}
    env = res("environment")
    out["gpu"] = env.get("gpu")
    out["labeller"] = (env.get("labeller") or {}).get("name")
    for step in ("engine_demo", "engine_resnet18"):
        out[f"{step}_ms_per_batch"] = res(step).get("ms_per_batch")
    out["gpu_tests"] = res("gpu_tests").get("counts")
    cases = res("postprocess").get("cases") or {}
    out["postprocess_ms_per_batch"] = {case: {path: v.get("ms_per_batch", v.get("error")) for path, v in row.items()
                                              if isinstance(v, dict)} for case, row in cases.items()}
    out["postprocess_engine_ms_at_batch"] = res("postprocess").get("engine_ms_at_batch")
    out["labeller_worst_case_ms"] = res("labeller_worst_case").get("ms_per_call")
    out["syncs_per_batch"] = {k: res("syncs").get(k) for k in ("implicit_per_batch", "explicit_per_batch")}
    for step in ("bench_flat", "bench_800"):
        out[step] = {k: res(step).get(k) for k in ("fps", "latency_ms_p50", "latency_ms_p99", "frames",
                                                   "stopped_at_deadline")}
    reserved = {s: res(s).get("max_memory_reserved_gib") for s in doc["steps"] if res(s).get("max_memory_reserved_gib")}
    out["max_memory_reserved_gib"] = {"max": max(reserved.values()) if reserved else None, "by_step": reserved}
    sanitizer = res("sanitizer")
    out["sanitizer"] = {k: (sanitizer.get(k) or {}).get("errors", "not run") for k in ("graphs", "eager")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_acceptance.json and gpu_acceptance.log")
    ap.add_argument("--cpu-check", action="store_true", help="every step on the CPU, tiny sizes (no GPU figure)")
    ap.add_argument("--steps", help="comma-separated subset (and sleep:N, for tests), in this order")
    ap.add_argument("--box", action="append", default=[], metavar="STEP=SECONDS", help="override a step's box")
    ap.add_argument("--budget", type=float, help="seconds for the whole run (default 545; --cpu-check 1500)")
    args = ap.parse_args()
    t_start = time.monotonic()
    budget = args.budget or (1500.0 if args.cpu_check else 545.0)
    boxes = {name: float(box) for name, box, _ in STEPS}
    if args.cpu_check:
        boxes = {name: box * 2.5 for name, box in boxes.items()}  # a 2-core CPU is slower at everything
    order = args.steps.split(",") if args.steps else [name for name, _, _ in STEPS]
    for item in args.box:
        step, _, seconds = item.rpartition("=")
        boxes[step] = float(seconds)
    unknown = [n for n in order if n not in boxes and not n.startswith("sleep:")]
    if unknown:
        sys.exit(f"unknown step(s) {', '.join(unknown)}: valid steps are {', '.join(n for n, _, _ in STEPS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"benchmark": "gpu_acceptance",
                           "mode": "cpu-check: not a GPU figure" if args.cpu_check else "gpu", "budget_s": budget,
                           "order": order, "boxes_s": {n: boxes.get(n, 60.0) for n in order},
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": {}}
    print(f"gpu acceptance ({doc['mode']}): {len(order)} steps, boxes add up to "
          f"{sum(doc['boxes_s'].values()):.0f} s, budget {budget:.0f} s; results in {out / NAME}", flush=True)
    write(out, doc)
    with open(out / "gpu_acceptance.log", "a", buffering=1) as log:
        for i, name in enumerate(order, 1):
            left = budget - (time.monotonic() - t_start)
            box = min(doc["boxes_s"][name], left - 2.0)
            if left < 7.0:
                doc["steps"][name] = {"status": "skipped", "error": f"{left:.0f} s of the budget left"}
            else:
                print(f"== [{i}/{len(order)}] {name}: box {box:.0f} s ({left:.0f} s of the budget left)", flush=True)
                log.write(f"== {name} (box {box:.0f} s)\n")
                doc["steps"][name] = run_step(name, box, out, args.cpu_check, doc, log)
                step = doc["steps"][name]
                print(f"== {name}: {step['status']} in {step['wall_s']} s"
                      + (f": {step.get('error') or (step['result'] or {}).get('error')}" if step["status"] != "ok"
                         else ""), flush=True)
            env = (doc["steps"].get("environment") or {}).get("result") or {}
            doc.update({k: env[k] for k in ("machine", "commit", "versions") if k in env})
            doc["summary"] = summary(doc)
            doc["total_s"] = round(time.monotonic() - t_start, 1)
            write(out, doc)
    print(json.dumps(doc["summary"], indent=1, default=str)[:6000])
    print(f"results in {out / NAME} ({doc['total_s']} s)")


if __name__ == "__main__":
    main()
