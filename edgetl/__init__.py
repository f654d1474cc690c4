"""edgetl: MobileNet transfer learning, export to TF.js / ONNX / TFLite, and strict parity.

Heavy backends (TensorFlow, onnxruntime, ...) are imported lazily so `edgetl --help` is instant.
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# TensorFlow's C++ INFO/WARNING/ERROR start-up lines drown what edgetl prints (none of them is
# actionable); a level the user set is kept, and then the CLI does not silence TensorFlow.
USER_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in _os.environ
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def __getattr__(name: str):
    if name == "verify":
        from edgetl.verifier import verify

        return verify
    raise AttributeError(name)
