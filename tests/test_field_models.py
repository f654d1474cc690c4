"""Models from the field (issue 20): the shapes real users' Keras classifiers come in, each
built here in a few lines, exported by the real CLI and loaded by the real runtimes.

1. Keras 3 Sequential models (tf2onnx 1.17 failed on every one).
2. --add-softmax on a model whose outputs are a one-element list.
4. TF 1.x-era Keras 2 .h5 (initializer configs carry dtype), saved under another extension.
5. A wrapper whose output is a nested functional model's (TF.js model.json numbered the node
   2, which tfjs cannot load), and export loading every artifact before it exits 0.
7. A .keras the installed Keras cannot rebuild: one line naming the Keras that saved it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import cli, refused, snapshot

SIZE = 16


def _layers(keras):
    return [
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
    ]


def _manifest_ids(bundle: Path) -> set[str]:
    return {a["id"] for a in json.loads((bundle / "manifest.json").read_text())["artifacts"]}


@pytest.mark.slow
@pytest.mark.node
def test_sequential_model_exports_to_every_format(tmp_path, capsys):
    import keras

    keras.utils.set_random_seed(0)
    seq = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), *_layers(keras), keras.layers.Dense(3, activation="softmax")]
    )
    seq.save(tmp_path / "seq.keras")
    out = tmp_path / "b"
    code, text = cli(capsys, "export", tmp_path / "seq.keras", "--out", out, "--labels", "a,b,c")
    assert code == 0, text
    # export loaded each artifact in its runtime (TF.js Layers in TF.js on Node included)
    assert {"onnx", "tflite_float32", "tfjs_layers"} <= _manifest_ids(out)
    assert "not load-checked" not in text


@pytest.mark.slow
def test_add_softmax_on_a_one_element_output_list(tmp_path, capsys):
    import keras
    import onnxruntime as ort

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    x = inp
    for layer in _layers(keras):
        x = layer(x)
    keras.Model(inp, [keras.layers.Dense(3)(x)]).save(tmp_path / "list.keras")
    out = tmp_path / "b"
    args = ["export", tmp_path / "list.keras", "--out", out, "--labels", "a,b,c", "--add-softmax"]
    code, text = cli(capsys, *args, "--formats", "onnx")
    assert code == 0, text
    sess = ort.InferenceSession(str(out / "model.onnx"))
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    np.testing.assert_allclose(y.sum(1), 1, atol=1e-5)


def _tf1_era_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A tf_keras model saved as .h5, then marked as a TF 1.x-era file: keras_version 2.2.4-tf
    and `dtype` in every initializer config, as those files carry. Returns its outputs on a
    seeded batch (tf_keras' own prediction)."""
    import h5py
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((SIZE, SIZE, 3))
    x = tf_keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = tf_keras.layers.BatchNormalization()(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3, activation="softmax")(x))
    h5 = path.with_suffix(".h5")
    model.save(h5)

    def add_dtype(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_initializer") and isinstance(value, dict):
                    value.setdefault("config", {})["dtype"] = "float32"
                add_dtype(value)
        elif isinstance(node, list):
            for value in node:
                add_dtype(value)

    with h5py.File(h5, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        add_dtype(config)
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.2.4-tf"
    h5.rename(path)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    return x, model.predict(x, verbose=0)


@pytest.mark.slow
def test_tf1_era_keras2_h5_saved_as_dot_model_loads_and_exports(tmp_path, capsys):
    from edgetl.modelio import load_model_source

    path = tmp_path / "classifier.model"  # HDF5 under another name: sniffed, not refused
    x, expected = _tf1_era_h5(path)
    loaded = load_model_source(path, labels=["a", "b", "c"])
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), expected, atol=1e-6)
    out = tmp_path / "b"
    code, text = cli(capsys, "export", path, "--out", out, "--labels", "a,b,c", "--formats",
                     "onnx,tflite")  # fmt: skip
    assert code == 0, text
    assert {"onnx", "tflite_float32"} <= _manifest_ids(out)


def test_a_file_that_is_neither_hdf5_nor_keras_is_refused_by_content(tmp_path, capsys):
    bad = tmp_path / "classifier.model"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a model")
    refused(capsys, ["export", bad, "--out", tmp_path / "b"], "not a Keras model file",
            watch=[tmp_path])  # fmt: skip


def _nested_output_model(path: Path, kind: str) -> None:
    """keras.Model(inp, inner(Rescaling(inp))): the wrapper's output is the nested model's."""
    import keras

    keras.utils.set_random_seed(0)
    head = [keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D()]
    if kind == "sequential":
        inner = keras.Sequential(
            [keras.Input((SIZE, SIZE, 3)), *head, keras.layers.Dense(3, activation="softmax")],
            name="inner",
        )
    else:
        i = keras.Input((SIZE, SIZE, 3))
        x = i
        for layer in head:
            x = layer(x)
        inner = keras.Model(i, keras.layers.Dense(3, activation="softmax")(x), name="inner")
    inp = keras.Input((SIZE, SIZE, 3))
    keras.Model(inp, inner(keras.layers.Rescaling(1 / 127.5, offset=-1)(inp))).save(path)


