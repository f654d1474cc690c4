"""Runtime "keras": the bundle's own source model (source/model.keras), run by Keras itself.

It is the reference, not a candidate (flag `reference`): verify compares every artifact against
the golden probes recorded at export *and* against what Keras computes here and now (catching a
bundle whose probes were produced by another model or another Keras). It runs no exported
format; verify opens it on source_artifact(), the manifest's source model as an Artifact.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from edgetl.bundlecheck import check_keras_archive
from edgetl.results import SOURCE_ARTIFACT
from edgetl.runtimes.base import (
    OUTPUT_NAME,
    RUNTIMES,
    Artifact,
    Options,
    RunContext,
    Runtime,
    RuntimeUnavailable,
    Session,
)

BATCH_SIZE = 16
SOURCE_FORMAT = "keras"


def source_model_path(bundle_dir: Path) -> Path:
    """Absolute path of the bundle's Keras source model (BundleError if the manifest lacks it)."""
    from edgetl.manifest import BundleError, Manifest

    manifest = Manifest.load(bundle_dir)
    rel = (manifest.source_model or {}).get("file")
    if not rel:
        raise BundleError(f"{bundle_dir}: the manifest names no source model")
    return (Path(bundle_dir) / rel).resolve()


def source_artifact(bundle_dir: Path, rel_path: str) -> Artifact:
    """The bundle's source model as an Artifact the keras runtime opens."""
    from edgetl.manifest import ArtifactRecord

    record = ArtifactRecord(SOURCE_ARTIFACT, SOURCE_FORMAT, "float32", rel_path)
    return Artifact(record, Path(bundle_dir))


class KerasSession(Session):
    def __init__(self, runtime: KerasRuntime, artifact: Artifact, model) -> None:
        super().__init__(runtime, artifact)
        self.model = model

    def infer(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        t = time.perf_counter()
        out = self.model.predict(np.asarray(x, np.float32), batch_size=BATCH_SIZE, verbose=0)
        info = {"timings": {"infer_ms": (time.perf_counter() - t) * 1e3}}
        return {OUTPUT_NAME: np.asarray(out, dtype=np.float32)}, info


class KerasRuntime(Runtime):
    name = "keras"
    formats = frozenset({SOURCE_FORMAT})  # the source model only; no exported artifact
    reference = True

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
            check_keras_archive(path)  # nothing in it may point outside the bundle
            import keras

            self._models[path] = keras.models.load_model(path, compile=False)
        return self._models[path]

    def start(self, artifact: Artifact, context: RunContext, options: Options) -> KerasSession:
        return KerasSession(self, artifact, self.load(artifact.path))


RUNTIMES.register(KerasRuntime())
