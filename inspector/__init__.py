"""Camera-rate steel-surface inspection worker.

Frames arrive on a Redis stream, a segmentation engine turns them into per-class probability maps, and one
event per frame (defect masks as Kaggle RLE) leaves on another stream. `inspector.pipeline` wires the stages,
`inspector.worker` runs them.
"""

__version__ = "0.1.0"
