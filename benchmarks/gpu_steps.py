"""The steps of the GPU acceptance run, one per process: `benchmarks/gpu_acceptance.py` starts each as

    python benchmarks/gpu_steps.py NAME --result FILE --out DIR [--cpu-check]

and gives it a time box. A step writes its result (JSON) to FILE as it goes, so a step cut at its box still
leaves what it measured; an exception is written there too. `--cpu-check` runs the same code on the CPU with tiny
sizes: it checks this script, and no figure from it is a GPU figure.

Steps (see STEPS): environment, engine_demo, engine_resnet18, gpu_tests, postprocess, labeller_worst_case, syncs,
bench_flat, bench_800, sanitizer; and sleep:N (sleeps N s: the acceptance run's own tests use it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
HEIGHT, WIDTH = 256, 1600
BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32)
CARRIED = ROOT / "benchmarks" / "data" / "severstal-8"  # in the checkout: travels to the GPU machine


@dataclass
class Step:
    """What a step gets: the mode, the run's folder, the earlier steps' results, and `record` to save its own."""

    cpu: bool
    out: Path
    result_file: Path
    earlier: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cpu" if self.cpu else "cuda"

    def record(self, **values: Any) -> None:
        """Add values to this step's result and rewrite its file (what a cut step leaves)."""
        self.result.update(values)
        tmp = self.result_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=2, default=str))
        os.replace(tmp, self.result_file)

    def earlier_result(self, step: str) -> dict[str, Any]:
        return (self.earlier.get("steps", {}).get(step) or {}).get("result") or {}


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def memory(s: Step) -> None:
    import torch

    if not s.cpu:
        s.record(max_memory_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 3),
                 max_memory_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3))


def demo_engine() -> Path:
    """The trained demo engine shipped in engines/ (newest folder; not the `current` link)."""
    folders = sorted(p for p in (ROOT / "engines").iterdir() if not p.is_symlink() and (p / "manifest.json").exists())
    if not folders:
        raise FileNotFoundError(f"no engine folder in {ROOT / 'engines'}")
    return folders[-1]


def real_folder() -> Path:
    shared = ROOT.parent / "shared" / "data" / "severstal-sample"
    return shared if shared.exists() else CARRIED


# -- steps --------------------------------------------------------------------------------------------------------

def environment(s: Step) -> None:
    import platform

    import torch

    from inspector import backends, engines
    from inspector.bench import environment as env
    from inspector.postprocess import labellers

    s.record(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
             cuda_available=torch.cuda.is_available(), cores=len(os.sched_getaffinity(0)), **env())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        s.record(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                 gpu_memory_gib=round(props.total_memory / 2**30, 1))
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            s.record(nvidia_smi=smi.stdout.strip() or smi.stderr.strip())
    modules: dict[str, str] = {}
    for name in ("cupy", "cupyx.scipy.ndimage", "cvcuda", "tensorrt", "onnxruntime", "scipy", "cv2", "redis",
                 "hiredis", "segmentation_models_pytorch", "timm", "pytest", "pytest_timeout"):
        try:
            module = __import__(name, fromlist=["_"])
            modules[name] = str(getattr(module, "__version__", "imports"))
        except Exception as exc:  # what fails to import, and why, is the finding
            modules[name] = f"does not import: {type(exc).__name__}: {exc}"[:200]
    s.record(modules=modules)
    try:
        import onnxruntime

        s.record(onnxruntime_providers=onnxruntime.get_available_providers())
    except ImportError:
        pass
    choice = labellers.choose(s.device)
    host = backends.Host.detect()
    engine = engines.load(demo_engine())
    runtime = backends.resolve(engine.manifest.format, engine.checkpoint is not None, "auto", "auto", host)
    s.record(labeller={"name": choice.name, "why": choice.why},
             cupy_labeller_importable=labellers.importable("cupy"),
             cvcuda_labeller_importable=labellers.importable("cvcuda"),
             host={"cuda": host.cuda, "ort_cuda": host.ort_cuda, "tensorrt": host.tensorrt},
             demo_engine={"id": engine.manifest.engine_id, "backend": runtime.backend, "device": runtime.device,
                          "why": runtime.why},
             redis_server=shutil.which("redis-server"))


