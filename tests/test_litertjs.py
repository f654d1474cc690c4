"""LiteRT.js and WebGPU in real headless Chromium: every TFLite precision passes verify on
litertjs-wasm (threads, relaxed SIMD); the WebGPU engines (litertjs-webgpu, ort-web-webgpu,
tfjs-browser-webgpu) pass on the machine's adapter, SwiftShader's where there is no GPU, say
which ran, and fail, with litertjs-wasm, on a 1%-changed conv layer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

TFLITE_IDS = ["tflite_float32", "tflite_float16", "tflite_dynamic", "tflite_int8"]
WEBGPU = {
    "litertjs-webgpu": "tflite_float32",
    "ort-web-webgpu": "onnx",
    "tfjs-browser-webgpu": "tfjs_layers",
}
# SwiftShader compiles a shader per op (tens of seconds for TF.js and onnxruntime-web on 2
# cores); the probes after the first few add seconds each and say nothing more about a path.
WEBGPU_PROBES = 4


def few_probes(src: Path, dst: Path, k: int) -> Path:
    """A copy of the bundle keeping its first k golden probes (re-recorded in the manifest)."""
    from edgetl import corrupt
    from edgetl.manifest import Manifest

    shutil.copytree(src, dst)
    manifest = Manifest.load(dst)
    p = manifest.probes
    for key, shape in (("inputs", "input_shape"), ("expected", "output_shape")):
        arr = np.fromfile(dst / p[key], "<f4").reshape(p[shape])[:k]
        arr.tofile(dst / p[key])
        p[shape][0] = k
    p["names"], p["true_labels"], p["count"] = p["names"][:k], p["true_labels"][:k], k
    manifest.save(dst)
    corrupt.rehash(dst, [], probes=True)
    return dst


def test_tflite_files_have_a_fixed_batch_1_signature_native_litert_still_batches(tiny_bundle):
    from edgetl.manifest import Manifest, read_probes
    from edgetl.runtimes.litert_runtime import invoke, make_interpreter

    manifest = Manifest.load(tiny_bundle)
    probes = read_probes(tiny_bundle, manifest)
    records = [a for a in manifest.artifacts if a.format == "tflite"]
    assert sorted(a.id for a in records) == sorted(TFLITE_IDS)
    for a in records:
        assert a.options["batch"] == 1, a.id  # what the manifest says
        interp = make_interpreter(str(tiny_bundle / a.path))
        detail = interp.get_input_details()[0]
        assert list(detail["shape_signature"]) == [1, 96, 96, 3], a.id
        interp.allocate_tensors()
        invoke(interp, probes.inputs)  # the whole probe batch: a non-strict resize
        out = interp.get_tensor(interp.get_output_details()[0]["index"])
        assert out.shape == probes.expected.shape, a.id


@pytest.mark.browser
def test_litertjs_wasm_passes_every_tflite_precision(tiny_bundle):
    import os

    from edgetl import verify

    result = verify(tiny_bundle, runtimes=["litertjs-wasm"], artifacts=TFLITE_IDS)
    status = {s.name: s for s in result.runtimes}["litertjs-wasm"]
    assert status.available, status.reason
    pairs = {p.artifact: p for p in result.pairs}
    assert set(pairs) == set(TFLITE_IDS)
    for p in pairs.values():
        assert p.passed, (p.artifact, p.reasons)
    info = pairs["tflite_float32"].info
    assert info["engine"] == "litertjs" and info["backend"] == "wasm"
    assert info["cross_origin_isolated"] is True and info["wasm_threaded_build"] is True
    assert info["wasm_threads"] == max(1, min(os.cpu_count() or 1, 16))
    # float32 in XNNPACK's wasm kernels: as close as native LiteRT (float32 CPU limit)
    assert pairs["tflite_float32"].stats.max_abs <= pairs["tflite_float32"].tolerance.max_abs
    assert pairs["tflite_float32"].tolerance.name == "FLOAT32_CPU"
    assert result.ok


@pytest.mark.browser
@pytest.mark.slow
def test_webgpu_engines_pass_say_which_adapter_and_catch_a_one_percent_conv_change(
    tiny_bundle, tmp_path
):
    """One Chromium for both bundles: the corrupted one reuses the shaders the honest one
    compiled (SwiftShader's compile is most of a WebGPU run here)."""
    from edgetl import corrupt, verify
    from edgetl.runtimes.base import RunContext

    honest = few_probes(tiny_bundle, tmp_path / "honest", WEBGPU_PROBES)
    broken = tmp_path / "broken"
    shutil.copytree(honest, broken)
    ids = sorted({*WEBGPU.values(), "tflite_float32"})
    corrupt.apply("conv_largest_x1.01", broken, ids)
    runtimes = [*WEBGPU, "litertjs-wasm"]
    with RunContext() as context:
        good = verify(honest, runtimes=runtimes, artifacts=ids, require=runtimes, context=context)
        bad = verify(
            broken, runtimes=runtimes, artifacts=ids, context=context, localize_failures=False
        )
    pairs = {(p.runtime, p.artifact): p for p in good.pairs}
    for runtime, artifact in [*WEBGPU.items(), ("litertjs-wasm", "tflite_float32")]:
        p = pairs[(runtime, artifact)]
        assert p.passed, (runtime, p.reasons)
        if runtime in WEBGPU:
            assert p.info["backend"] == "webgpu", runtime
            adapter = p.info["webgpu_adapter"]
            assert adapter and adapter["vendor"], (runtime, adapter)  # which adapter ran
            assert p.tolerance.name == "FLOAT32_GPU", runtime
    assert good.ok, good.table()
    assert f"litertjs-webgpu: {adapter['vendor']}" in good.table()  # the report says which ran
    failed = {(p.runtime, p.artifact): p for p in bad.pairs}
    for runtime, artifact in [*WEBGPU.items(), ("litertjs-wasm", "tflite_float32")]:
        p = failed[(runtime, artifact)]
        assert not p.passed, runtime
        assert p.stats.max_abs > p.tolerance.max_abs, runtime
    assert not bad.ok
