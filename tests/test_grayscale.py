"""1-channel (grayscale) models (issue 20, defect 3): the contract records the channel and
the RGB -> gray rule (ITU-R BT.601 luma), the probes are real images converted by it, and every
runtime feeds the model what it takes. A tiny gray CNN exported by the CLI from a .keras file,
verified on real runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.cli import main
from edgetl.contract import GRAY_WEIGHTS
from edgetl.manifest import Manifest, read_probes

SIZE = 32
LABELS = "checks,dots,stripes"


@pytest.fixture(scope="module")
def gray_bundle(tmp_path_factory, sample_data) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    root = tmp_path_factory.mktemp("gray")
    keras.Model(inp, out).save(root / "gray.keras")
    bundle = root / "bundle"
    args = ["export", str(root / "gray.keras"), "--out", str(bundle), "--labels", LABELS]
    assert main([*args, "--calibration", str(sample_data), "--quantize", "int8"]) == 0
    return bundle


def test_gray_model_contract_and_real_image_probes(gray_bundle, sample_data):
    from edgetl.data import load_image

    m = Manifest.load(gray_bundle)
    assert (m.input.channels, m.input.channel_order) == (1, "gray")
    assert m.input.gray_weights == GRAY_WEIGHTS
    raw = json.loads((gray_bundle / "manifest.json").read_text())["input"]
    assert raw["shape"] == [None, SIZE, SIZE, 1] and raw["gray_weights"] == list(GRAY_WEIGHTS)
    probes = read_probes(gray_bundle, m)
    assert probes.inputs.shape[1:] == (SIZE, SIZE, 1)
    real = [i for i, n in enumerate(probes.names) if n.startswith("image:")]
    assert real, "real images are probes"
    i = real[0]
    rgb = load_image(sample_data / probes.names[i][len("image:") :], SIZE, SIZE)
    want = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(probes.inputs[i, ..., 0], want, atol=1e-3)


def test_gray_model_verifies_on_native_runtimes(gray_bundle, tmp_path):
    report = tmp_path / "r.json"
    rts = "onnxruntime-cpu,litert,keras"
    assert main(["verify", str(gray_bundle), "--runtimes", rts, "--json", str(report)]) == 0
    pairs = json.loads(report.read_text())["pairs"]
    ran = {(p["artifact"], p["runtime"]) for p in pairs if p["status"] == "pass"}
    assert {("onnx", "onnxruntime-cpu"), ("tflite_float32", "litert")} <= ran
    assert ("tflite_int8", "litert") in ran  # calibrated on gray images too


@pytest.mark.node
def test_gray_model_verifies_in_tfjs_node(gray_bundle):
    assert main(["verify", str(gray_bundle), "--runtimes", "tfjs-node-wasm", "--require",
                 "tfjs-node-wasm"]) == 0  # fmt: skip


@pytest.mark.browser
def test_gray_model_verifies_in_chromium(gray_bundle):
    rts = "tfjs-browser-wasm,ort-web-wasm"
    assert main(["verify", str(gray_bundle), "--runtimes", rts, "--require", rts]) == 0


def test_other_channel_counts_are_refused_in_one_line(tmp_path, capsys):
    import keras

    inp = keras.Input((8, 8, 2))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x)).save(tmp_path / "m.keras")
    out = tmp_path / "b"
    assert main(["export", str(tmp_path / "m.keras"), "--out", str(out), "--labels", "a,b"]) == 2
    err = capsys.readouterr().err.strip()
    assert "(batch, height, width, 1) (grayscale)" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_gray_contract_round_trips_and_needs_its_rule():
    from edgetl.contract import InputContract

    c = InputContract.for_channels(1, height=8, width=8)
    assert InputContract.from_dict(c.to_dict()) == c
    assert "gray_weights" not in InputContract(8, 8).to_dict()  # RGB contracts unchanged
    with pytest.raises(ValueError, match="gray_weights"):
        InputContract(8, 8, channels=1)
    with pytest.raises(ValueError, match="not 4"):
        InputContract(8, 8, channels=4)
