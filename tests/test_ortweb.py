"""onnxruntime-web in real headless Chromium (edgetl.runtimes.ortweb): the ONNX artifact passes
verify on ort-web-wasm with threads and SIMD, and a 1% change of one conv kernel fails it
(ort-web-webgpu is tested with the other WebGPU engines in test_litertjs.py)."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.browser


def ort_web_version() -> str:
    """The onnxruntime-web version pinned in web/package.json (what the page must report)."""
    import json

    from edgetl.webdir import web_dir

    return json.loads((web_dir() / "package.json").read_text())["dependencies"]["onnxruntime-web"]


@pytest.fixture(scope="module")
def ortweb():
    from edgetl.runtimes.base import RUNTIMES, load_runtimes

    load_runtimes()
    rt = RUNTIMES.get("ort-web-wasm")
    reason = rt.unavailable_reason()
    if reason:
        pytest.skip(reason)
    return rt


def test_ort_web_passes_verify_and_reports_what_ran(ortweb, tiny_bundle):
    import os

    from edgetl import verify

    # ort-web-webgpu: tests/test_litertjs.py (with the other WebGPU engines, on few probes)
    result = verify(tiny_bundle, runtimes=["ort-web-wasm"], artifacts=["onnx"])
    pairs = {p.runtime: p for p in result.pairs}
    wasm = pairs["ort-web-wasm"]
    assert wasm.passed, wasm.reasons
    assert wasm.stats.max_abs <= wasm.tolerance.max_abs
    assert wasm.stats.top1_agreement == 1.0
    info = wasm.info
    assert info["engine"] == "onnxruntime-web" and info["backend"] == "wasm"
    assert info["ort_version"] == ort_web_version()
    assert info["cross_origin_isolated"] is True
    assert info["wasm_threads"] == max(1, min(os.cpu_count() or 1, 16))
    assert result.ok


def test_ort_web_catches_a_one_percent_conv_change(ortweb, tiny_bundle, tmp_path):
    from edgetl import corrupt, verify

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    corrupt.apply("conv_largest_x1.01", copy, ["onnx"])
    result = verify(copy, runtimes=["onnxruntime-cpu", "ort-web-wasm"], artifacts=["onnx"])
    pairs = {p.runtime: p for p in result.pairs}
    assert not pairs["ort-web-wasm"].passed
    assert pairs["ort-web-wasm"].stats.max_abs > pairs["ort-web-wasm"].tolerance.max_abs
    # the same verdict as native onnxruntime on the same file
    assert not pairs["onnxruntime-cpu"].passed
    assert not result.ok
