"""Capture for retraining and evidence crops: frames the line can learn from (README "Learning from the line").

    names.py     safe file names, the day of a frame, evidence paths (set in the event before it is published)
    policies.py  which frames: on demand, rare class, uncertain, random 1 in N; a cap per hour each
    store.py     atomic writes, appends, the size cap (oldest day first); the `Disk` seam
    evidence.py  the captured image's bytes and the JPEG crops, rendered in the writer thread
    tap.py       CaptureTap: chosen in the consumer thread, written by its own writer thread

Layout under capture.folder (`trainer review` and `trainer train` read a day folder as it is):

    <yyyy-mm-dd>/images/<safe id>.<jpg|png>   the frame as it came (gray8 as PNG)
    <yyyy-mm-dd>/predicted.csv                ImageId,ClassId,EncodedPixels: the model's RLE, train.csv's form
    <yyyy-mm-dd>/meta.jsonl                   one line per frame: ids, camera, coil, pos_mm, ts, engine, policy,
                                              per-class presence and max probability
    evidence/<yyyy-mm-dd>/<safe id>/<class>_<k>.jpg   crop k of the frame (0 = largest component)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inspector.config import Config
from inspector.metrics import Metrics

if TYPE_CHECKING:
    from inspector.capture.tap import CaptureTap


def taps(config: Config, metrics: Metrics | None = None, redis: bool = False) -> list[CaptureTap]:
    """The capture tap the config turns on (none when capture.enabled is false). With `redis`, the on-demand set
    is read from capture.on_demand_key (default inspect:{<line>}:capture) by the writer thread."""
    cfg = config.capture
    if not cfg.enabled:
        return []
    from inspector.capture.tap import CaptureTap
    from inspector.errors import ConfigError

    try:
        return [CaptureTap(cfg, metrics, on_demand=OnDemand(config) if redis else None)]
    except OSError as exc:
        raise ConfigError(f"config key 'capture.folder' is '{cfg.folder}', which cannot be written "
                          f"({exc.strerror or exc}): name a writable folder, or set capture.enabled false") from None


def on_demand_key(config: Config) -> str:
    """The on-demand set: capture.on_demand_key, else inspect:{<line>}:capture (the worker's ACL user reads it)."""
    from inspector.io.keys import line_key

    return config.capture.on_demand_key or line_key(config.redis.line, "capture")


class OnDemand:
    """The on-demand set's members (`camera:<name>`, `coil:<id>`), read on a connection of its own; called from
    the capture writer thread only."""

    def __init__(self, config: Config) -> None:
        from inspector.io import client as clients

        self.key = on_demand_key(config)
        self.client = clients.connect(config.redis)

    def __call__(self) -> frozenset[str]:
        return frozenset(m.decode(errors="replace") if isinstance(m, bytes) else str(m)
                         for m in self.client.smembers(self.key))

    def close(self) -> None:
        from inspector.io import client as clients

        clients.close(self.client)
