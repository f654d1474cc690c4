"""What the TF.js runtimes (Node and Chromium) share: formats, per-backend naming, the --data
sample sizes, how a reply's outputs are decoded and the error for a model that failed."""

from __future__ import annotations

import numpy as np

from edgetl.runtimes.base import Runtime

TFJS_FORMATS = frozenset({"tfjs_layers", "tfjs_graph"})


class TfjsRuntime(Runtime):
    """One TF.js backend in one host: registered as f"tfjs-{host}-{backend}"."""

    formats = TFJS_FORMATS
    host = ""  # "node" or "browser"
    backends: tuple[str, ...] = ()

    def __init__(self, backend: str) -> None:
        if backend not in self.backends:
            raise ValueError(
                f"unknown TF.js {self.host} backend {backend!r}; use {', '.join(self.backends)}"
            )
        self.backend = backend
        self.name = f"tfjs-{self.host}-{backend}"
        where = "Node.js" if self.host == "node" else "headless Chromium"
        self.description = f"TF.js Layers and graph models in {where}, {backend} backend"
        # --data sample (MobileNetV2 1.0/160, 2 cores, ~216 images): wasm 30 s in Node and 8 s
        # in Chromium; the pure-JS cpu backend 155-178 s and software WebGL (SwiftShader) 124 s
        # (~0.8 s an image), so those see 32
        self.data_sample = 200 if backend == "wasm" else 32


def decode_outputs(entries: list[dict], read) -> dict[str, np.ndarray]:
    """{name: array} from a harness reply's output entries (`read(entry)` gives the array);
    a single output is keyed "probabilities"."""
    from edgetl.runtimes.base import single_output

    return single_output({e["name"]: read(e) for e in entries})


def float32_array(raw: bytes, shape: list[int]) -> np.ndarray:
    """Raw little-endian float32 (what the harnesses write) as a float32 array of `shape`."""
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