def _engine_ms(s: Step, folder: Path, sizes: tuple[int, ...], iters: int) -> None:
    import torch

    from inspector import backends, engines

    engine = engines.load(folder, verify=False)
    t0 = time.perf_counter()
    runner = backends.load(engine, "torch", s.device, graph_batches=() if s.cpu else sizes).activate()
    s.record(engine=engine.manifest.engine_id, activate_s=round(time.perf_counter() - t0, 2), backend=runner.name,
             fp16=getattr(runner, "half", False), graphs=sorted(getattr(runner, "graphs", {})), ms_per_batch={},
             frames_per_s={})
    try:
        for n in sizes:
            x = torch.randint(0, 256, (n, 1, HEIGHT, WIDTH), dtype=torch.uint8, device=s.device)
            for _ in range(2 if s.cpu else 5):
                runner.infer(x)
            sync(s.device)
            t0 = time.perf_counter()
            for _ in range(iters):
                runner.infer(x)
            sync(s.device)
            ms = (time.perf_counter() - t0) / iters * 1000
            s.record(ms_per_batch={**s.result["ms_per_batch"], str(n): round(ms, 3)},
                     frames_per_s={**s.result["frames_per_s"], str(n): round(n / ms * 1000, 1)})
    finally:
        runner.close()
    memory(s)


def engine_demo(s: Step) -> None:
    """The trained demo engine, torch FP16 from its folder's checkpoint (CUDA graphs per bucket)."""
    _engine_ms(s, demo_engine(), (1, 2) if s.cpu else BUCKETS, 1 if s.cpu else 20)


def engine_resnet18(s: Step) -> None:
    """An untrained Unet-resnet18 (the default ModelSpec) in a torch engine folder written here: no quality gate
    (its outputs sit at 0.50 +- 0.02, which any gate would rightly refuse; throughput does not depend on it)."""
    import tempfile

    import torch

    from inspector.model import ModelSpec, build
    from inspector.postprocess import PostprocessParams
    from trainer.train import save_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="resnet18-engine-"))
    torch.manual_seed(0)
    save_checkpoint(folder / "checkpoint.pt", build(ModelSpec()))
    io = {"dtype": "float16", "shape": ["batch", 4, HEIGHT, WIDTH]}
    manifest = {"engine_id": "unet-resnet18-untrained", "format": "torch", "file": "checkpoint.pt",
                "precision": "fp16", "checkpoint": "checkpoint.pt", "max_batch": 32,
                "inputs": [{"name": "frames", "dtype": "uint8", "shape": ["batch", 1, HEIGHT, WIDTH]}],
                "outputs": [{"name": "probs", **io}, {"name": "presence", "dtype": "float16", "shape": ["batch", 4]}],
                "postprocess": PostprocessParams().as_dict()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    try:
        _engine_ms(s, folder, (1, 2) if s.cpu else BUCKETS, 1 if s.cpu else 20)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def gpu_tests(s: Step, box_s: float) -> None:
    """pytest -m "gpu or tensorrt" with PYTHONPATH extended (the carried wheels stay importable); per-test
    outcomes from its JUnit XML."""
    import tempfile
    import xml.etree.ElementTree as ET

    xml = Path(tempfile.mkdtemp()) / "junit.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu or tensorrt", "-p", "no:cacheprovider",
           "--timeout", "120", f"--junitxml={xml}", "tests"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(box_s - 15, 10))
        s.record(returncode=out.returncode, output_tail=(out.stdout + out.stderr)[-3000:])
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        s.record(returncode=None, error=f"pytest still running after {max(box_s - 15, 10):.0f} s",
                 output_tail=text[-3000:])
    if xml.exists():
        outcomes: dict[str, str] = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = f"{child.tag}: {(child.get('message') or '')[:300]}"
            outcomes[name] = outcome
        s.record(tests=outcomes, counts=dict(Counter(v.split(":")[0] for v in outcomes.values())))


def _cases(s: Step, batch: int) -> dict[str, tuple[Any, Any, Any]]:
    """name -> (probs [batch, 4, H, W] on the device, presence or None, params): adversarial shapes, real
    Severstal masks, and the demo engine's own output on real frames."""
    import numpy as np
    import torch
    from test_device_postprocess import adversarial, shaped_probs

    from inspector import backends, engines
    from inspector.postprocess import PostprocessParams
    from trainer.data import load_dataset, masks_of, read_image

    def tile(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a] * (batch // len(a) + 1))[:batch]

    rule = PostprocessParams(thresholds=(0.5,) * 4, min_component_area=(50,) * 4, min_class_area=(200,) * 4,
                             presence_threshold=(0.0,) * 4)
    half = torch.float32 if s.cpu else torch.float16
    cases = {"adversarial": (torch.from_numpy(tile(shaped_probs(list(adversarial(HEIGHT, WIDTH).values()))))
                             .to(s.device, half), None, rule)}
    samples = load_dataset(real_folder())
    masks = np.stack([masks_of(x) for x in samples if x.rles]).astype(bool)
    noise = np.random.default_rng(1).random(masks.shape, dtype=np.float32) * 0.3
    cases["real_masks"] = (torch.from_numpy(tile(np.where(masks, 0.7, 0.0).astype(np.float32) + noise))
                           .to(s.device, half), None, rule)
    engine = engines.load(demo_engine(), verify=False)
    frames = torch.from_numpy(np.stack([read_image(x.path) for x in load_dataset(CARRIED)]))[:, None]
    with backends.load(engine, "torch", s.device, graph_batches=()) as runner:
        out = runner.infer(frames[:2 if s.cpu else 8].to(s.device))
    reps = batch // out.probs.shape[0] + 1
    cases["demo_engine_output"] = (out.probs.repeat(reps, 1, 1, 1)[:batch].contiguous(),
                                   out.presence.repeat(reps, 1)[:batch].contiguous(),
                                   PostprocessParams.resolve(None, engine.manifest.postprocess))
    return cases


def _paths(s: Step) -> dict[str, dict[str, Any]]:
    from inspector.postprocess import labellers

    if s.cpu:
        return {"host": {}, "runs (no labeller)": {"labeller": None, "compact": True},
                "scipy (cupy's twin)": {"labeller": labellers.label_scipy}}
    paths: dict[str, dict[str, Any]] = {f"auto ({labellers.choose('cuda').name})": {},
                                        "runs (no labeller)": {"labeller": None}}
    for name in ("cupy", "cvcuda"):
        if labellers.importable(name):
            paths[name] = {"labeller": labellers.LABELLERS[name].fn}
    return paths


def postprocess(s: Step) -> None:
    """analyse_device per batch of 32 frames (x 4 classes) on each device path, checked bit for bit against
    analyse_cpu once per case, against the rule: <= 10% of the engine's ms for the same batch."""
    from test_device_postprocess import assert_same

    from inspector.postprocess import analyse_cpu, analyse_device

    batch, iters = (2, 1) if s.cpu else (32, 10)
    engine_ms = s.earlier_result("engine_demo").get("ms_per_batch", {}).get(str(batch))
    s.record(batch=batch, engine_ms_at_batch=engine_ms, cases={})
    for case, (probs, presence, params) in _cases(s, batch).items():
        want = analyse_cpu(probs.float().cpu().numpy(), None if presence is None else presence.float().cpu().numpy(),
                           params)
        row: dict[str, Any] = {"defects": sum(len(f) for f in want)}
        for path, kwargs in _paths(s).items():
            try:
                assert_same(want, analyse_device(probs, presence, params, **kwargs))
                times = []
                for _ in range(iters):
                    sync(s.device)
                    t0 = time.perf_counter()
                    analyse_device(probs, presence, params, **kwargs)
                    times.append((time.perf_counter() - t0) * 1000)
                ms = statistics.median(times)
                row[path] = {"identical": True, "ms_per_batch": round(ms, 3),
                             "share_of_engine": round(ms / engine_ms, 3) if engine_ms else None,
                             "within_10pct_of_engine": ms <= 0.1 * engine_ms if engine_ms else None}
            except Exception as exc:  # a path that fails or differs is a result; the others still run
                row[path] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            s.record(cases={**s.result["cases"], case: row})
    memory(s)


def labeller_worst_case(s: Step) -> None:
    """The device labeller alone on batches of one shape in every map: CuPy's union-find walks without path
    compression, so one long thin component (spiral, zigzag) is its worst case; blobs and noise for contrast.
    Sizes grow (1 frame, then 8, then 32), recorded after each, so a box that cuts it still says how it scales."""
    import numpy as np
    import torch
    from test_device_postprocess import adversarial

    from inspector.postprocess import labellers

    if s.cpu:
        fn, name, frames_list = labellers.label_scipy, "scipy (cupy's twin)", (1,)
    else:
        choice = labellers.choose("cuda")
        fn, name = (choice.fn, choice.name) if choice.fn is not None else (labellers.label_scipy, "scipy (no device)")
        frames_list = (1, 8, 32)
    shapes = adversarial(HEIGHT, WIDTH)
    rng = np.random.default_rng(0)
    kinds = {"spiral": shapes["spiral"], "zigzag": shapes["zigzag"], "checkerboard": shapes["checkerboard"],
             "noise_50pct": rng.random((HEIGHT, WIDTH)) < 0.5, "full": shapes["full"]}
    s.record(labeller=name, ms_per_call={})
    for frames in frames_list:
        for kind, mask in kinds.items():
            maps = torch.from_numpy(np.broadcast_to(mask, (frames * 4, HEIGHT, WIDTH)).copy()).to(s.device)
            fn(maps, 16384)  # warm-up (CuPy compiles its kernels on first use)
            times = []
            for _ in range(1 if s.cpu else 3):
                sync(s.device)
                t0 = time.perf_counter()
                labels = fn(maps, 16384)
                sync(s.device)
                times.append((time.perf_counter() - t0) * 1000)
            key = f"{kind} x {frames * 4} maps"
            s.record(ms_per_call={**s.result["ms_per_call"], key: round(min(times), 3)},
                     components={**s.result.get("components", {}), key: labels.total})
    memory(s)


def _pipeline(s: Step, streams: Any, **over: Any) -> Any:
    from inspector import config
    from inspector.pipeline import from_config

    cfg = config.load(engine__path=str(demo_engine()), engine__backend="torch", engine__device=s.device,
                      engine__watch=False, **over)
    return from_config(cfg, streams)


def syncs(s: Step) -> None:
    """Host synchronisations per batch in the running pipeline (step() in this thread): the implicit ones torch's
    sync debug mode reports, and explicit Event / Stream / device synchronize calls, by call site. CuPy's own read
    of its count inside ndimage.label is not a torch call: one more per batch when the CuPy labeller runs."""
    import torch

    from inspector.feed import feed, messages, synthetic_payloads
    from inspector.io.memory import MemoryStreams

    batch, batches = (2, 2) if s.cpu else (16, 20)
    streams = MemoryStreams()
    pipe = _pipeline(s, streams, batching__batch_size=batch, batching__max_wait_ms=2.0)
    add = lambda fields: [streams.add(f) for f in fields]  # noqa: E731
    feed(add, messages(synthetic_payloads(0, 16), "warm"), batch * 3)
    while pipe.step():
        pass
    feed(add, messages(synthetic_payloads(0, 16), "sync"), batch * batches)
    explicit: Counter[str] = Counter()
    originals = {(torch.cuda.Event, "synchronize"): torch.cuda.Event.synchronize,
                 (torch.cuda.Stream, "synchronize"): torch.cuda.Stream.synchronize,
                 (torch.cuda, "synchronize"): torch.cuda.synchronize}

    def counting(what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1)
            explicit[f"{what} at {Path(caller.f_code.co_filename).name}:{caller.f_lineno}"] += 1
            return fn(*args, **kwargs)
        return wrapper

    ran = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for (owner, attr), fn in originals.items():
            setattr(owner, attr, counting(f"{getattr(owner, '__name__', owner)}.{attr}", fn))
        if not s.cpu:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            while (n := pipe.step()):
                ran += n
        finally:
            if not s.cpu:
                torch.cuda.set_sync_debug_mode("default")
            for (owner, attr), fn in originals.items():
                setattr(owner, attr, fn)
    pipe.close()
    implicit = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    n = max(ran // batch, 1)
    s.record(batches=n, frames=ran, implicit_per_batch=round(sum(implicit.values()) / n, 2),
             explicit_per_batch=round(sum(explicit.values()) / n, 2), implicit_by_site=dict(implicit.most_common(12)),
             explicit_by_site=dict(explicit.most_common(12)), labeller=pipe.post_why)
    memory(s)


def _bench(s: Step, rate: float, frames: int, deadline_s: float) -> None:
    from inspector import bench, config

    cfg = config.load(engine__path=str(demo_engine()), engine__backend="torch", engine__device=s.device,
                      batching__batch_size=2 if s.cpu else 32, batching__max_wait_ms=5.0,
                      batching__decode_threads=1 if s.cpu else 8, camera__fps=max(rate, 1.0))
    r = bench.with_redis(cfg, frames, rate, encoding="jpeg", deadline_s=deadline_s)
    keys = ("fps", "engine_fps", "fps_over_engine_fps", "latency_ms_p50", "latency_ms_p99", "frames", "offered_fps",
            "stage_ms_per_frame", "batch_size", "decode_threads", "backend", "device", "model", "rejected",
            "stopped_at_deadline", "wall_s")
    s.record(**{k: r.get(k) for k in keys})
    memory(s)


def bench_flat(s: Step, box_s: float) -> None:
    """`inspector bench --redis` (bench.with_redis): the demo engine flat out, JPEG frames, from Redis."""
    _bench(s, 0.0, 16 if s.cpu else 40000, max(box_s - 30, 5))


def bench_800(s: Step, box_s: float) -> None:
    """The same at an offered 800 frames/s: latency p50 / p99 at the camera line's rate."""
    _bench(s, 8.0 if s.cpu else 800.0, 16 if s.cpu else 16000, max(box_s - 30, 5))


def sanitizer(s: Step) -> None:
    """TORCH_CUDA_SANITIZER=1 (set by the acceptance run for this process): it sees the thread it runs in only, so
    step() drives the pipeline here, with CUDA graphs (capture included) and without."""
    from inspector.feed import feed, messages, synthetic_payloads
    from inspector.io.memory import MemoryStreams

    s.record(sanitizer_on=os.environ.get("TORCH_CUDA_SANITIZER") == "1")
    for label, buckets in (("graphs", (1, 4)), ("eager", ())):
        try:
            streams = MemoryStreams()
            pipe = _pipeline(s, streams, batching__batch_size=4, batching__max_wait_ms=2.0,
                             engine__cuda_graph_batches=buckets)
            feed(lambda fields, to=streams: [to.add(f) for f in fields], messages(synthetic_payloads(0, 8), "csan"),
                 12)
            done = 0
            while (n := pipe.step()):
                done += n
            pipe.close()
            s.record(**{label: {"frames": done, "events": len(streams.events), "errors": None}})
        except Exception as exc:  # a race report is this step's result
            s.record(**{label: {"errors": f"{type(exc).__name__}: {exc}"[:4000]}})


STEPS: dict[str, Callable[..., None]] = {
    "environment": environment, "engine_demo": engine_demo, "engine_resnet18": engine_resnet18,
    "gpu_tests": gpu_tests, "postprocess": postprocess, "labeller_worst_case": labeller_worst_case,
    "syncs": syncs, "bench_flat": bench_flat, "bench_800": bench_800, "sanitizer": sanitizer,
}
TAKES_BOX = {"gpu_tests", "bench_flat", "bench_800"}  # steps that bound their own inner work by their box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--result", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--box", type=float, default=60.0)
    ap.add_argument("--cpu-check", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    summary = out / "gpu_acceptance.json"
    earlier = json.loads(summary.read_text()) if summary.exists() else {}
    s = Step(args.cpu_check, out, Path(args.result), earlier)
    try:
        if args.name.startswith("sleep:"):
            s.record(sleeping_s=float(args.name.split(":", 1)[1]))
            time.sleep(float(args.name.split(":", 1)[1]))
        elif args.name in TAKES_BOX:
            STEPS[args.name](s, args.box)
        else:
            STEPS[args.name](s)
    except BaseException as exc:
        s.record(error=f"{type(exc).__name__}: {exc}"[:2000], traceback=traceback.format_exc()[-3000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
