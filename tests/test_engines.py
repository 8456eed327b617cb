import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch

from inspector import backends, engines, synth
from inspector.backends.tensorrt_backend import check_compatible
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
        check_compatible({"tensorrt": "10.13.0"}, {"name": "NVIDIA H200", "capability": "9.0"}, "11.0.0",
                         "NVIDIA H200", "9.0")
    with pytest.raises(EngineMismatchError, match="NVIDIA L4"):
        check_compatible({"tensorrt": "11.0.0"}, {"name": "NVIDIA H200", "capability": "9.0"}, "11.0.0",
                         "NVIDIA L4", "8.9")
    check_compatible({"tensorrt": "11.0.0"}, {"name": "NVIDIA H200", "capability": "9.0"}, "11.0.0",
                     "NVIDIA H200", "9.0")


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_matches_torch(tiny_checkpoint, tmp_path) -> None:
    folder = build(tiny_checkpoint, frames(4), tmp_path / "engines", "tensorrt", max_batch=8, opt_batch=4)
    engine = engines.load(folder)
    x = frames(4)
    with backends.load(engine, "tensorrt", "cuda") as trt_b, backends.load(engine, "torch", "cuda") as torch_b:
        a, b = trt_b.infer(x.cuda()), torch_b.infer(x.cuda())
    t = torch.tensor(engine.manifest.postprocess["thresholds"], device="cuda").view(1, 4, 1, 1)
    ma, mb = a.probs.float() > t, b.probs.float() > t
    inter = (ma & mb).sum(dim=(0, 2, 3)).float()
    total = (ma.sum(dim=(0, 2, 3)) + mb.sum(dim=(0, 2, 3))).float()
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    assert float(dice.min()) >= 0.99


@pytest.mark.gpu
def test_torch_fp16_masks_match_fp32(tiny_engine) -> None:
    engine = engines.load(tiny_engine)
    x = frames(4).cuda()
    with backends.load(engine, "torch", "cuda", fp16=True) as half, \
            backends.load(engine, "torch", "cuda", fp16=False) as full:
        a, b = half.infer(x), full.infer(x)
    ma, mb = a.probs.float() > 0.5, b.probs > 0.5
    inter = (ma & mb).sum(dim=(0, 2, 3)).float()
    total = (ma.sum(dim=(0, 2, 3)) + mb.sum(dim=(0, 2, 3))).float()
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    assert float(dice.min()) >= 0.99


def test_torch_format_engine_runs_through_auto_backend(tiny_checkpoint, tmp_path) -> None:
    folder = build(tiny_checkpoint, frames(), tmp_path / "engines", "torch", install=False)
    engine = engines.load(folder)
    assert engine.manifest.format == "torch" and engine.file.name == "checkpoint.pt"
    with backends.load(engine) as b:
        assert b.name == "torch" and b.infer(frames(1)).probs.shape == (1, 4, 256, 1600)
