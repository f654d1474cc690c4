"""`edgetl verify --reference`: artifacts made without edgetl (tf2onnx called directly,
tf.lite.TFLiteConverter, tensorflowjs' SavedModel converter) against their Keras model on real
runtimes; 1% of one conv changed in each file fails; a Keras 3 Layers model.json is one ERROR
line; saved probes are reused and refused for a model of another input size; formats are found
by content."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cpu_runtimes

from edgetl.cli import main
from edgetl.results import FAIL

CPU_RUNTIMES = cpu_runtimes(data_sample=None)  # keras, onnxruntime-cpu, litert
NODE = "tfjs-node-wasm"
OWN = ("onnx", "tflite", "tfjs_graph")  # the files a team's own pipeline made
EXPECTED_IDS = {"onnx": "onnx", "tflite": "tflite_float32", "tfjs_graph": "tfjs_graph"}


@pytest.fixture(scope="session")
def foreign(foreign_artifacts) -> dict[str, Path]:
    """tiny_run's model converted by the converters themselves, not by edgetl (conftest)."""
    return foreign_artifacts


@pytest.fixture(scope="session")
def own_result(foreign, tiny_run, sample_data, tmp_path_factory):
    """verify_files on the three files, probes made from the reference and saved."""
    from edgetl.verifier import verify_files

    saved = tmp_path_factory.mktemp("saved") / "probes"
    result = verify_files(
        [foreign[k] for k in OWN],
        tiny_run / "model.keras",
        runtimes=[*CPU_RUNTIMES, NODE],
        images=sample_data,
        save_probes=saved,
    )
    return result, saved


