"""Probability maps -> defects: threshold, 8-connected components, drop small ones, gate classes, RLE.

Two implementations with one contract: `analyse_cpu` (NumPy + OpenCV, the specification) and
`analyse_torch` (any torch device; on CUDA it keeps masks on the GPU and copies back only runs and component
stats). Tests hold them bit-identical on masks and RLE.
"""

from inspector.postprocess.defects import analyse, analyse_cpu, analyse_torch
from inspector.postprocess.masks import clean
from inspector.postprocess.params import PostprocessParams

__all__ = ["PostprocessParams", "analyse", "analyse_cpu", "analyse_torch", "clean"]
