"""The trainer: Severstal-format data -> trained Unet -> tuned post-processing -> ONNX -> installed engine.

It imports `inspector` (RLE, post-processing, the model definition, engine folders); `inspector` never
imports it.
"""
