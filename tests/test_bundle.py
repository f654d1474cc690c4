"""The bundle: manifest, golden probes, metadata inside files, atomic writing, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import RANDOM_WEIGHTS_INT8, runtime_for, small_backbones

from edgetl.cli import main
from edgetl.contract import InputContract
from edgetl.errors import UserError
from edgetl.manifest import BundleError, Manifest, check_integrity, read_probes
from edgetl.verifier import verify

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tiny_run):
    from edgetl.modelio import load_model_source

    return load_model_source(tiny_run)


def test_manifest_is_complete_and_trustworthy(tiny_bundle):
    m = Manifest.load(tiny_bundle)
    check_integrity(tiny_bundle, m)
    assert m.labels == ["checks", "dots", "stripes"]
    assert json.loads((tiny_bundle / "labels.json").read_text()) == m.labels
    c = m.input
    assert (c.height, c.width, c.layout, c.channel_order, c.resize_method) == (
        96,
        96,
        "NHWC",
        "RGB",
        "bilinear",
    )
    ids = {a.id for a in m.artifacts}
    assert {
        "tfjs_layers",
        "onnx",
        "tflite_float32",
        "tflite_float16",
        "tflite_dynamic",
        "tflite_int8",
    } <= ids
    for a in m.artifacts:
        assert a.size > 0 and len(a.sha256) == 64
        assert (tiny_bundle / a.path).is_file()
    assert len(m.source_model["sha256"]) == 64 and (tiny_bundle / m.source_model["file"]).is_file()
    for pkg in ("tensorflow", "keras", "tensorflowjs", "tf2onnx", "onnxruntime"):
        assert m.tools[pkg]
    int8 = m.artifact("tflite_int8")
    assert int8.options["calibration_images"] > 0
    assert int8.size < 0.35 * m.artifact("tflite_float32").size


def test_golden_probes_are_raw_float32_with_real_and_synthetic_inputs(tiny_bundle):
    m = Manifest.load(tiny_bundle)
    p = read_probes(tiny_bundle, m)
    raw = np.frombuffer((tiny_bundle / "probes" / "inputs.bin").read_bytes(), dtype="<f4")
    assert raw.size == np.prod(m.probes["input_shape"])
    assert any(n.startswith("image:") for n in p.names)
    assert any(n.startswith("synthetic:") for n in p.names)
    assert p.inputs.min() >= 0 and p.inputs.max() <= 255
    assert p.expected.shape == (len(p.names), 3)
    np.testing.assert_allclose(p.expected.sum(1), 1, atol=1e-5)
    real = [i for i, n in enumerate(p.names) if n.startswith("image:")]
    assert all(p.labels[i] is not None for i in real)


def test_labels_and_contract_travel_inside_onnx_and_tflite(tiny_bundle):
    import onnx
    from edgetl.converters.tflite import read_metadata

    props = {p.key: p.value for p in onnx.load(str(tiny_bundle / "model.onnx")).metadata_props}
    assert json.loads(props["labels"]) == ["checks", "dots", "stripes"]
    assert json.loads(props["input_contract"])["height"] == 96
    meta = read_metadata(tiny_bundle / "model_int8.tflite")
    assert meta["labels"] == ["checks", "dots", "stripes"] and meta["input"]["width"] == 96


def test_tampered_file_is_refused(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / "model_float16.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model_float16.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model_float16\.tflite"):
        check_integrity(copy, Manifest.load(copy))


def test_failed_converter_leaves_nothing_behind(tiny_model, tmp_path):
    from edgetl.bundle import ExportError, export_bundle

    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match="onnx export failed"):
        export_bundle(
            tiny_model.model,
            out,
            labels=tiny_model.labels,
            contract=tiny_model.contract,
            formats=["tflite", "onnx"],
            opset=19,
            log=lambda *_: None,
        )
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_kept_unless_forced(tiny_model, tmp_path):
    from edgetl.bundle import export_bundle

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    kw = dict(
        labels=tiny_model.labels,
        contract=tiny_model.contract,
        formats=["onnx"],
        log=lambda *_: None,
    )
    with pytest.raises(UserError, match="--force"):
        export_bundle(tiny_model.model, out, **kw)
    assert (out / "keep.txt").read_text() == "mine"
    export_bundle(tiny_model.model, out, overwrite=True, nchw=True, **kw)
    assert not (out / "keep.txt").exists()
    assert Manifest.load(out).artifact("onnx").layout == "NCHW"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_int8_needs_calibration(tiny_model, tmp_path):
    from edgetl.bundle import export_bundle

    with pytest.raises(UserError, match="calibration"):
        export_bundle(
            tiny_model.model,
            tmp_path / "b",
            labels=tiny_model.labels,
            contract=tiny_model.contract,
            formats=["tflite"],
            quantizations=["int8"],
        )


def test_int8_with_uint8_io_runs_in_litert(tiny_model, tmp_path, sample_data):
    from edgetl.bundle import export_bundle
    from edgetl.data import sample_images
    from edgetl.runtimes.base import RUNTIMES, Artifact, load_runtimes

    images, labels, _names = sample_images(
        sample_data, tiny_model.contract, tiny_model.labels, limit=16
    )
    m = export_bundle(
        tiny_model.model,
        tmp_path / "b",
        labels=tiny_model.labels,
        contract=tiny_model.contract,
        formats=["tflite"],
        quantizations=["int8"],
        calibration_images=images,
        probe_images=images,
        probe_labels=labels,
        int8_io="uint8",
        log=lambda *_: None,
    )
    rec = m.artifact("tflite_int8")
    assert (rec.input_dtype, rec.output_dtype) == ("uint8", "uint8")
    load_runtimes()
    probes = read_probes(tmp_path / "b", m)
    out = RUNTIMES.get("litert").run(Artifact(rec, tmp_path / "b"), probes.inputs)["probabilities"]
    assert out.dtype == np.float32 and out.shape == probes.expected.shape
    # int8 is judged by top-1 agreement (the parity engine's int8 tolerance), not element error
    result = verify(tmp_path / "b", runtimes=["litert"], tolerances=RANDOM_WEIGHTS_INT8)
    assert result.ok, result.table()


def test_every_registered_format_is_exported_and_has_a_cpu_runtime(tiny_bundle):
    """The default export writes every FORMATS entry (artifact ids start with the format's
    name), and each artifact is run by a registered CPU runtime, so verify's CPU tests cover
    it. Cheap: reads the session bundle."""
    from edgetl.converters import FORMATS

    from edgetl.runtimes.base import load_runtimes

    m = Manifest.load(tiny_bundle)
    for fmt in FORMATS.names():
        assert any(a.id.startswith(fmt) for a in m.artifacts), (fmt, [a.id for a in m.artifacts])
    runtimes = load_runtimes()
    for a in m.artifacts:
        assert any(a.format in rt.formats for rt in runtimes.values() if not rt.gpu), a.id


# TF.js is left out here: tests/test_tfjs.py runs every backbone in TF.js (Node), so this test,
# the costly one per backbone, stays at the formats that need a TensorFlow conversion each.
PER_BACKBONE_FORMATS = ("onnx", "tflite")


@pytest.mark.parametrize("name", list(small_backbones()))
def test_each_backbone_exports_to_onnx_and_every_tflite_variant(
    name, tmp_path, sample_data, local_weights
):
    """Every backbone, every ONNX/TFLite variant, each run in its own runtime and compared with
    the golden probes by the parity engine (TF.js per backbone: tests/test_tfjs.py)."""
    from edgetl.converters import QUANTIZATIONS
    from edgetl.models.base import build_backbone

    from edgetl.bundle import export_bundle
    from edgetl.classifier import build_classifier
    from edgetl.data import sample_images

    alpha, size = small_backbones()[name]
    model = build_classifier(build_backbone(name, alpha, size, local_weights(name)), 3)
    contract = InputContract(size, size)
    labels = ["checks", "dots", "stripes"]
    images, y, names = sample_images(sample_data, contract, labels, limit=24)
    m = export_bundle(
        model,
        tmp_path / "b",
        labels=labels,
        contract=contract,
        formats=PER_BACKBONE_FORMATS,
        # TFLite's variants here; ONNX's (float16, int8) in test_onnx_quantize.py
        quantizations=[f"tflite:{q}" for q in QUANTIZATIONS.names()],
        calibration_images=images,
        probe_images=images,
        probe_labels=y,
        probe_names=names,
        log=lambda *_: None,
    )
    assert {a.id for a in m.artifacts} >= {
        "onnx",
        "tflite_float32",
        "tflite_float16",
        "tflite_dynamic",
        "tflite_int8",
    }
    result = verify(tmp_path / "b", runtimes=[runtime_for(f) for f in ("onnx", "tflite")])
    ran = {(p.artifact, p.runtime) for p in result.pairs}
    assert {("onnx", "onnxruntime-cpu"), ("tflite_int8", "litert")} <= ran
    assert {a.id for a in m.artifacts} == {p.artifact for p in result.pairs}
    if name.startswith("mobilenet_v3"):
        # Post-training quantization is known to be fragile on MobileNetV3 (hard-swish,
        # squeeze-excite; tensorflow/models#8664, #11274). With these random data-fitted weights
        # and the coverage-chosen probes, dynamic-range flipped 2 of 7 decisive probes of
        # V3-Large (max error 0.37) and int8 1 of 4: verify must say so by its top-1 rule,
        # never pass it silently. Every float artifact must pass.
        quantized = [p for p in result.pairs if p.artifact in ("tflite_dynamic", "tflite_int8")]
        others = [p for p in result.pairs if p not in quantized]
        assert all(p.passed for p in others), result.table()
        for p in quantized:
            assert p.passed or all("top-1" in r for r in p.reasons), result.table()
    else:
        assert result.ok, result.table()


def test_export_cli_on_a_run_directory(tiny_run, tmp_path, capsys):
    code = main(
        [
            "export",
            str(tiny_run),
            "--out",
            str(tmp_path / "b"),
            "--formats",
            "onnx,tflite",
            "--quantize",
            "int8,onnx:int8",
            "--int8-io",
            "int8",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tflite_int8" in out
    m = Manifest.load(tmp_path / "b")
    # calibration defaulted to the training data recorded in the run directory
    assert m.artifact("tflite_int8").options["calibration_images"] == 48
    # onnx:int8 makes ONNX's QDQ variant, from the same calibration images
    assert m.artifact("onnx_int8").options["calibration_images"] == 48
    assert any(n.startswith("image:") for n in m.probes["names"])


def test_contract_range_for_a_user_model(tmp_path):
    from edgetl.data import images_in_range

    c = InputContract(8, 8, value_range=(-1.0, 1.0))
    x = np.array([0.0, 127.5, 255.0], dtype=np.float32)
    np.testing.assert_allclose(images_in_range(x, c), [-1, 0, 1])