@pytest.mark.slow
@pytest.mark.node
@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_wrapper_around_a_nested_model_loads_in_tfjs(tmp_path, capsys, kind):
    from edgetl.manifest import Manifest
    from edgetl.runtimes.base import Artifact, load_runtimes

    _nested_output_model(tmp_path / "w.keras", kind)
    out = tmp_path / "b"
    code, text = cli(capsys, "export", tmp_path / "w.keras", "--out", out, "--labels", "a,b,c",
                     "--formats", "tfjs")  # fmt: skip
    assert code == 0, text
    refs = json.loads((out / "tfjs" / "model.json").read_text())["modelTopology"]
    assert refs["model_config"]["config"]["output_layers"] == [["inner", 1, 0]]
    m = Manifest.load(out)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    y = load_runtimes().get("tfjs-node-cpu").run(Artifact(m.artifact("tfjs_layers"), out), x)
    np.testing.assert_allclose(y["probabilities"].sum(1), 1, atol=1e-5)


@pytest.mark.slow
@pytest.mark.node
def test_export_refuses_an_artifact_its_runtime_cannot_load(tmp_path, capsys, monkeypatch):
    """The TF.js numbering before the fix (+1 on every nested reference) writes a model.json
    tfjs cannot load: export must fail naming the artifact, exit 2, write nothing."""
    from edgetl.converters import tfjs

    _nested_output_model(tmp_path / "w.keras", "functional")
    monkeypatch.setattr(
        tfjs, "_nested_refs", lambda refs, nested: [[n, i + 1, t] for n, i, t in
                                                    (refs if refs and isinstance(refs[0], list)
                                                     else [refs])]
    )  # fmt: skip
    before = snapshot(tmp_path)
    code, text = cli(capsys, "export", tmp_path / "w.keras", "--out", tmp_path / "b",
                     "--labels", "a,b,c", "--formats", "tfjs")  # fmt: skip
    assert code == 2, text
    line = text.strip().splitlines()[-1]
    assert "tfjs_layers" in line and "does not load" in line and "Nothing was written" in line
    assert "outputTensors" in line  # tfjs' own reason, in the same line
    assert not (tmp_path / "b").exists() and snapshot(tmp_path) == before


def test_keras_file_this_keras_cannot_rebuild_is_one_line_naming_its_version(tmp_path, capsys):
    """A .keras whose graph 3.15 cannot rebuild (as Keras 3.8's Capricorn file: a Dense handed
    two tensors), saved by "3.8.0"."""
    import keras

    inp = keras.Input((SIZE, SIZE, 3))
    a = keras.layers.GlobalAveragePooling2D(name="gap_a")(inp)
    b = keras.layers.GlobalMaxPooling2D(name="gap_b")(inp)
    out = keras.layers.Dense(3, activation="softmax", name="dense")(keras.layers.Add()([a, b]))
    good = tmp_path / "good.keras"
    keras.Model(inp, out).save(good)
    bad = tmp_path / "old.keras"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                for layer in config["config"]["layers"]:
                    if layer["name"] == "dense":  # call Dense on both pooled tensors
                        gap_b = next(x for x in config["config"]["layers"] if x["name"] == "gap_b")
                        args = layer["inbound_nodes"][0]["args"]
                        history = {"keras_history": ["gap_b", 0, 0]}
                        tensor = {**args[0], "config": {**args[0]["config"], **history}}
                        layer["inbound_nodes"][0]["args"] = [[args[0], tensor]]
                        assert gap_b
                data = json.dumps(config).encode()
            if item.filename == "metadata.json":
                data = json.dumps({"keras_version": "3.8.0", "date_saved": "x"}).encode()
            dst.writestr(item, data)
    text = refused(capsys, ["export", bad, "--out", tmp_path / "b"], "saved by Keras 3.8.0",
                   f"installed Keras {keras.__version__} cannot rebuild", "load_weights",
                   watch=[tmp_path])  # fmt: skip
    assert len(text.strip().splitlines()) == 1, text
    assert "KerasTensor" not in text and "keras_tensor" not in text


def test_hdf5_and_keras_files_are_told_by_their_bytes(tmp_path):
    import h5py

    from edgetl.modelio import HDF5, KERAS_ZIP, sniff_format

    with h5py.File(tmp_path / "plain.model", "w") as f:
        f.attrs["keras_version"] = "2.2.4-tf"
    with h5py.File(tmp_path / "userblock.bin", "w", userblock_size=512) as f:
        f.attrs["keras_version"] = "2.2.4-tf"
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as z:
        z.writestr("metadata.json", "{}")
    (tmp_path / "text.h5").write_text("not hdf5")
    assert sniff_format(tmp_path / "plain.model") == HDF5
    assert sniff_format(tmp_path / "userblock.bin") == HDF5
    assert sniff_format(tmp_path / "m.zip") == KERAS_ZIP
    assert sniff_format(tmp_path / "text.h5") is None
    assert sniff_format(tmp_path / "missing") is None
