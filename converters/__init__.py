"""Export formats: one module per format, each exposing one `export_<fmt>(model, path, ...)`.

FORMATS is the single source of truth for format names (CLI choices, tests, bundle writer).
"""

from __future__ import annotations

from edgetl.registry import Registry

# format name -> module (imported lazily by edgetl.bundle) holding export_<name>
FORMATS: Registry[str] = Registry("format")
FORMATS.register("tfjs", "edgetl.converters.tfjs")
FORMATS.register("onnx", "edgetl.converters.onnx")
FORMATS.register("tflite", "edgetl.converters.tflite")

# TFLite variants beyond float32 (which is always written).
QUANTIZATIONS: Registry[str] = Registry("quantization")
QUANTIZATIONS.register("float16", "weights stored as float16; compute float32")
QUANTIZATIONS.register("dynamic", "dynamic-range: int8 weights, float activations")
QUANTIZATIONS.register("int8", "full integer: int8 weights and activations, calibrated on images")
