"""pytest plugin (entry point `edgetl`): parity assertions for a project's own CI, in one line.

    from edgetl.pytest_plugin import assert_parity

    def test_bundle_matches_keras():
        assert_parity("dist/bundle", runtimes=["onnxruntime-cpu", "litert"])

your own files, no bundle (found by content; probes made from the Keras model):

    def test_my_exports():
        assert_parity(reference="model.keras", artifacts=["model.onnx", "web/model.json"])

or with the fixture, no import needed:

    def test_bundle(edgetl_parity):
        edgetl_parity("dist/bundle", require=["tfjs-browser-wasm"])

Kept import-light: pytest loads this module in every session of every project that installs
edgetl, so nothing heavy (numpy, TensorFlow, onnxruntime) is imported until a check runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest


def assert_parity(
    bundle_dir: str | Path | None = None,
    runtimes: Sequence[str] | str | None = None,
    *,
    artifacts: Sequence[str | Path] | str | None = None,
    require: Sequence[str] | str | None = None,
    data: str | Path | None = None,
    tolerances: Sequence[str] | None = None,
    reference: str | Path | None = None,
    probes: str | Path | None = None,
    images: str | Path | None = None,
):
    """Verify the bundle and raise edgetl.errors.ParityError (an AssertionError) carrying the
    report table unless every pair passed; returns the VerifyResult otherwise.

    Your own files, no bundle: assert_parity(reference="model.keras", artifacts=["model.onnx",
    "model.tflite", "web/model.json"]) (artifacts are then file paths, found by content;
    `probes`: a folder written by `edgetl verify --save-probes`, `images`: real probe images)."""
    if reference is not None or probes is not None:
        from edgetl.verifier import verify_files

        if bundle_dir is not None:
            raise TypeError("give bundle_dir, or reference/probes with artifact files, not both")
        files = [artifacts] if isinstance(artifacts, str | Path) else list(artifacts or [])
        result = verify_files(
            files,
            reference,
            runtimes=runtimes,
            data=data,
            probes=probes,
            images=images,
            require=require,
            tolerances=tolerances,
        )
        result.raise_for_status()
        return result
    from edgetl.verifier import verify

    if bundle_dir is None:
        raise TypeError("assert_parity needs bundle_dir, or reference= and artifacts=[files]")
    result = verify(
        bundle_dir,
        runtimes=runtimes,
        data=data,
        artifacts=artifacts,
        require=require,
        tolerances=tolerances,
    )
    result.raise_for_status()
    return result


@pytest.fixture
def edgetl_parity():
    """The assert_parity function, for tests that prefer a fixture to an import."""
    return assert_parity