@pytest.mark.slow
@pytest.mark.node
def test_own_files_pass_on_every_runtime(own_result, foreign):
    result, saved = own_result
    assert result.ok, result.table()
    pairs = {(p.artifact, p.runtime): p for p in result.pairs}
    assert set(pairs) == {
        ("source_model", "keras"),
        ("onnx", "onnxruntime-cpu"),
        ("tflite_float32", "litert"),
        ("tfjs_graph", NODE),
    }
    for key in [("onnx", "onnxruntime-cpu"), ("tflite_float32", "litert"), ("tfjs_graph", NODE)]:
        tol = pairs[key].tolerance
        assert tol.name == "FLOAT32_CPU" and "noise floor" in tol.basis, key
        assert pairs[key].stats.top1_agreement == 1.0
    assert (saved / "manifest.json").is_file() and (saved / "probes" / "inputs.bin").is_file()
    from edgetl.manifest import Manifest

    saved_manifest = Manifest.load(saved)
    assert any(n.startswith("image:") for n in saved_manifest.probes["names"])
    assert saved_manifest.probes["noise"]["float32"] is not None
    for path in foreign.values():  # the user's files are read where they are, never written
        assert not (path.parent / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.node
def test_one_percent_change_in_each_own_file_fails(own_result, foreign, tiny_run, tmp_path):
    """largest conv's kernel x1.01 in each file (found by value: BatchNorm is folded into it);
    judged on the saved probes. ONNX and TFLite are localized to that layer by name; the graph
    model has no per-layer outputs: 'not localized'."""
    import keras

    from edgetl.anywhere import detect_artifact
    from edgetl.corrupt import edit_weight, largest_conv
    from edgetl.verifier import verify_files

    _, saved = own_result
    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    conv = largest_conv(model)
    files = []
    for key in OWN:
        src = foreign[key]
        dst_dir = tmp_path / key
        if key == "tfjs_graph":
            shutil.copytree(src.parent, dst_dir)
            dst = dst_dir / src.name
        else:
            dst_dir.mkdir()
            dst = dst_dir / src.name
            shutil.copyfile(src, dst)
        record = detect_artifact(dst)
        edit_weight(tmp_path, record, np.asarray(conv.kernel), lambda w: w * 1.01, per_channel=True)
        files.append(dst)
    result = verify_files(
        files, tiny_run / "model.keras", runtimes=[*CPU_RUNTIMES, NODE], probes=saved
    )
    assert not result.ok
    pairs = {p.artifact: p for p in result.pairs if p.artifact != "source_model"}
    assert set(pairs) == set(EXPECTED_IDS.values())
    for p in pairs.values():
        assert p.status == FAIL, (p.artifact, p.reasons)
    from edgetl.corrupt import _all_layers

    order = [layer.name for layer in _all_layers(model)]
    at = order.index(conv.name)
    for art in ("onnx", "tflite_float32"):
        loc = pairs[art].localization
        # the conv, or the BatchNorm / activation the converter fused into its op (ONNX names
        # the fused op Conv_1_bn, TFLite out_relu)
        assert loc is not None and loc.layer in order[at : at + 3], (art, loc)
    assert pairs["tfjs_graph"].localization.describe().startswith("not localized")


@pytest.mark.slow
@pytest.mark.node
def test_keras3_layers_model_json_is_one_error_line(own_result, foreign, tiny_run, capsys):
    _, saved = own_result
    rc = main(
        ["verify", "--probes", str(saved), str(foreign["keras3_layers"].parent),
         "--runtimes", NODE]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 1
    assert "tfjs_layers  " in out and "ERROR" in out
    lines = [ln for ln in out.splitlines() if "cannot load" in ln]
    assert len(lines) == 1 and "Keras 3" in lines[0] and "graph model" in lines[0]


@pytest.mark.slow
def test_formats_found_by_content_not_name(foreign, tmp_path):
    from edgetl.anywhere import artifact_records
    from edgetl.errors import UserError

    onnx = shutil.copyfile(foreign["onnx"], tmp_path / "a.tflite")  # misleading names
    tfl = shutil.copyfile(foreign["tflite"], tmp_path / "b.onnx")
    graph = shutil.copytree(foreign["tfjs_graph"].parent, tmp_path / "web")
    shutil.move(graph / "model.json", graph / "weights.bin.json")
    recs = artifact_records([onnx, tfl, graph / "weights.bin.json"])
    assert [(r.id, r.format, r.precision, r.layout) for r in recs] == [
        ("onnx", "onnx", "float32", "NHWC"),
        ("tflite_float32", "tflite", "float32", "NHWC"),
        ("tfjs_graph", "tfjs_graph", "float32", "NHWC"),
    ]
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(UserError, match="by content"):
        artifact_records([junk])


@pytest.fixture(scope="session")
def small_keras(tmp_path_factory) -> Path:
    """A 3-layer 32x32 classifier (another input size than the tiny run's 96 px)."""
    import keras

    inp = keras.Input((32, 32, 3), name="pixels")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(
        keras.layers.Rescaling(1 / 255)(inp)
    )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(3, activation="softmax", name="head")(x)
    path = tmp_path_factory.mktemp("small") / "small.keras"
    keras.Model(inp, out).save(path)
    return path


@pytest.mark.slow
def test_nchw_onnx_is_detected_and_passes(small_keras, tmp_path):
    """tf2onnx with inputs_as_nchw: the input (N, 3, H, W) is found from its shape and the
    probes are transposed for it."""
    import keras
    import tensorflow as tf
    import tf2onnx

    from edgetl.verifier import verify_files

    model = keras.models.load_model(small_keras, compile=False)
    spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="pixels"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, inputs_as_nchw=["pixels"])
    path = tmp_path / "nchw.onnx"
    path.write_bytes(proto.SerializeToString())
    result = verify_files([path], small_keras, runtimes=["keras", "onnxruntime-cpu"])
    assert result.ok, result.table()
    pair = next(p for p in result.pairs if p.artifact == "onnx")
    assert pair.stats.max_abs <= pair.tolerance.max_abs


@pytest.mark.slow
def test_probes_of_another_input_size_are_refused(own_result, small_keras, foreign, capsys):
    _, saved = own_result
    rc = main(
        ["verify", "--probes", str(saved), "--reference", str(small_keras), str(foreign["onnx"])]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "96x96x3" in err[0] and "32x32x3" in err[0], err


def test_bundle_only_flags_and_files_without_reference_are_refused(tmp_path, capsys):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"\x08\x07")
    assert main(["verify", str(f)]) == 2
    assert "--reference" in capsys.readouterr().err
    assert main(["verify", str(tmp_path), "--save-probes", str(tmp_path / "p")]) == 2
    assert "--reference" in capsys.readouterr().err


def test_verify_help_and_runtimes_list_every_registered_runtime(capsys):
    from edgetl.runtimes.base import load_runtimes

    names = load_runtimes().names()
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    help_text = capsys.readouterr().out
    assert main(["runtimes"]) == 0
    listing = capsys.readouterr().out
    for name in names:
        assert any(ln.strip().startswith(name + " ") for ln in help_text.splitlines()), name
        assert any(ln.startswith(name + " ") for ln in listing.splitlines()), name
    # every runtime that does not run here says why
    for rt_name, rt in load_runtimes().items():
        reason = rt.unavailable_reason()
        if reason is not None:
            assert f"why not: {reason}" in listing, rt_name


@pytest.mark.slow
def test_assert_parity_takes_a_reference_and_files(own_result, foreign, tiny_run):
    from edgetl.errors import ParityError
    from edgetl.pytest_plugin import assert_parity

    _, saved = own_result
    ok = assert_parity(
        reference=tiny_run / "model.keras",
        artifacts=[foreign["onnx"], foreign["tflite"]],
        runtimes=CPU_RUNTIMES,
        probes=saved,
    )
    assert {p.artifact for p in ok.pairs} == {"source_model", "onnx", "tflite_float32"}
    with pytest.raises(ParityError, match="tfjs_layers"):
        assert_parity(probes=saved, artifacts=[foreign["keras3_layers"]], runtimes=[NODE])
