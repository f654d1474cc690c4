"""`edgetl verify` end to end on real bundles and real runtimes (onnxruntime, LiteRT, Keras):
a clean bundle passes, a corrupted weight fails with the artifact and the layer named, a
tampered file is refused before anything runs, reports are written and parse."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import RANDOM_WEIGHTS_INT8, cpu_runtimes

from edgetl.cli import main
from edgetl.corrupt import corrupt_onnx_weight, corrupt_tfjs_weight, corrupt_tflite_weight
from edgetl.corrupt import rehash as _rehash
from edgetl.manifest import Manifest
from edgetl.tolerances import FLOAT32_MIN_ABS, FLOAT32_NOISE_MULTIPLE

# The fast in-process CPU runtimes (every --data image goes through them); TF.js runtimes have
# tests of their own below (one representative each), where Node and Chromium start-up is paid.
CPU_RUNTIMES = cpu_runtimes(data_sample=None)
CORRUPT_LAYER = "block_3_expand"  # a 1x1 conv early in MobileNetV2


def _accepts(runtime: str, record) -> bool:
    from edgetl.runtimes.base import RUNTIMES, Artifact

    return RUNTIMES.get(runtime).accepts(Artifact(record, Path(".")))


@pytest.fixture(scope="session")
def parity_bundle(tiny_bundle) -> Path:
    """The trained tiny run as TF.js Layers, ONNX and every TFLite variant (conftest's bundle;
    tests that change files work on copies)."""
    return tiny_bundle


@pytest.fixture(scope="session")
def corrupted_bundle(tmp_path_factory, parity_bundle) -> Path:
    """parity_bundle with one weight changed in model.onnx, model_float32.tflite and the TF.js
    weights, and the
    manifest's hashes updated so the integrity check passes: only parity can catch it."""
    out = tmp_path_factory.mktemp("corrupt") / "bundle"
    shutil.copytree(parity_bundle, out)
    corrupt_onnx_weight(out / "model.onnx", CORRUPT_LAYER)
    corrupt_tflite_weight(out / "model_float32.tflite", CORRUPT_LAYER)
    corrupt_tfjs_weight(out / "tfjs" / "model.json", CORRUPT_LAYER)
    _rehash(out, ["onnx", "tflite_float32", "tfjs_layers"])
    return out


@pytest.mark.slow
def test_clean_bundle_passes_on_every_cpu_runtime(parity_bundle):
    from edgetl import verify

    result = verify(parity_bundle, runtimes=CPU_RUNTIMES, tolerances=RANDOM_WEIGHTS_INT8)
    assert result.ok, result.table()
    pairs = {(p.artifact, p.runtime): p for p in result.pairs}
    manifest = Manifest.load(parity_bundle)
    expected = {("source_model", "keras")} | {
        (a.id, n) for n in CPU_RUNTIMES for a in manifest.artifacts if _accepts(n, a)
    }
    assert set(pairs) == expected
    assert set(pairs) >= {
        ("source_model", "keras"),
        ("onnx", "onnxruntime-cpu"),
        ("tflite_float32", "litert"),
        ("tflite_float16", "litert"),
        ("tflite_dynamic", "litert"),
        ("tflite_int8", "litert"),
    }
    noise = Manifest.load(parity_bundle).probes["noise"]
    for key in [("onnx", "onnxruntime-cpu"), ("tflite_float32", "litert")]:
        stats, tol = pairs[key].stats, pairs[key].tolerance
        assert stats.max_abs <= tol.max_abs and stats.top1_agreement == 1.0, key
        # the limit is this bundle's own float32 noise floor times the documented multiple
        assert tol.name == "FLOAT32_CPU" and "noise floor" in tol.basis
        assert tol.max_abs == max(FLOAT32_MIN_ABS, FLOAT32_NOISE_MULTIPLE * noise["float32"])
    assert pairs[("tflite_int8", "litert")].tolerance.name == "TFLITE_INT8+override"
    assert 0 < noise["float32"] < 1e-4 and 0 < noise["float16"] < 0.5
    assert result.probes >= 8 + 8  # 8 images chosen by feature coverage + >= 8 synthetic
    assert result.probe_coverage["informative"], result.probe_coverage


