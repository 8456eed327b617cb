"""The network both sides agree on: uint8 frames in, per-class probabilities and presence out.

`InspectionNet` wraps a segmentation_models_pytorch Unet with a classification head (`aux_params`), and puts
normalisation (and an optional internal down-scale) inside the model, so the exported ONNX / engine takes raw
uint8 [N, 1, H, W] and the worker never normalises. The trainer trains `logits()`; engines run `forward()`.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inspector.errors import EngineError

TTA = ("none", "hflip")  # test-time augmentation inside the engine: none, or the mean with the mirrored frame
CLASS_NAMES = ("pits", "vertical marks", "scratches", "dark patches")  # Severstal classes 1..4, as seen


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the architecture from a checkpoint."""

    encoder: str = "resnet18"
    in_channels: int = 1
    classes: int = 4
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    scale: float = 1.0  # run the Unet at this fraction of the input size (0.5 = 4x less compute)
    mean: float = 0.3439  # pixel statistics of Severstal frames (uint8 / 255)
    std: float = 0.1365
    tta: str = "none"  # "hflip": forward() also runs the mirrored frame and averages (2x the engine's compute)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decoder_channels": list(self.decoder_channels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**{**data, "decoder_channels": tuple(data.get("decoder_channels", cls.decoder_channels))})


class InspectionNet(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        if spec.in_channels != 1:
            raise ValueError(f"in_channels {spec.in_channels}: frames are grayscale, the model takes 1 channel "
                             "(pretrained RGB filters are summed into it)")
        if spec.tta not in TTA:
            raise ValueError(f"tta {spec.tta!r}: one of {', '.join(TTA)}")
        self.spec = spec
        self.unet = smp.Unet(spec.encoder, encoder_weights=None, in_channels=spec.in_channels,
                             classes=spec.classes, decoder_channels=spec.decoder_channels,
                             aux_params={"classes": spec.classes, "dropout": 0.1})

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> float, standardised (works for float input in 0..255 too)."""
        x = frames.to(self._dtype()) / 255.0
        return (x - self.spec.mean) / self.spec.std

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float input -> (mask logits at input size, presence logits)."""
        height, width = x.shape[-2:]
        if self.spec.scale != 1.0:
            x = F.interpolate(x, scale_factor=self.spec.scale, mode="bilinear", align_corners=False)
        masks, presence = self.unet(x)
        if self.spec.scale != 1.0:
            masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
        return masks, presence

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalise(frames)
        masks, presence = self.logits(x)
        probs, present = torch.sigmoid(masks), torch.sigmoid(presence)
        if self.spec.tta == "hflip":  # every class stays itself under a left-right mirror (trainer.data)
            masks, presence = self.logits(torch.flip(x, dims=[-1]))
            probs = (probs + torch.flip(torch.sigmoid(masks), dims=[-1])) / 2
            present = (present + torch.sigmoid(presence)) / 2
        return probs, present

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def build(spec: ModelSpec | dict[str, Any]) -> InspectionNet:
    return InspectionNet(spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec))


def with_tta(model: InspectionNet, tta: str) -> InspectionNet:
    """The same weights with test-time augmentation `tta` (one of TTA) in forward(); training is unaffected."""
    if tta not in TTA:
        raise ValueError(f"tta {tta!r}: one of {', '.join(TTA)}")
    model.spec = replace(model.spec, tta=tta)
    return model


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> tuple[InspectionNet, dict[str, Any]]:
    """A trainer checkpoint ({"spec", "model", ...}) -> eval-mode model and the checkpoint's metadata.

    Loaded with `weights_only=True`: a checkpoint holds tensors and plain values only, so one that carries a
    pickled Python object (which could run code on load) is refused."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "spec" not in ckpt or "model" not in ckpt:
        raise EngineError(f"{path} is not a trainer checkpoint (expected keys 'spec' and 'model'); "
                          "`trainer train` writes best.pt")
    model = build(ckpt["spec"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True, every failure as one EngineError naming the file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise EngineError(f"{path} cannot be read: {exc.strerror}") from None
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip (a pickle before torch 1.6)
        raise EngineError(f"{path} is not a trainer checkpoint (not a file torch.save wrote): give the best.pt or "
                          "last.pt of a run folder (`trainer train --out RUN` writes RUN/best.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "WeightsUnpickler error" in line),
                      str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        detail = detail.partition("WeightsUnpickler error:")[2].strip() or detail  # not torch's "file an issue"
        if "Unsupported global" in detail:
            raise EngineError(f"{path} was refused: it holds pickled Python objects, not only tensors and plain "
                              f"values ({detail[:200]}); re-save it with `trainer train`") from None
        raise EngineError(f"{path} cannot be read as a trainer checkpoint ({detail[:200]})") from None
    except Exception as exc:  # torch.load raises zip and OS errors alike
        raise EngineError(f"{path} cannot be read as a trainer checkpoint: {exc}") from None
    return ckpt
