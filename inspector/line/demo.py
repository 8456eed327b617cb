"""The line layer in `inspector demo`: a synthetic line of two cameras side by side (top-1, top-2) feeding coils
with ids and positions, a dark mark planted on top-1 at the work roll's circumference, the coils service in a
thread of the demo, and one printed line per coil as its report appears on the coils stream.

Keys: the coils service works under the demo's own prefix (`demo:<pid>-<random>:...`), reading the demo
worker's events stream; `cleanup()` deletes only those keys. Threads: the feeder thread pulls `frames()` (which
also XADDs each coil's end when the next coil starts), the line thread runs the service, the reporter thread
prints; each owns what it touches.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import msgpack
import numpy as np
import redis

from inspector import config as config_mod
from inspector import synth
from inspector.config import CameraPlacement, Config
from inspector.decode import encode
from inspector.line.records import pack_end
from inspector.line.service import LineService
from inspector.protocol import FrameMessage

ROLL_MM = 1884.96  # the planted mark's pitch: work-top's circumference (a 600 mm roll)
FRAMES_PER_COIL = 40  # 40 x 256 mm: 10.24 m coils, about 10 s each at 4 frames/s per camera
MARK_X_PX, MARK_FIRST_MM = 800, 300.0
CAMERAS = {"top-1": CameraPlacement("top", 0.0), "top-2": CameraPlacement("top", 1590.0)}  # 10 mm overlap


def line_config(cfg: Config) -> Config:
    """The demo's config with the coils service under the demo's keys, and a line when none is configured."""
    run = cfg.redis.frames_key.rsplit(":", 1)[0]
    line = {} if cfg.line.cameras else {"cameras": CAMERAS, "rolls_mm": {"work-top": ROLL_MM}, "end_grace_s": 2.0}
    return config_mod.replace(cfg, line=line, coils={
        "events_key": cfg.redis.keys().events, "coil_ends_key": f"{run}:coil-ends", "coils_key": f"{run}:coils",
        "state_prefix": f"{run}:line", "group": f"{run}-coils", "consumer": f"{run}-coils",
        "reports_dir": "reports/demo", "close_every_s": 0.5}, alarms={"key": f"{run}:alarms"})


def summary(entry: dict[str, Any]) -> str:
    """One coil's report as one line."""
    defects = " ".join(f"{k}:{v}" for k, v in entry["defects"].items())
    coverage = " ".join(f"{cam} {100 * v:.1f}%" for cam, v in entry["coverage"].items())
    marks = "; ".join(f"class {p['class_id']} {p['surface']} x {p['x_mm']:.0f} mm pitch {p['pitch_mm']:.1f} mm "
                      f"roll {p['roll'] or 'none'} x{p['repeats']}" for p in entry["periodic"]) or "none"
    return (f"coil {entry['coil']} closed ({entry['closed_by']}): {entry['length_mm'] / 1000:.2f} m, grade "
            f"{entry['grade']} ({entry['decided_by']}) | defects {defects} | coverage {coverage} | periodic: {marks}"
            f" | report {entry['report']}.html")


class LineDemo:
    def __init__(self, cfg: Config, client: redis.Redis, out: Callable[[str], None]) -> None:
        self.cfg = line_config(cfg)
        self.client, self.out = client, out
        self.cameras = len(self.cfg.line.cameras)
        self.service = LineService(self.cfg)
        self.coils_done = 0
        self._last_id = "0-0"
        self._threads: list[threading.Thread] = []

    def frames(self, seed: int = 0) -> Iterator[FrameMessage]:
        """Both cameras' frames in capture order, coil after coil; a coil's end goes out when the next begins."""
        pool = [synth.frame(seed, i).image for i in range(16)]
        rng = np.random.default_rng(seed)  # each frame a pool image shifted across at random: a pool cycled as it
        seq, n = 0, 0                      # is would print its own marks at a 16-frame pitch (and they'd be found)
        names = list(self.cfg.line.cameras)
        while True:
            n += 1
            coil = f"C{n:04d}"
            for k in range(FRAMES_PER_COIL):
                for cam in names:
                    image = np.roll(pool[int(rng.integers(len(pool)))], int(rng.integers(synth.WIDTH)), axis=1)
                    if cam == names[0]:
                        image = self._marked(image, k)
                    yield FrameMessage(f"{coil}-{cam}-{k}", cam, seq, _now(), synth.HEIGHT, synth.WIDTH, "jpeg",
                                       encode(image, "jpeg"), coil=coil, pos_mm=k * 256.0)
                seq += 1
            self.client.xadd(self.cfg.coils.coil_ends_key, pack_end(coil, FRAMES_PER_COIL * 256.0))

    @staticmethod
    def _marked(image: np.ndarray, k: int) -> np.ndarray:
        """The frame with the roll's dark mark drawn wherever a repeat falls on it (also across its edges)."""
        top, marked = k * 256.0, None
        for turn in range(int((top + 400) // ROLL_MM) + 1):
            row = MARK_FIRST_MM + turn * ROLL_MM - top
            if -60 < row < 316:
                if marked is None:
                    marked = image.astype(np.float32)
                mask = np.zeros(image.shape, np.float32)
                cv2.ellipse(mask, (MARK_X_PX, round(row)), (90, 40), 0, 0, 360, 1.0, -1)
                marked -= cv2.GaussianBlur(mask, (0, 0), 3) * 55
        return image if marked is None else np.clip(marked, 0, 255).astype(np.uint8)

    def start(self, stop: threading.Event, every_s: float = 0.5) -> None:
        line = threading.Thread(target=self.service.run, kwargs={"handle_signals": False}, name="line", daemon=True)
        reporter = threading.Thread(target=self._report, args=(stop, every_s), name="coil-reports", daemon=True)
        self._threads = [line, reporter]
        line.start()
        reporter.start()

    def _report(self, stop: threading.Event, every_s: float) -> None:
        while not stop.wait(every_s):
            self.poll()

    def poll(self) -> None:
        reply = self.client.xread({self.cfg.coils.coils_key: self._last_id}, count=100)
        for _, got in reply or []:
            for entry_id, fields in got:
                self._last_id = entry_id
                self.coils_done += 1
                self.out(summary(msgpack.unpackb(fields[b"c"], raw=False)))

    def finish(self) -> None:
        """After the worker stopped: fold what is left, close the coil in progress, print the last lines."""
        self.service.stop()
        self._threads[0].join(timeout=30)
        with contextlib.suppress(redis.RedisError):
            while self.service.step():
                pass
            self.service.close_due(force=True)
        self._threads[1].join(timeout=5)
        self.poll()

    def cleanup(self) -> None:
        """Delete the line service's keys of this run, nothing else."""
        c = self.cfg.coils
        prefix = "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in c.state_prefix)
        keys = [c.coil_ends_key, c.coils_key, *self.client.scan_iter(match=prefix + ":*", count=1000)]
        with contextlib.suppress(redis.RedisError):
            self.client.delete(*keys)
        self.service.close()


def _now() -> float:
    import time

    return time.time()