@pytest.mark.slow
def test_cli_writes_parseable_json_junit_html(parity_bundle, tmp_path, capsys):
    j, x, h = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.html"
    args = ["verify", str(parity_bundle), "--runtimes", "onnxruntime-cpu,litert"]
    args += ["--tolerance", RANDOM_WEIGHTS_INT8[0]]
    code = main([*args, "--json", str(j), "--junit", str(x), "--html", str(h)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "OK: 5/5 pairs passed" in out
    d = json.loads(j.read_text())
    assert d["ok"] is True and {p["status"] for p in d["pairs"]} == {"pass"}
    assert d["pairs"][0]["histogram"]["counts"]
    suite = ET.parse(x).getroot()
    assert suite.tag == "testsuite" and suite.get("failures") == "0"
    assert len(suite.findall("testcase")) == 5
    page = h.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 5
    assert "<script" not in page and "<link" not in page


@pytest.mark.slow
def test_corrupted_weights_fail_name_artifact_and_layer(corrupted_bundle):
    from edgetl import verify

    result = verify(corrupted_bundle, runtimes=CPU_RUNTIMES, tolerances=RANDOM_WEIGHTS_INT8)
    assert not result.ok
    failed = {(p.artifact, p.runtime): p for p in result.failed}
    assert set(failed) == {("onnx", "onnxruntime-cpu"), ("tflite_float32", "litert")}
    for p in failed.values():
        assert p.localization is not None and p.localization.localized, p.localization
        # ONNX fuses the conv into its BatchNormalization, TFLite into BN + ReLU6.
        assert p.localization.layer.startswith(CORRUPT_LAYER), p.localization.describe()
    # the untouched artifacts of the same bundle still pass
    assert {p.artifact for p in result.pairs if p.passed} >= {"tflite_float16", "source_model"}


@pytest.mark.slow
@pytest.mark.node
def test_corrupted_tfjs_weights_localized_by_node_layer_outputs(parity_bundle, corrupted_bundle):
    from edgetl import verify

    clean = verify(parity_bundle, runtimes=["tfjs-node-cpu"], require=["tfjs-node-cpu"])
    assert clean.ok, clean.table()
    result = verify(corrupted_bundle, runtimes=["tfjs-node-cpu"], artifacts=["tfjs_layers"])
    (pair,) = result.pairs
    assert not pair.passed
    loc = pair.localization
    assert loc is not None and loc.localized, loc
    assert loc.layer == CORRUPT_LAYER, loc.describe()  # TF.js keeps conv and BN apart
    assert "tfjs-node-cpu layer outputs" in loc.reason


@pytest.mark.slow
@pytest.mark.browser
def test_browser_failure_localized_through_node(corrupted_bundle):
    """Chromium gives no intermediates: the same artifact's layers come from TF.js in Node."""
    from edgetl import verify

    result = verify(corrupted_bundle, runtimes=["tfjs-browser-wasm"], artifacts=["tfjs_layers"])
    (pair,) = result.pairs
    assert not pair.passed and pair.info.get("backend") == "wasm"
    assert pair.localization.layer == CORRUPT_LAYER, pair.localization.describe()


@pytest.mark.slow
def test_corrupted_bundle_cli_exit_code_and_message(corrupted_bundle, capsys):
    code = main(["verify", str(corrupted_bundle), "--runtimes", "onnxruntime-cpu", "--no-localize"])
    out = capsys.readouterr().out
    assert code == 1
    assert "onnx@onnxruntime-cpu" in out and "FAIL" in out


@pytest.mark.slow
def test_assert_parity_helper(parity_bundle, corrupted_bundle, edgetl_parity):
    from edgetl.errors import ParityError
    from edgetl.pytest_plugin import assert_parity

    assert edgetl_parity is assert_parity
    result = assert_parity(parity_bundle, runtimes=["onnxruntime-cpu"])
    assert result.ok
    with pytest.raises(ParityError, match=r"onnx@onnxruntime-cpu"):
        assert_parity(corrupted_bundle, runtimes="onnxruntime-cpu")


@pytest.mark.slow
def test_tampered_file_is_refused_before_running(parity_bundle, tmp_path, capsys):
    from edgetl import verify
    from edgetl.manifest import BundleError

    bundle = tmp_path / "bundle"
    shutil.copytree(parity_bundle, bundle)
    data = bytearray((bundle / "model_int8.tflite").read_bytes())
    data[-100] ^= 0xFF
    (bundle / "model_int8.tflite").write_bytes(bytes(data))
    code = main(["verify", str(bundle), "--runtimes", "litert"])
    err = capsys.readouterr().err
    assert code == 2
    assert "tflite_int8: model_int8.tflite does not match its sha256" in err
    assert "Traceback" not in err
    with pytest.raises(BundleError, match=r"model_int8\.tflite"):
        verify(bundle, runtimes=["litert"])
    # --artifacts limits the check to what is verified: the others still pass.
    assert (
        main(["verify", str(bundle), "--runtimes", "litert", "--artifacts", "tflite_float32"]) == 0
    )


@pytest.mark.slow
def test_tolerance_override_and_require(parity_bundle, capsys):
    base = ["verify", str(parity_bundle), "--runtimes", "onnxruntime-cpu", "--artifacts", "onnx"]
    assert main(base) == 0
    # ONNX differs from Keras by ~1e-6: a 1e-12 tolerance must fail it.
    assert main([*base, "--tolerance", "onnx:max_abs=1e-12"]) == 1
    assert "abs<=1e-12" in capsys.readouterr().out
    assert main([*base, "--tolerance", "max_abs=fast"]) == 2
    assert main([*base, "--runtimes", "no-such-runtime"]) == 2
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        code = main([*base, "--require", "onnxruntime-cuda"])
        out = capsys.readouterr().out
        assert code == 1
        assert "onnxruntime-cuda [REQUIRED]" in out


@pytest.mark.slow
def test_data_reports_accuracy_and_fails_a_lossy_int8(parity_bundle, sample_data):
    """Measured: on this small model (data-fitted random backbone) int8 loses ~15 points of
    accuracy on the 48 labelled images; --data reports it as a failure, and every other
    artifact keeps Keras' accuracy within its limit."""
    from edgetl import verify

    result = verify(parity_bundle, runtimes=CPU_RUNTIMES, data=sample_data)
    keras_acc = result.data["keras_accuracy"]
    assert result.data["images"] == 48 and 0.0 < keras_acc <= 1.0
    by_artifact = {p.artifact: p for p in result.pairs}
    for p in result.pairs:
        if p.artifact == "source_model":
            continue
        assert p.reference_accuracy == keras_acc and p.accuracy is not None
    for a in ("onnx", "tflite_float32"):
        assert by_artifact[a].passed and by_artifact[a].accuracy == keras_acc
    assert by_artifact["tflite_float16"].passed  # may differ on a borderline image
    int8 = by_artifact["tflite_int8"]
    assert not int8.passed and not result.ok
    assert [r for r in int8.reasons if r.startswith("accuracy")], int8.reasons
    assert "(keras " in result.table()
    # A looser accuracy limit is an explicit, per-artifact decision.
    loose = verify(
        parity_bundle,
        runtimes=["litert", "keras"],  # Keras gives the reference accuracy
        artifacts=["tflite_int8"],
        data=sample_data,
        tolerances=["tflite_int8:max_accuracy_drop=0.2", *RANDOM_WEIGHTS_INT8],
    )
    assert loose.ok, loose.table()
    (pair,) = [p for p in loose.pairs if p.artifact == "tflite_int8"]
    assert pair.reference_accuracy == keras_acc and pair.tolerance.max_accuracy_drop == 0.2


@pytest.fixture(scope="session")
def nchw_uint8_bundle(tmp_path_factory, tiny_run, sample_data) -> Path:
    """ONNX with NCHW input and int8 TFLite with uint8 input/output."""
    from edgetl.bundle import export_from_source

    out = tmp_path_factory.mktemp("layouts") / "bundle"
    export_from_source(
        tiny_run,
        out,
        data_dir=sample_data,
        sample_limit=24,
        formats=("onnx", "tflite"),
        quantizations=("tflite:int8",),
        nchw=True,
        int8_io="uint8",
        log=lambda *_: None,
    )
    return out


@pytest.mark.slow
def test_nchw_onnx_and_uint8_tflite_pass(nchw_uint8_bundle):
    from edgetl import verify
    from edgetl.manifest import Manifest

    manifest = Manifest.load(nchw_uint8_bundle)
    assert manifest.artifact("onnx").layout == "NCHW"
    assert manifest.artifact("tflite_int8").input_dtype == "uint8"
    result = verify(
        nchw_uint8_bundle, runtimes=["onnxruntime-cpu", "litert"], tolerances=RANDOM_WEIGHTS_INT8
    )
    assert result.ok, result.table()
    onnx_pair = next(p for p in result.pairs if p.artifact == "onnx")
    # judged by the bundle's own float32 limit, not a fixed number (1e-5 failed on an AMD EPYC)
    assert onnx_pair.passed and "noise floor" in onnx_pair.tolerance.basis


def _has_provider(name: str) -> bool:
    import onnxruntime as ort

    return name in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize(
    "runtime, provider",
    [
        ("onnxruntime-cuda", "CUDAExecutionProvider"),
        ("onnxruntime-tensorrt", "TensorrtExecutionProvider"),
    ],
)
def test_gpu_runtimes_agree_with_tf32_off(parity_bundle, runtime, provider):
    if not _has_provider(provider):
        pytest.skip(f"onnxruntime has no {provider} here (CPU build or no GPU)")
    from edgetl import verify

    result = verify(parity_bundle, runtimes=[runtime], require=[runtime], artifacts=["onnx"])
    assert result.ok, result.table()
    (pair,) = result.pairs
    assert pair.tolerance.name == "FLOAT32_GPU" and pair.stats.max_abs <= 1e-4


def test_verify_is_callable_from_the_package_after_the_cli_imported_its_module():
    import edgetl
    import edgetl.verifier

    assert edgetl.verify is edgetl.verifier.verify


@pytest.fixture(scope="session")
def dead_bundle(tmp_path_factory, sample_data) -> Path:
    """A model whose backbone is dead (random init: BatchNorm statistics 0/1 make the features
    vanish, as `train --weights none --epochs 1` does): its outputs ignore the input."""
    from edgetl.models.base import build_backbone

    from edgetl.bundle import export_bundle
    from edgetl.classifier import build_classifier
    from edgetl.contract import InputContract
    from edgetl.data import sample_images

    model = build_classifier(build_backbone("mobilenet_v2", 0.35, 96, None), 3)
    contract = InputContract(96, 96)
    labels = ["checks", "dots", "stripes"]
    images, y, names = sample_images(sample_data, contract, labels, limit=12)
    out = tmp_path_factory.mktemp("dead") / "bundle"
    export_bundle(
        model,
        out,
        labels=labels,
        contract=contract,
        formats=["onnx"],
        probe_images=images,
        probe_labels=y,
        probe_names=names,
        log=lambda *_: None,
    )
    return out


@pytest.mark.slow
def test_dead_backbone_probes_are_reported_as_unable_to_prove_parity(dead_bundle, tmp_path, capsys):
    """A conv kernel scaled by 1.1 cannot show on such probes: verify passes the pairs but says
    the probes prove nothing, and --strict-probes fails the run."""
    import onnx
    from onnx import numpy_helper

    bundle = tmp_path / "b"
    shutil.copytree(dead_bundle, bundle)
    model = onnx.load(bundle / "model.onnx")
    convs = [i for i in model.graph.initializer if len(i.dims) == 4]
    big = max(convs, key=lambda i: int(np.prod(i.dims)))
    big.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(big) * 1.1, big.name))
    onnx.save(model, bundle / "model.onnx")
    _rehash(bundle, ["onnx"])

    base = ["verify", str(bundle), "--runtimes", "onnxruntime-cpu", "--no-localize"]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "probes cannot prove parity" in out and "barely depend on its input" in out
    assert main([*base, "--strict-probes", "--json", str(tmp_path / "r.json")]) == 1
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["ok"] is False and d["probe_coverage"]["informative"] is False


