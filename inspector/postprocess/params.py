"""Post-processing values per class, and where each comes from (config > engine manifest > defaults)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from inspector.config import PostprocessConfig
from inspector.errors import ConfigError

NUM_CLASSES = 4


@dataclass(frozen=True)
class PostprocessParams:
    """Defaults from shared/notes/severstal.md: 1st-place pixel threshold 0.55, class areas 600/600/900/2000
    and presence thresholds 0.7/0.7/0.6/0.6. The per-component minimum (ours) removes speckle and stays far
    below the smallest real masks (2nd-percentile areas 548/715/1146/2959 px)."""

    thresholds: tuple[float, ...] = (0.55, 0.55, 0.55, 0.55)
    min_component_area: tuple[int, ...] = (100, 100, 100, 100)
    min_class_area: tuple[int, ...] = (600, 600, 900, 2000)
    presence_threshold: tuple[float, ...] = (0.7, 0.7, 0.6, 0.6)

    def as_dict(self) -> dict[str, list[float] | list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def resolve(cls, config: PostprocessConfig | None = None,
                manifest: Mapping[str, Any] | None = None) -> PostprocessParams:
        """Each field from the config if set, else the engine manifest's tuned value, else the default."""
        values: dict[str, tuple[Any, ...]] = {}
        for name, default in asdict(cls()).items():
            chosen = getattr(config, name, None) if config is not None else None
            if chosen is None and manifest is not None:
                chosen = manifest.get(name)
            if chosen is None:
                chosen = default
            if len(chosen) != NUM_CLASSES:
                raise ConfigError(f"post-processing '{name}' needs {NUM_CLASSES} values, got {chosen}")
            kind = int if name.startswith("min_") else float
            values[name] = tuple(kind(v) for v in chosen)
            low, high = (0, float("inf")) if kind is int else (0.0, 1.0)
            if not all(low <= v <= high for v in values[name]):
                raise ConfigError(f"post-processing '{name}' values must lie in [{low}, {high}], got {chosen}")
        return cls(**values)
