"""Saturated outputs (issue 20, defect 6): a confident model's probabilities are one-hot to
1e-12 on every probe, so a 1% change of a conv layer moves them by ~1e-12 and no element limit
can see it. verify judges such outputs in log-probability space, says which probes are
saturated, and fails them under --strict-probes. Real export, real runtimes (onnxruntime,
LiteRT); the model is a plain CNN fed raw 0..255 pixels, as users write them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgetl import corrupt
from edgetl.cli import main
from edgetl.manifest import Manifest

SIZE = 32
LABELS = ["checks", "dots", "stripes"]
RUNTIMES = "onnxruntime-cpu,litert"


def saturated_cnn():
    """Conv-ReLU-Conv-ReLU-pool-Dense-softmax on raw pixels: its logits are hundreds apart."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(len(LABELS), activation="softmax", name="probs")(x)
    model = keras.Model(inp, out)
    dense = model.get_layer("probs")
    dense.set_weights([w * 2 for w in dense.get_weights()])  # large weights: more confident
    return model


@pytest.fixture(scope="module")
def saturated_bundle(tmp_path_factory, sample_data) -> Path:
    from edgetl.bundle import export_bundle
    from edgetl.contract import InputContract
    from edgetl.data import sample_images

    contract = InputContract(SIZE, SIZE)
    images, labels, names = sample_images(sample_data, contract, LABELS, limit=12)
    out = tmp_path_factory.mktemp("saturated") / "bundle"
    export_bundle(
        saturated_cnn(),
        out,
        labels=LABELS,
        contract=contract,
        formats=["onnx", "tflite"],
        probe_images=images,
        probe_labels=labels,
        probe_names=names,
        log=lambda *_: None,
    )
    return out


def test_saturated_model_is_flagged_and_a_one_percent_conv_change_fails(
    saturated_bundle, tmp_path, capsys
):
    manifest = Manifest.load(saturated_bundle)
    cov = manifest.probes["coverage"]
    assert cov["saturated"] == cov["probes"]  # every probe one-hot to < 1e-4 ...
    assert cov["one_hot"] < cov["probes"] and cov["informative"]  # ... but not past the floor
    assert manifest.probes["noise"]["float32_log"] > 0

    base = ["verify", "--runtimes", RUNTIMES, "--no-localize"]
    assert main([*base, str(saturated_bundle)]) == 0
    out = capsys.readouterr().out
    assert f"{cov['probes']}/{cov['probes']} saturated (judged in log p)" in out
    assert main([*base, str(saturated_bundle), "--strict-probes"]) == 1
    assert "FAILED (--strict-probes)" in capsys.readouterr().out

    # conv1's kernel x1.01 in the ONNX and TFLite files (hashes re-recorded)
    bundle = tmp_path / "b"
    shutil.copytree(saturated_bundle, bundle)
    import keras

    model = keras.models.load_model(bundle / "source" / "model.keras", compile=False)
    kernel = np.asarray(model.get_layer("conv1").kernel)
    ids = ["onnx", "tflite_float32"]
    for rec in manifest.artifacts:
        if rec.id in ids:
            corrupt.edit_weight(bundle, rec, kernel, lambda w: w * 1.01)
    corrupt.rehash(bundle, ids)
    report = tmp_path / "r.json"
    assert main([*base, str(bundle), "--json", str(report)]) == 1
    pairs = {p["artifact"]: p for p in json.loads(report.read_text())["pairs"]}
    for art in ids:
        p = pairs[art]
        assert p["status"] == "fail"
        assert p["stats"]["max_abs"] < p["tolerance"]["max_abs"]  # probabilities cannot see it
        assert p["stats"]["max_log"] > 10 * p["tolerance"]["max_log"]
        assert any("log p" in r for r in p["reasons"])
    # without the log-space limit the old verdict passes it: that is what catches it
    capsys.readouterr()
    assert main([*base, str(bundle), "--tolerance", "max_log=none"]) == 0
