import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from inspector import backends, engines, synth
from inspector.backends.tensorrt_backend import check_built_here
from inspector.errors import EngineError, EngineMismatchError
from trainer.build_engine import MIN_DICE, build
from trainer.export import check_parity, export_onnx


def frames(n=2):
    return torch.from_numpy(np.stack([synth.frame(9, i).image for i in range(n)]))[:, None]


def test_installed_engine_manifest(tiny_engine) -> None:
    folder = engines.load(tiny_engine)
    m = folder.manifest
    assert os.path.islink(tiny_engine) and m.format == "onnx" and m.precision == "fp32"
    assert m.output_names == ("probs", "presence") and (m.height, m.width) == (256, 1600)
    data = json.loads((folder.path / "manifest.json").read_text())
    assert min(data["parity"]["dice_per_class"]) >= MIN_DICE
    assert data["source_checkpoint"]["sha256"] and data["versions"]["onnxruntime"]
    assert data["postprocess"]["min_component_area"] == [10] * 4  # the checkpoint's tuned values


def test_export_parity_and_dynamic_batch(tiny_checkpoint, tmp_path) -> None:
    import onnxruntime as ort

    from inspector.model import load_checkpoint

    model, _ = load_checkpoint(str(tiny_checkpoint))
    path = export_onnx(model, tmp_path / "m.onnx", max_batch=8)
    assert check_parity(model, path, frames(3)) < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [1, 256, 1600]
    for n in (1, 5):
        probs, presence = session.run(None, {"frames": frames(n).numpy()})
        assert probs.shape == (n, 4, 256, 1600) and presence.shape == (n, 4)


def test_fp16_export_is_half(tiny_checkpoint, tmp_path) -> None:
    from inspector.model import load_checkpoint

    model, _ = load_checkpoint(str(tiny_checkpoint))
    proto = onnx.load(str(export_onnx(model, tmp_path / "h.onnx", half=True)))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert {o.type.tensor_type.elem_type for o in proto.graph.output} == {onnx.TensorProto.FLOAT16}


def test_corrupted_engine_file_is_refused(tiny_engine, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(os.path.realpath(tiny_engine), copy)
    with open(copy / "model.onnx", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00" * 64)
    with pytest.raises(EngineError, match="sha256"):
        engines.load(copy)


def test_tampered_weights_fail_the_parity_gate(tiny_checkpoint, tmp_path) -> None:
    """An ONNX whose weights no longer match the checkpoint is refused and nothing is installed."""
    from onnx import numpy_helper

    from inspector.model import load_checkpoint

    model, _ = load_checkpoint(str(tiny_checkpoint))
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.ndim == 4 and arr.shape[0] == 4:  # the segmentation head's conv
            init.CopyFrom(numpy_helper.from_array(-arr * 5, init.name))
    onnx.save(proto, str(path))
    root = tmp_path / "engines"
    with pytest.raises(EngineError, match=r"differs from PyTorch|parity gate"):
        build(tiny_checkpoint, frames(), root, "onnx", onnx_path=path)
    assert not (root / "current").exists() and not [p for p in root.iterdir() if not p.name.startswith(".timing")]


@pytest.mark.slow  # builds engines: 26-44 s on the 2-core CI machine
def test_install_is_atomic_and_keeps_the_old_engine(tiny_checkpoint, tmp_path) -> None:
    root = tmp_path / "engines"
    first = build(tiny_checkpoint, frames(), root, "onnx")
    held = engines.load(root / "current")  # a running worker resolved current at start
    second = build(tiny_checkpoint, frames(), root, "onnx", install=True)
    assert first != second and os.readlink(root / "current") == second.name
    assert held.path == first and engines.load(first).file.exists()  # the running worker's folder is intact
    assert not [p for p in root.iterdir() if p.name.startswith((".building", ".current"))]
    third = build(tiny_checkpoint, frames(), root, "onnx", install=False)
    assert os.readlink(root / "current") == second.name and third.exists()


def test_torch_backend_from_kept_checkpoint_matches_onnx(tiny_engine) -> None:
    folder = engines.load(tiny_engine)
    x = frames(2)
    with backends.load(folder, "torch", "cpu") as t, backends.load(folder, "onnxruntime", "cpu") as o:
        a, b = t.infer(x), o.infer(x)
    assert float((a.probs - b.probs).abs().max()) < 1e-4


def test_backend_input_checks(tiny_engine) -> None:
    with backends.load(engines.load(tiny_engine)) as b, pytest.raises(EngineError, match="uint8"):
        b.infer(torch.zeros((1, 1, 256, 1600), dtype=torch.float32))


def test_missing_engine_names_build_engine(tmp_path) -> None:
    with pytest.raises(EngineError, match="trainer build-engine"):
        engines.load(tmp_path / "nope")


def test_tensorrt_mismatch_names_the_fix() -> None:
    with pytest.raises(EngineMismatchError, match="trainer build-engine"):
        check_built_here({"tensorrt": "10.13.0"}, {"name": "NVIDIA H200", "capability": "9.0"}, "11.0.0",
                         "NVIDIA H200", "9.0")
    with pytest.raises(EngineMismatchError, match="NVIDIA L4"):
        check_built_here({"tensorrt": "11.0.0"}, {"name": "NVIDIA H200", "capability": "9.0"}, "11.0.0",
                         "NVIDIA L4", "8.9")
    check_built_here({"tensorrt": "11.0.0"}, {"name": "NVIDIA H200", "capability": "9.0"}, "11.0.0",
                     "NVIDIA H200", "9.0")


# -- on a GPU: each precision against FP32 PyTorch of a trained checkpoint, on real frames -------------------------
# An untrained model's outputs sit at 0.50 +- 0.02, a sixth of its pixels within 1e-3 of the threshold: any two
# precisions disagree there, so a Dice between them says nothing. The demo engine is trained: its outputs are far
# from its thresholds, and what is checked below only breaks for a reason (a wrong layer, layout or scaling).

TRAVELLING = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "severstal-8"  # real frames, in the repo


def demo_engine() -> Path:
    """The trained engine shipped in engines/ (its folder, not the `current` link)."""
    root = Path(__file__).resolve().parents[1] / "engines"
    folders = sorted(p for p in root.iterdir() if not p.is_symlink() and (p / "manifest.json").exists())
    if not folders:
        pytest.skip(f"no engine folder in {root}")
    return folders[-1]


def real_frames() -> torch.Tensor:
    from trainer.data import load_dataset, read_image

    return torch.from_numpy(np.stack([read_image(s.path) for s in load_dataset(TRAVELLING)]))[:, None]


def assert_near_fp32(got: torch.Tensor, want: torch.Tensor, thresholds: list[float]) -> None:
    """got: a lower-precision engine's probabilities; want: FP32 PyTorch's, same frames. The mean |difference| is
    under 1e-3 (FP16 keeps about 3 digits; a real fault moves every pixel); where FP32 is clear of the threshold by
    0.05, fewer than 1 pixel in 10^5 flips; each class's Dice is >= 0.98 (0.998 with FP16 on the CPU)."""
    got, want = got.float().cpu(), want.float().cpu()
    t = torch.tensor(thresholds).view(1, -1, 1, 1)
    assert float((got - want).abs().mean()) < 1e-3
    a, b = want > t, got > t
    clear = (want - t).abs() > 0.05
    assert float((a != b)[clear].float().mean()) < 1e-5
    inter = (a & b).sum(dim=(0, 2, 3)).float()
    total = (a.sum(dim=(0, 2, 3)) + b.sum(dim=(0, 2, 3))).float()
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    assert float(dice.min()) >= 0.98, dice.tolist()


def fp32_reference(engine: engines.EngineFolder, x: torch.Tensor) -> torch.Tensor:
    with backends.load(engine, "torch", "cpu") as cpu:
        return torch.cat([cpu.infer(x[i:i + 4]).probs for i in range(0, len(x), 4)])


def test_the_fp32_comparison_passes_itself_and_catches_a_layout_fault() -> None:
    """The CPU half of the two tests below: the trained engine's FP32 output on real frames meets the comparison
    against itself and fails it mirrored (what a width/height or channels-last mix-up would give)."""
    engine = engines.load(demo_engine())
    want = fp32_reference(engine, real_frames()[:2])
    thresholds = engine.manifest.postprocess["thresholds"]
    assert_near_fp32(want, want, thresholds)
    with pytest.raises(AssertionError):
        assert_near_fp32(want.flip(-1), want, thresholds)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_matches_fp32_on_the_trained_checkpoint(tmp_path) -> None:
    x = real_frames()
    folder = build(demo_engine() / "checkpoint.pt", x[:4], tmp_path / "engines", "tensorrt", max_batch=8,
                   opt_batch=4, install=False)
    engine = engines.load(folder)
    with backends.load(engine, "tensorrt", "cuda") as trt_b:
        got = torch.cat([trt_b.infer(x[i:i + 4].cuda()).probs.cpu() for i in range(0, len(x), 4)])
    assert_near_fp32(got, fp32_reference(engine, x), engine.manifest.postprocess["thresholds"])


@pytest.mark.gpu
def test_torch_fp16_matches_fp32_on_the_trained_checkpoint() -> None:
    engine = engines.load(demo_engine())
    x = real_frames()
    with backends.load(engine, "torch", "cuda", fp16=True, graph_batches=(4,)) as half:
        got = torch.cat([half.infer(x[i:i + 4].cuda()).probs.cpu() for i in range(0, len(x), 4)])
    assert_near_fp32(got, fp32_reference(engine, x), engine.manifest.postprocess["thresholds"])


def test_torch_format_engine_runs_through_auto_backend(tiny_checkpoint, tmp_path) -> None:
    folder = build(tiny_checkpoint, frames(), tmp_path / "engines", "torch", install=False)
    engine = engines.load(folder)
    assert engine.manifest.format == "torch" and engine.file.name == "checkpoint.pt"
    with backends.load(engine) as b:
        assert b.name == "torch" and b.infer(frames(1)).probs.shape == (1, 4, 256, 1600)
