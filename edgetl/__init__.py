"""edgetl: MobileNet transfer learning, export to TF.js / ONNX / TFLite, and strict parity.

Heavy backends (TensorFlow, onnxruntime, ...) are imported lazily so `edgetl --help` is instant.
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# TensorFlow's C++ INFO/WARNING lines drown the progress edgetl prints; errors still show.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def __getattr__(name: str):
    if name == "verify":
        from edgetl.verifier import verify

        return verify
    raise AttributeError(name)
