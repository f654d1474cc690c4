"""TF.js weight quantization (`export --tfjs-quantize float16,uint8`): real shards written by
tensorflowjs, their sizes in the manifest, and verify judging them in TF.js (Node and Chromium)
with the float16 and TFJS_UINT8 rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from edgetl.converters.tfjs import UINT8_MIN_ELEMENTS


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
    sizes = {}
    for q in ("float16", "uint8"):
        rec = recs[f"tfjs_layers_{q}"]
        assert rec.format == "tfjs_layers" and rec.precision == q
        assert rec.path == f"tfjs_{q}/model.json"
        model_json = json.loads((quant_bundle / rec.path).read_text())
        weights = [w for g in model_json["weightsManifest"] for w in g["weights"]]
        assert weights and all(w["dtype"] == "float32" for w in weights)
        stored = {w["name"]: w["quantization"]["dtype"] for w in weights}
        if q == "float16":  # every weight float16 (tensorflowjs' own writer)
            assert set(stored.values()) == {"float16"}
        else:  # large kernels uint8; depthwise, small kernels, biases, BatchNorm float16
            for w in weights:
                elements = int(np.prod(w["shape"]))
                big_kernel = w["name"].endswith("/kernel") and elements >= UINT8_MIN_ELEMENTS
                assert stored[w["name"]] == ("uint8" if big_kernel else "float16"), w
            assert "uint8" in stored.values()
        sizes[q] = sum(
            (quant_bundle / Path(rec.path).parent / p).stat().st_size
            for g in model_json["weightsManifest"]
            for p in g["paths"]
        )
        # The manifest records sizes (what the bench and the export summary print).
        saved = json.loads((quant_bundle / "manifest.json").read_text())
        entry = next(a for a in saved["artifacts"] if a["id"] == rec.id)
        assert entry["size"] == rec.size == sum(f.size for f in rec.files) < f32.size
    f32_json = json.loads((quant_bundle / f32.path).read_text())
    f32_shards = sum(
        (quant_bundle / "tfjs" / p).stat().st_size
        for g in f32_json["weightsManifest"]
        for p in g["paths"]
    )
    assert sizes["float16"] == pytest.approx(0.5 * f32_shards, rel=0.01)
    # MobileNetV2 0.35/96 has many kernels under UINT8_MIN_ELEMENTS (float16): above 1/4.
    assert 0.25 * f32_shards < sizes["uint8"] < 0.75 * sizes["float16"]


def test_uint8_export_is_equalized_and_records_the_rescaled_layers(quant_bundle):
    """The uint8 Layers model carries the equalized kernels (the float32 and float16 ones the
    original), and its model.json names the rescaled convs for localization."""
    import keras
    from edgetl.converters.tfjs import equalize_channels, rescaled_layers

    from edgetl.manifest import Manifest

    source = Manifest.load(quant_bundle).source_model["file"]
    model = keras.models.load_model(quant_bundle / source, compile=False)
    _, rescaled = equalize_channels(model)
    assert rescaled
    assert rescaled_layers(quant_bundle / "tfjs_uint8" / "model.json") == set(rescaled)
    assert rescaled_layers(quant_bundle / "tfjs_float16" / "model.json") == set()
    assert rescaled_layers(quant_bundle / "tfjs" / "model.json") == set()


@pytest.mark.node
def test_verify_judges_quantized_tfjs_in_node_and_chromium(quant_bundle, sample_data):
    from edgetl import verify
    from edgetl.runtimes.base import RUNTIMES, load_runtimes

    load_runtimes()
    wanted = ["tfjs-node-wasm", "tfjs-browser-wasm"]
    runtimes = [n for n in wanted if RUNTIMES.get(n).unavailable_reason() is None]
    if not runtimes:
        pytest.skip("neither Node nor Chromium is available")
    # tf.loadLayersModel loads every variant; --data judges the accuracy drop too.
    result = verify(quant_bundle, runtimes=[*runtimes, "keras"], data=sample_data)
    pairs = {(p.artifact, p.runtime): p for p in result.pairs}
    for rt in runtimes:
        f16 = pairs[("tfjs_layers_float16", rt)]
        assert f16.tolerance.name == "TFLITE_FLOAT16" and f16.passed, f16.reasons
        assert 1e-4 < f16.stats.max_abs <= f16.tolerance.max_abs  # really float16, really close
        u8 = pairs[("tfjs_layers_uint8", rt)]
        assert u8.tolerance.name == "TFJS_UINT8" and u8.tolerance.max_abs is None
        assert u8.passed, u8.reasons
        assert u8.accuracy is not None and u8.accuracy >= u8.reference_accuracy - 0.05
        assert u8.stats.decisive >= 8
        assert u8.stats.max_abs > f16.stats.max_abs  # 256 levels per tensor: coarser
        assert pairs[("tfjs_layers", rt)].passed
    assert result.ok


def _randomized_classifier(name: str, alpha: float, size: int):
    """An edgetl classifier (the application nested) with non-trivial weights: output channels
    of every conv scaled 10^-2..10^1 apart and random BatchNorm statistics, so equalization has
    real work to do and a wrong compensation shows."""
    import keras
    import numpy as np
    from edgetl.models.base import build_backbone

    from edgetl.classifier import build_classifier

    model = build_classifier(build_backbone(name, alpha, size, weights="none"), 3)
    rng = np.random.default_rng(0)
    base = next(la for la in model.layers if isinstance(la, keras.Model))
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.01, 2.0, c).astype("float32"))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
        elif isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
            k = layer.kernel.numpy()
            layer.kernel.assign(k * 10 ** rng.uniform(-2, 1, k.shape[-1]).astype("float32"))
    return model


@pytest.mark.parametrize("backbone", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"])
def test_equalization_is_exact_and_leaves_the_model_alone(backbone):
    """equalize_channels' weights, put into a copy, give the original outputs (float32
    rounding only); the caller's model is unchanged; MobileNetV3's squeeze-excite convs (bias,
    no BatchNorm) are left alone; every equalized kernel's channels share one max |value|."""
    import keras
    import numpy as np
    from edgetl.converters.tfjs import MAX_CHANNEL_SCALE, equalize_channels, weight_variables
    from edgetl.models import BACKBONES

    alpha, size = BACKBONES.get(backbone).small
    model = _randomized_classifier(backbone, alpha, size)
    before = [w.copy() for w in model.get_weights()]
    overrides, rescaled = equalize_channels(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    variables = dict(weight_variables(model))
    assert rescaled and set(overrides) <= set(variables)
    kinds = {type(la).__name__ for la in _all_layers(model) if la.name in rescaled}
    assert {"Conv2D", "DepthwiseConv2D"} <= kinds
    if backbone.startswith("mobilenet_v3"):
        se = [la.name for la in _all_layers(model) if "squeeze_excite" in la.name]
        assert se and not set(se) & set(rescaled)
    layers = {la.name: la for la in _all_layers(model)}
    for name in rescaled:
        depthwise = isinstance(layers[name], keras.layers.DepthwiseConv2D)
        kernel = overrides[f"{name}/{'depthwise_kernel' if depthwise else 'kernel'}"]
        taps = kernel.shape[0] * kernel.shape[1] if depthwise else -1
        amax = np.abs(
            kernel.reshape(taps, -1) if depthwise else kernel.reshape(-1, kernel.shape[-1])
        ).max(0)
        assert amax.min() >= 0.999 * amax.max() / MAX_CHANNEL_SCALE

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for key, var in weight_variables(copy):
        if key in overrides:
            var.assign(overrides[key])
    x = np.random.default_rng(1).uniform(0, 255, (4, size, size, 3)).astype("float32")
    pool = "features_pool"
    ref = keras.Model(model.input, model.get_layer(pool).output)(x, training=False)
    got = keras.Model(copy.input, copy.get_layer(pool).output)(x, training=False)
    ref, got = np.asarray(ref), np.asarray(got)
    assert np.abs(ref).max() > 1e-3  # a live embedding
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-6


def _all_layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer
