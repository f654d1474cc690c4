"""pytest plugin (entry point `edgetl`): parity assertions for a project's own CI, in one line.

    from edgetl.pytest_plugin import assert_parity

    def test_bundle_matches_keras():
        assert_parity("dist/bundle", runtimes=["onnxruntime-cpu", "litert"])

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
    bundle_dir: str | Path,
    runtimes: Sequence[str] | str | None = None,
    *,
    artifacts: Sequence[str] | str | None = None,
    require: Sequence[str] | str | None = None,
    data: str | Path | None = None,
    tolerances: Sequence[str] | None = None,
):
    """Verify the bundle and raise edgetl.errors.ParityError (an AssertionError) carrying the
    report table unless every pair passed; returns the VerifyResult otherwise."""
    from edgetl.verifier import verify

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
