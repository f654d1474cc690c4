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

# TF.js Layers variants beyond float32 (which is always written): weight shards stored smaller,
# dequantized to float32 by tf.loadLayersModel (compute stays float32). A registry of its own:
# "uint8" exists only here and "dynamic"/"int8" only for TFLite, so one --quantize list naming
# both would mean different things per format.
TFJS_QUANTIZATIONS: Registry[str] = Registry("TF.js quantization")
TFJS_QUANTIZATIONS.register("float16", "weight shards stored as float16 (half the download)")
TFJS_QUANTIZATIONS.register(
    "uint8", "weight shards as uint8, affine per tensor (min/max, a quarter of the download)"
)
