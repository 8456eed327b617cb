"""The post-processing rules, stated once. The CPU reference (`masks.clean_class`), the device path
(`device.analyse_device`) and the tuner (`trainer.tune`) all decide through these functions.

Per class, in this order:
    foreground   p > threshold, strictly, compared in float32
    presence     the class is emptied when its presence probability < presence_threshold (float32)
    components   8-connected components smaller than min_component_area pixels are dropped
    class area   the class is emptied when the kept area < min_class_area (and an empty class is empty: at
                 least 1 pixel is needed whatever the minimum)

Each function takes NumPy arrays or torch tensors. Thresholds must come as float32: for torch, a float32 tensor
with a dimension (a 0-d or Python-scalar threshold would let torch compare an FP16 map in FP16, where 0.55 is
0.5498).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def foreground(probs: Any, threshold: Any) -> Any:
    return probs > threshold


def present(presence: Any, presence_threshold: Any) -> Any:
    return presence >= presence_threshold


def keep_components(areas: Any, min_component_area: Any) -> Any:
    return areas >= min_component_area


def keep_class(kept_area: Any, min_class_area: Any) -> Any:
    floor = min_class_area.clamp(min=1) if isinstance(min_class_area, torch.Tensor) else np.maximum(min_class_area, 1)
    return kept_area >= floor


def f32(value: float) -> np.float32:
    """A threshold as the rules compare it."""
    return np.float32(value)
