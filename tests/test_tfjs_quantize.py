"""TF.js weight quantization (`export --tfjs-quantize float16,uint8`): real shards written by
tensorflowjs, their sizes in the manifest, and verify judging them in TF.js (Node and Chromium)
with the float16 and TFJS_UINT8 rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def quant_bundle(tmp_path_factory, tiny_run, sample_data) -> Path:
    """tiny_run (data-fitted MobileNetV2 0.35/96) as TF.js Layers float32, float16 and uint8."""
    from edgetl.bundle import export_from_source

    out = tmp_path_factory.mktemp("quant") / "bundle"
    export_from_source(
        tiny_run,
        out,
        data_dir=sample_data,
        sample_limit=16,
        formats=("tfjs",),
        tfjs_quantizations=("float16", "uint8"),
        log=lambda *_: None,
    )
    return out


def test_quantized_shards_are_smaller_and_recorded(quant_bundle):
    from edgetl.manifest import Manifest

    manifest = Manifest.load(quant_bundle)
    recs = {a.id: a for a in manifest.artifacts}
    assert set(recs) == {"tfjs_layers", "tfjs_layers_float16", "tfjs_layers_uint8"}
    f32 = recs["tfjs_layers"]
    for q, ratio in (("float16", 0.5), ("uint8", 0.25)):
        rec = recs[f"tfjs_layers_{q}"]
        assert rec.format == "tfjs_layers" and rec.precision == q
        assert rec.path == f"tfjs_{q}/model.json"
        # Every weight in the shards is stored in that dtype (tensorflowjs' own writer).
        model_json = json.loads((quant_bundle / rec.path).read_text())
        weights = [w for g in model_json["weightsManifest"] for w in g["weights"]]
        assert weights and all(w["quantization"]["dtype"] == q for w in weights)
        shard_bytes = sum(
            (quant_bundle / Path(rec.path).parent / p).stat().st_size
            for g in model_json["weightsManifest"]
            for p in g["paths"]
        )
        f32_json = json.loads((quant_bundle / f32.path).read_text())
        f32_shards = sum(
            (quant_bundle / "tfjs" / p).stat().st_size
            for g in f32_json["weightsManifest"]
            for p in g["paths"]
        )
        assert shard_bytes == pytest.approx(ratio * f32_shards, rel=0.01)
        # The manifest records sizes (what the bench and the export summary print).
        saved = json.loads((quant_bundle / "manifest.json").read_text())
        entry = next(a for a in saved["artifacts"] if a["id"] == rec.id)
        assert entry["size"] == rec.size == sum(f.size for f in rec.files) < f32.size


@pytest.mark.node
def test_verify_judges_quantized_tfjs_in_node_and_chromium(quant_bundle):
    from edgetl import verify
    from edgetl.runtimes.base import RUNTIMES, load_runtimes

    load_runtimes()
    wanted = ["tfjs-node-wasm", "tfjs-browser-wasm"]
    runtimes = [n for n in wanted if RUNTIMES.get(n).unavailable_reason() is None]
    if not runtimes:
        pytest.skip("neither Node nor Chromium is available")
    result = verify(quant_bundle, runtimes=runtimes)
    pairs = {(p.artifact, p.runtime): p for p in result.pairs}
    for rt in runtimes:
        f16 = pairs[("tfjs_layers_float16", rt)]
        assert f16.tolerance.name == "TFLITE_FLOAT16" and f16.passed, f16.reasons
        assert 1e-4 < f16.stats.max_abs <= f16.tolerance.max_abs  # really float16, really close
        u8 = pairs[("tfjs_layers_uint8", rt)]
        assert u8.tolerance.name == "TFJS_UINT8" and u8.tolerance.max_abs is None
        assert u8.passed, u8.reasons
        assert u8.stats.decisive >= 8
        assert u8.stats.max_abs > f16.stats.max_abs  # 256 levels per tensor: coarser
        assert pairs[("tfjs_layers", rt)].passed
    assert result.ok
