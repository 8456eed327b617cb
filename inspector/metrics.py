"""Prometheus metrics of one worker (prometheus_client), on a registry of its own.

Names follow Prometheus conventions: counters end in `_total`, durations are `_seconds`. README "Metrics"
lists them all; `Stats` updates them as it counts, so the stats hash, the log line and /metrics never disagree.
"""

from __future__ import annotations

import platform

import prometheus_client as prom
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

prom.disable_created_metrics()  # the `_created` series double every counter for no use here

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.frames = Counter("inspector_frames", "Frames whose event was published (ok or rejected)", registry=r)
        self.events = Counter("inspector_events", "Events published, by status", ["status"], registry=r)
        self.event_bytes = Counter("inspector_event_bytes", "Bytes of the events published (sizes the events stream)",
                                   registry=r)
        self.dead_letters = Counter("inspector_dead_letters", "Frames copied to the dead-letter stream", registry=r)
        self.fenced_out = Counter("inspector_fenced_out",
                                  "Events refused because another worker had claimed the frame", registry=r)
        self.defects = Counter("inspector_defects", "Defects published, by class", ["class_id"], registry=r)
        self.seq_gaps = Counter("inspector_seq_gaps", "Camera frames that never reached the stream", registry=r)
        self.seq_resets = Counter("inspector_seq_resets",
                                  "Camera seq restarts or jumps too large to be gaps", registry=r)
        self.implausible_ts = Counter("inspector_implausible_ts",
                                      "Frames whose capture time is too far from the worker's clock", registry=r)
        self.reconnects = Counter("inspector_reconnects",
                                  "Redis calls retried after an outage or a refusal for now", registry=r)
        self.engine_swaps = Counter("inspector_engine_swaps", "Engine switches without a stop, by result",
                                    ["result"], registry=r)
        self.latency = Histogram("inspector_latency_seconds", "Capture-to-event latency of ok frames",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("inspector_stage_seconds", "Time per batch in each stage", ["stage"],
                               buckets=STAGE_BUCKETS, registry=r)
        self.batch_size = Histogram("inspector_batch_size", "Frames per engine batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.engine_fps = Gauge("inspector_engine_fps", "Frames per second of the engine alone, last batch",
                                registry=r)
        self.lag = Gauge("inspector_group_lag", "Frames in the stream not yet delivered to the consumer group",
                         registry=r)
        self.pending = Gauge("inspector_group_pending", "Frames delivered to the group and not yet acknowledged",
                             registry=r)
        self.stream_length = Gauge("inspector_frames_stream_length", "Entries in the frames stream", registry=r)
        self.redis_up = Gauge("inspector_redis_up", "1 when the last Redis probe answered", registry=r)
        self.ready = Gauge("inspector_ready", "1 when the engine is loaded and Redis is reachable", registry=r)
        self.captures = Counter("inspector_captures", "Frames the capture policies chose, by what became of them "
                                "(written, queue_full, over_cap, error)", ["result"], registry=r)
        self.evidence = Counter("inspector_evidence", "Evidence crops, by what became of them (written, queue_full, "
                                "over_cap, error)", ["result"], registry=r)
        self.engine_frames = Counter("inspector_engine_frames", "Frames inspected (ok events), by the engine that "
                                     "inspected them", ["engine"], registry=r)
        self.engine_defect_frames = Counter(
            "inspector_engine_defect_frames", "Inspected frames with at least one defect of the class, by engine: "
            "divided by inspector_engine_frames_total, the defect rate per class and engine", ["engine", "class_id"],
            registry=r)
        self.info = Info("inspector_engine", "The engine in service: id, backend, device and versions", registry=r)
        # labelled children made once: a `.labels()` lookup per frame is most of what metrics cost
        self.by_status = {s: self.events.labels(status=s) for s in ("ok", "rejected")}
        self.by_result = {s: self.engine_swaps.labels(result=s) for s in ("done", "refused")}
        self.by_class = {k: self.defects.labels(class_id=str(k)) for k in range(1, 5)}
        self.by_stage: dict[str, Histogram] = {}

    def inspected(self, engine: str, frames: int, with_class: dict[int, int]) -> None:
        """One batch's ok frames and, per class, how many of them showed it, under the engine that ran them (a
        new engine that reports a class six times as often shows on the panel, not only downstream)."""
        self.engine_frames.labels(engine=engine).inc(frames)
        for class_id in range(1, 5):  # every class, zeros included: a rate of 0 is a figure, not a gap
            self.engine_defect_frames.labels(engine=engine, class_id=str(class_id)).inc(with_class.get(class_id, 0))

    def stage_seconds(self, stage: str) -> Histogram:
        child = self.by_stage.get(stage)
        if child is None:
            child = self.by_stage[stage] = self.stage.labels(stage=stage)
        return child

    def engine(self, model_id: str, backend: str, device: str, versions: dict[str, str]) -> None:
        import torch

        self.info.info({"engine": model_id, "backend": backend, "device": device, "torch": torch.__version__,
                        "python": platform.python_version(),
                        **{f"built_{k}": str(v) for k, v in versions.items()}})

    def wsgi(self):
        return prom.make_wsgi_app(self.registry)
