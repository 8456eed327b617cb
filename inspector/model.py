"""The network both sides agree on: uint8 frames in, per-class probabilities and presence out.

`InspectionNet` wraps a segmentation_models_pytorch Unet with a classification head (`aux_params`), and puts
normalisation (and an optional internal down-scale) inside the model, so the exported ONNX / engine takes raw
uint8 [N, 1, H, W] and the worker never normalises. The trainer trains `logits()`; engines run `forward()`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decoder_channels": list(self.decoder_channels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**{**data, "decoder_channels": tuple(data.get("decoder_channels", cls.decoder_channels))})


class InspectionNet(nn.Module):
    def __init__(self, spec: ModelSpec, encoder_weights_path: str | None = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.spec = spec
        self.unet = smp.Unet(spec.encoder, encoder_weights=None, in_channels=spec.in_channels,
                             classes=spec.classes, decoder_channels=spec.decoder_channels,
                             aux_params={"classes": spec.classes, "dropout": 0.1})
        if encoder_weights_path:  # local file only: nothing is downloaded at run time
            state = torch.load(encoder_weights_path, map_location="cpu", weights_only=True)
            own = self.unet.encoder.state_dict()
            if not any(key in own and own[key].shape == value.shape for key, value in state.items()):
                raise ValueError(f"{encoder_weights_path} holds no weights for encoder {spec.encoder} "
                                 f"(expected keys like {next(iter(own))!r})")
            self.unet.encoder.load_state_dict(state, strict=False)

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
        masks, presence = self.logits(self.normalise(frames))
        return torch.sigmoid(masks), torch.sigmoid(presence)

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def build(spec: ModelSpec | dict[str, Any], encoder_weights_path: str | None = None) -> InspectionNet:
    return InspectionNet(spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec), encoder_weights_path)


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> tuple[InspectionNet, dict[str, Any]]:
    """A trainer checkpoint ({"spec", "model", ...}) -> eval-mode model and the checkpoint's metadata."""
    from inspector.errors import EngineError

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises pickle, zip and OS errors alike
        raise EngineError(f"{path} cannot be read as a trainer checkpoint: {exc}") from None
    if not isinstance(ckpt, dict) or "spec" not in ckpt or "model" not in ckpt:
        raise EngineError(f"{path} is not a trainer checkpoint (expected keys 'spec' and 'model'); "
                          "`trainer train` writes best.pt")
    model = build(ckpt["spec"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
