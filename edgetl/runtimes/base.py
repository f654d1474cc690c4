"""One interface for every backend (Polygraphy-style): an artifact and a batch in, named arrays out.

Each runtime module registers one or more Runtime instances in RUNTIMES. A runtime says whether
it can run on this machine (and why not); verify never counts an unavailable runtime as a pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.manifest import ArtifactRecord
from edgetl.registry import Registry


@dataclass(frozen=True)
class Artifact:
    """An artifact of a bundle, resolved to an absolute path."""

    record: ArtifactRecord
    bundle_dir: Path

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def format(self) -> str:
        return self.record.format

    @property
    def path(self) -> Path:
        return (self.bundle_dir / self.record.path).resolve()


class RuntimeUnavailable(RuntimeError):
    """Raised by run() when the runtime turns out not to work here (e.g. a silent CPU fallback)."""


class Runtime(ABC):
    """A backend. Capabilities are declared here as flags, never guessed from the name:

    gpu            runs on a GPU (judged by the GPU float32 tolerance)
    same_thread    must be called from the thread that created it (Playwright's sync API)
    data_sample    None: with --data it runs every image; N: a stated stratified sample of N (slow
                   runtimes: TF.js wasm, pure-JS cpu, software WebGL)
    has_layer_outputs  implements layer_outputs() (per-layer values, for localization)
    last_info      after run_many(), per artifact id, what really ran (backend, precision, timings)
    """

    name: str = ""  # registry name, e.g. "onnxruntime-cpu", "tfjs-node-wasm"
    formats: frozenset[str] = frozenset()  # ArtifactRecord.format values it can run
    gpu: bool = False
    same_thread: bool = False
    data_sample: int | None = None
    has_layer_outputs: bool = False
    last_info: dict[str, dict] = {}  # noqa: RUF012 (replaced per run by runtimes that fill it)

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when usable on this machine, else a one-line reason (cheap: no model loading)."""

    @abstractmethod
    def run(self, artifact: Artifact, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run a float32 0..255 NHWC batch; return {output_name: array} (float32, dequantized)."""

    def run_many(
        self, artifacts: list[Artifact], inputs: np.ndarray
    ) -> dict[str, dict[str, np.ndarray] | Exception]:
        """Run several artifacts; runtimes with costly start-up (Node, Chromium) override this
        to start once. A failure of one artifact is returned as its exception, not raised."""
        results: dict[str, dict[str, np.ndarray] | Exception] = {}
        for a in artifacts:
            try:
                results[a.id] = self.run(a, inputs)
            except Exception as e:  # reported per artifact by verify
                results[a.id] = e
        return results

    def accepts(self, artifact: Artifact) -> bool:
        return artifact.format in self.formats

    def layer_outputs(
        self, artifact: Artifact, inputs: np.ndarray, names: list[str]
    ) -> dict[str, np.ndarray]:
        """Named Keras layers' outputs for `inputs` (only where has_layer_outputs is True)."""
        raise NotImplementedError(f"{self.name} gives no per-layer outputs")


RUNTIMES: Registry[Runtime] = Registry("runtime")

# Runtime modules, imported by load_runtimes() so each registers its instances.
RUNTIME_MODULES = [
    "edgetl.runtimes.keras_runtime",
    "edgetl.runtimes.onnxruntime_runtime",
    "edgetl.runtimes.litert_runtime",
    "edgetl.runtimes.tfjs_node",
    "edgetl.runtimes.tfjs_browser",
    "edgetl.runtimes.ortweb",
]


def load_runtimes() -> Registry[Runtime]:
    import importlib

    for mod in RUNTIME_MODULES:
        importlib.import_module(mod)
    return RUNTIMES


def web_dir() -> Path:
    """The repo's web/ folder (JS app + TF.js harness); node_modules lives there."""
    return Path(__file__).resolve().parents[2] / "web"
