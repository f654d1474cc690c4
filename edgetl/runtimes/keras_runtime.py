"""Runtime "keras": the bundle's own source model (source/model.keras), run by Keras itself.

It is the reference, not a candidate: verify compares every artifact against the golden probes
recorded at export *and* against what Keras computes here and now (catching a bundle whose
probes were produced by another model or another Keras). It runs no artifact format; the
source model is resolved from the manifest (manifest.source_model["file"]).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from edgetl.runtimes.base import RUNTIMES, Artifact, Runtime, RuntimeUnavailable

OUTPUT_NAME = "probabilities"
BATCH_SIZE = 16


def source_model_path(bundle_dir: Path) -> Path:
    """Absolute path of the bundle's Keras source model (BundleError if the manifest lacks it)."""
    from edgetl.manifest import BundleError, Manifest

    manifest = Manifest.load(bundle_dir)
    rel = (manifest.source_model or {}).get("file")
    if not rel:
        raise BundleError(f"{bundle_dir}: the manifest names no source model")
    return (Path(bundle_dir) / rel).resolve()


class KerasRuntime(Runtime):
    name = "keras"
    formats = frozenset({"keras"})  # the source model only; no exported artifact
    gpu = False

    def __init__(self) -> None:
        self._models: dict[Path, object] = {}

    def unavailable_reason(self) -> str | None:
        for pkg in ("tensorflow", "keras"):
            if importlib.util.find_spec(pkg) is None:
                return f"{pkg} is not installed (the golden probes remain the reference)"
        return None

    def load(self, path: Path):
        """The Keras model at `path`, loaded once per process (verify and localization share it)."""
        path = Path(path).resolve()
        if path not in self._models:
            if not path.is_file():
                raise RuntimeUnavailable(f"no Keras source model at {path}")
            import keras

            self._models[path] = keras.models.load_model(path, compile=False)
        return self._models[path]

    def run(self, artifact: Artifact, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """`artifact` may be any artifact of the bundle: the bundle's source model is what runs."""
        return self.run_source(artifact.bundle_dir, inputs)

    def run_source(self, bundle_dir: Path, inputs: np.ndarray) -> dict[str, np.ndarray]:
        model = self.load(source_model_path(bundle_dir))
        out = model.predict(np.asarray(inputs, np.float32), batch_size=BATCH_SIZE, verbose=0)
        return {OUTPUT_NAME: np.asarray(out, dtype=np.float32)}


RUNTIMES.register("keras", KerasRuntime())
