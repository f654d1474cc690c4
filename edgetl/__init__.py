"""edgetl: MobileNet transfer learning, export to TF.js / ONNX / TFLite, and strict parity.

Heavy backends (TensorFlow, onnxruntime, ...) are imported lazily so `edgetl --help` is instant.
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "verify":
        from edgetl.verify import verify

        return verify
    raise AttributeError(name)