def test_data_checks_every_image_in_chunks_or_a_stated_sample(
    parity_bundle, sample_data, tmp_path, monkeypatch
):
    """--data streams the whole folder (here 1,200 images, over the old 1,000-image cap) in
    chunks of DATA_CHUNK with the sessions kept open, and every image counts: the folder is
    the 48 sample images 25 times over, so each accuracy equals the one on the 48. With
    --data-limit, a stratified sample of that size, round-robin across classes."""
    from edgetl import verifier, verify

    big = tmp_path / "big"
    for cls in sorted(p for p in sample_data.iterdir() if p.is_dir()):
        (big / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir()):
            for copy in range(25):
                (big / cls.name / f"{copy:02d}_{f.name}").hardlink_to(f)
    runtimes = ["onnxruntime-cpu", "keras"]
    small = verify(parity_bundle, runtimes=runtimes, artifacts=["onnx"], data=sample_data)
    monkeypatch.setattr(verifier, "DATA_CHUNK", 100)
    result = verify(parity_bundle, runtimes=runtimes, artifacts=["onnx"], data=big)
    assert result.data["images"] == 1200 and result.ok, result.table()
    assert result.data["keras_accuracy"] == small.data["keras_accuracy"]
    (onnx,) = [p for p in result.pairs if p.artifact == "onnx"]
    (onnx48,) = [p for p in small.pairs if p.artifact == "onnx"]
    assert onnx.images == 1200 and onnx.accuracy == onnx48.accuracy
    assert onnx.reference_accuracy == result.data["keras_accuracy"]

    sampled = verify(parity_bundle, runtimes=runtimes, artifacts=["onnx"], data=big, data_limit=30)
    assert sampled.data["images"] == 30
    (onnx30,) = [p for p in sampled.pairs if p.artifact == "onnx"]
    assert onnx30.images == 30


def test_data_limit_must_be_a_positive_count(parity_bundle, sample_data, capsys):
    with pytest.raises(SystemExit) as e:  # an argparse usage error: one line, exit 2
        main(["verify", str(parity_bundle), "--data", str(sample_data), "--data-limit", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--data-limit" in err and "Traceback" not in err
