"""The comparator, tolerances, overrides, name matching and reports on crafted arrays (fast:
no model, no TensorFlow)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import edgetl.compare as comparator
import edgetl.localize as localization
from edgetl import tolerances
from edgetl.compare import compare
from edgetl.errors import UserError
from edgetl.manifest import ArtifactRecord
from edgetl.results import Localization
from edgetl.tolerances import (
    FLOAT32_CPU,
    FLOAT32_GPU,
    TFLITE_FLOAT16,
    TFLITE_INT8,
    WEBGL_FLOAT16,
    WEBGL_FLOAT32,
    Tolerance,
    default_tolerance,
)


def probs(rows) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


REF = probs([[0.75, 0.125, 0.125], [0.25, 0.5, 0.25], [0.5, 0.25, 0.25]])


def test_identical_outputs_pass_with_zero_error():
    r = compare(REF, REF.copy(), FLOAT32_CPU)
    assert r.passed and r.reasons == []
    s = r.stats
    assert s.max_abs == s.mean_abs == s.p99_abs == 0.0
    assert s.cosine == pytest.approx(1.0)
    assert s.top1_agreement == s.top5_agreement == 1.0
    assert (s.nan, s.inf, s.count) == (0, 0, 3)


def test_tolerance_edge_is_inclusive_and_one_ulp_more_fails():
    # Powers of two: the differences are exact in float32 and float64.
    tol = Tolerance(max_abs=2.0**-10)
    at_edge = REF.copy()
    at_edge[1, 2] += 2.0**-10
    assert compare(REF, at_edge, tol).passed
    over = REF.copy()
    over[1, 2] += 2.0**-9
    r = compare(REF, over, tol)
    assert not r.passed
    assert r.stats.worst == (1, 2)
    assert "max |error| 0.00195 > 0.000976562 (probe 1, class 2)" in r.reasons[0]


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nan_or_inf_in_candidate_fails_even_without_element_tolerance(bad, word):
    cand = REF.copy()
    cand[2, 0] = bad
    r = compare(REF, cand, Tolerance(max_abs=None))
    assert not r.passed
    assert any(word in reason for reason in r.reasons)
    assert (r.stats.nan, r.stats.inf) == ((1, 0) if word == "NaN" else (0, 1))
    assert r.stats.cosine == -1.0  # a probe with NaN/Inf is not similar
    assert r.stats.top1_agreement == pytest.approx(2 / 3)


def test_reference_with_nan_is_refused():
    ref = REF.copy()
    ref[0, 0] = np.nan
    r = compare(ref, REF, FLOAT32_CPU)
    assert not r.passed and "reference" in r.reasons[0]


def test_shape_mismatch_fails():
    r = compare(REF, REF[:, :2], FLOAT32_CPU)
    assert not r.passed and "shape" in r.reasons[0]
    assert r.stats is None


def test_top1_flip_within_element_tolerance():
    ref = probs([[0.50, 0.49, 0.01], [0.9, 0.05, 0.05]])
    cand = probs([[0.49, 0.50, 0.01], [0.9, 0.05, 0.05]])
    loose = Tolerance(max_abs=0.02)
    assert compare(ref, cand, loose).passed  # element error alone does not see it
    strict = Tolerance(max_abs=0.02, min_top1=1.0)
    r = compare(ref, cand, strict)
    assert not r.passed and "top-1 agrees on 1/2 decisive probes" in r.reasons[0]
    assert r.stats.top1_agreement == 0.5
    # The flipped probe is a near-tie (margin 0.01): with a 0.05 margin only the decisive
    # probe counts, and it agrees.
    r = compare(ref, cand, strict.replace(top1_margin=0.05))
    assert r.passed, r.reasons
    assert (r.stats.decisive, r.stats.decisive_top1_agreement) == (1, 1.0)


def test_no_decisive_probe_falls_back_to_all_probes():
    ref = probs([[0.50, 0.49, 0.01]])
    cand = probs([[0.49, 0.50, 0.01]])
    r = compare(ref, cand, Tolerance(max_abs=None, min_top1=0.9, top1_margin=0.5))
    assert not r.passed and "none decisive" in r.reasons[0]


def test_top5_agreement_counts_candidate_top1_in_reference_top5():
    ref = np.tile(np.linspace(0.2, 0.0, 8, dtype=np.float32), (2, 1))  # class 0 best ... 7 worst
    cand = ref.copy()
    cand[0, 4] = 0.9  # 5th best in the reference: inside the top-5
    cand[1, 6] = 0.9  # 7th: outside
    s = comparator.compute_stats(ref, cand)
    assert s.top1_agreement == 0.0
    assert s.top5_agreement == 0.5


def test_p99_and_cosine_limits():
    ref = np.full((10, 10), 0.1, dtype=np.float32)
    cand = ref.copy()
    cand[0, 0] += 0.05  # one outlier: above max_abs, below p99 (1 of 100 elements)
    r = compare(ref, cand, Tolerance(max_abs=None, p99_abs=1e-3))
    assert r.passed, r.reasons
    cand[:, :5] += 0.05
    r = compare(ref, cand, Tolerance(max_abs=None, p99_abs=1e-3, min_cosine=0.999))
    assert not r.passed
    assert any("p99" in x for x in r.reasons) and any("cosine" in x for x in r.reasons)


@pytest.mark.parametrize(
    "fmt, precision, runtime, kw, expected",
    [
        ("onnx", "float32", "onnxruntime-cpu", {}, FLOAT32_CPU),
        ("onnx", "float32", "onnxruntime-cuda", {"gpu": True}, FLOAT32_GPU),
        ("tflite", "float32", "litert", {}, FLOAT32_CPU),
        ("tflite", "float16", "litert", {}, TFLITE_FLOAT16),
        ("tflite", "int8", "litert", {}, TFLITE_INT8),
        ("tfjs_layers", "float32", "tfjs-browser-wasm", {}, FLOAT32_CPU),
        (
            "tfjs_layers",
            "float32",
            "tfjs-browser-webgl",
            {"info": {"backend": "webgl"}},
            WEBGL_FLOAT16,
        ),
        (
            "tfjs_layers",
            "float32",
            "tfjs-browser-webgl",
            {"info": {"backend": "webgl", "webgl_precision": "float32"}},
            WEBGL_FLOAT32,
        ),
    ],
)
def test_default_tolerances(fmt, precision, runtime, kw, expected):
    """Without recorded noise floors (bundles of older edgetl) the fixed limits apply."""
    record = ArtifactRecord(id=fmt, format=fmt, precision=precision, path="x")
    assert default_tolerance(record, **kw) is expected


def test_float_limits_scale_with_the_bundles_noise_floor():
    record = ArtifactRecord(id="onnx", format="onnx", precision="float32", path="model.onnx")
    f16 = ArtifactRecord(id="t16", format="tflite", precision="float16", path="m.tflite")
    quiet = {"float32": 1e-9, "float16": 1e-6}
    loud = {"float32": 2e-5, "float16": 1e-2}
    assert default_tolerance(record, noise=quiet).max_abs == tolerances.FLOAT32_MIN_ABS
    limit = default_tolerance(record, noise=loud).max_abs
    assert limit == pytest.approx(tolerances.FLOAT32_NOISE_MULTIPLE * 2e-5)
    assert "noise floor" in default_tolerance(record, noise=loud).basis
    assert default_tolerance(record, noise=loud, gpu=True).max_abs > limit
    assert default_tolerance(f16, noise=quiet).max_abs == tolerances.FLOAT16_MIN_ABS
    assert default_tolerance(f16, noise=loud).max_abs == pytest.approx(
        tolerances.FLOAT16_NOISE_MULTIPLE * 1e-2
    )
    # a floor that could not be measured (float64 kernels missing): the fixed limit
    assert default_tolerance(record, noise={"float32": None}) is FLOAT32_CPU


def test_default_tolerances_are_documented():
    for tol in (FLOAT32_CPU, FLOAT32_GPU, TFLITE_FLOAT16, WEBGL_FLOAT32, WEBGL_FLOAT16):
        assert tol.basis and tol.max_abs is not None
    for tol in (tolerances.TFLITE_DYNAMIC, TFLITE_INT8):  # judged by top-1, not element error
        assert tol.max_abs is None and tol.min_top1 and tol.top1_margin > 0
    assert FLOAT32_CPU.max_abs < FLOAT32_GPU.max_abs
    assert WEBGL_FLOAT32.max_abs < WEBGL_FLOAT16.max_abs


def test_overrides_apply_by_selector():
    o = [
        tolerances.parse_override("max_abs=1e-4"),
        tolerances.parse_override("tflite_float16:max_abs=0.05"),
        tolerances.parse_override("onnx@onnxruntime-cpu:min_top1=1"),
        tolerances.parse_override("litert:p99_abs=none"),
    ]
    t = tolerances.apply_overrides(FLOAT32_CPU, o, "onnx", "onnxruntime-cpu")
    assert (t.max_abs, t.min_top1) == (1e-4, 1.0)
    assert t.name == "FLOAT32_CPU+override"
    t = tolerances.apply_overrides(TFLITE_FLOAT16, o, "tflite_float16", "litert")
    assert t.max_abs == 0.05 and t.p99_abs is None and t.min_top1 == 0.9
    assert tolerances.apply_overrides(FLOAT32_CPU, [], "onnx", "x") is FLOAT32_CPU


@pytest.mark.parametrize(
    "text", ["max_abs", "speed=1", "max_abs=abc", "max_abs=-1", "top1_margin=none"]
)
def test_bad_override_is_a_user_error(text):
    with pytest.raises(UserError):
        tolerances.parse_override(text)


def test_accuracy_drop_is_judged_against_keras():
    r = compare(REF, REF, TFLITE_INT8)
    comparator.judge_accuracy(r, 0.93, 0.94)
    assert r.passed  # 1 point <= 2 (the accuracy bench's int8 lost 1.0 at worst)
    comparator.judge_accuracy(r, 0.95, 0.972)
    assert not r.passed and "drop 2.2%" in r.reasons[0]  # min/max calibration, bench seed 1
    r = compare(REF, REF, TFLITE_INT8)
    comparator.judge_accuracy(r, 0.90, 0.934)
    assert not r.passed and "drop 3.4%" in r.reasons[0]  # the 3.3-point loss fails


def test_histogram_counts_every_element():
    cand = REF.copy()
    cand[0, 0] += 1e-3
    h = comparator.error_histogram(REF, cand)
    assert sum(h["counts"]) + h["zeros"] + h["nonfinite"] == REF.size
    assert h["zeros"] == REF.size - 1


ORDER = {
    n: i
    for i, n in enumerate(
        [
            "scale_to_unit",
            "Conv1",
            "bn_Conv1",
            "Conv1_relu",
            "Conv_1",
            "Conv_1_bn",
            "out_relu",
            "mobilenet_v2",
            "probabilities",
        ]
    )
}


@pytest.mark.parametrize(
    "name, layer",
    [
        ("edgetl_classifier_1/scale_to_unit_1/mul:0", "scale_to_unit"),
        ("edgetl_classifier_1/mobilenet_v2_1/Conv1_relu_1/Relu6", "Conv1_relu"),
        # a TFLite fused op: its output is the latest layer's
        (
            "m_1/mobilenet_v2_1/Conv1_relu_1/Relu6;m_1/mobilenet_v2_1/bn_Conv1_1/batchnorm/add_1;"
            "m_1/mobilenet_v2_1/Conv1_1/convolution",
            "Conv1_relu",
        ),
        ("m_1/mobilenet_v2_1/Conv_1_1/convolution/merged_input:0", "Conv_1"),
        ("m_1/mobilenet_v2_1/Cast", "mobilenet_v2"),
        ("Conv__339", None),
        ("arith.constant12", None),
    ],
)
def test_layer_of_name(name, layer):
    assert localization.layer_of_name(name, ORDER) == layer


def test_first_divergence_names_first_bad_layer_and_handles_nchw():
    rng = np.random.default_rng(0)
    keras_out = {
        "a": rng.normal(size=(2, 4, 4, 4)).astype(np.float32),  # H == W == C: layout ambiguous
        "b": rng.normal(size=(2, 5, 5, 3)).astype(np.float32),
        "c": rng.normal(size=(2, 3)).astype(np.float32),
    }
    cand = {
        "a": keras_out["a"].transpose(0, 3, 1, 2).copy(),  # NCHW, as ONNX keeps it
        "b": keras_out["b"].transpose(0, 3, 1, 2) + 1e-7,
        "c": keras_out["c"] + 1.0,
    }
    loc = localization.first_divergence(keras_out, cand, 1e-3, "test")
    assert loc.layer == "c" and loc.layers_compared == 3
    cand["c"] = keras_out["c"]
    loc = localization.first_divergence(keras_out, cand, 1e-3, "test")
    assert loc.layer is None and "no single layer departs" in loc.reason
    loc = localization.first_divergence(keras_out, {"zz": cand["c"]}, 1e-3, "test")
    assert not loc.localized and "matched" in loc.describe()


def _crafted_result(tmp_path: Path):
    from edgetl.results import RuntimeStatus, VerifyResult

    good = compare(REF, REF, FLOAT32_CPU, artifact="onnx", runtime="onnxruntime-cpu")
    bad_out = REF.copy()
    bad_out[0] = [0.125, 0.75, 0.125]
    bad = compare(REF, bad_out, FLOAT32_CPU, artifact="tflite_float32", runtime="litert")
    bad.localization = Localization("block_3_expand_relu", "crafted", 12)
    runtimes = [
        RuntimeStatus("onnxruntime-cpu", True, artifacts=["onnx"]),
        RuntimeStatus("litert", True, artifacts=["tflite_float32"]),
        RuntimeStatus("onnxruntime-cuda", False, "no CUDA here", gpu=True, required=True),
    ]
    coverage = {"informative": True, "output_spread": 0.3, "problems": []}
    return VerifyResult(
        tmp_path, "crafted", [good, bad], runtimes, probes=3, probe_coverage=coverage
    )


DEAD = {
    "informative": False,
    "output_spread": 2e-8,
    "features": 1280,
    "features_active": 1232,
    "features_share": 0.9625,
    "problems": ["the model's outputs barely depend on its input"],
}


@pytest.mark.parametrize("strict", [False, True])
def test_uninformative_probes_warn_and_fail_when_strict(tmp_path, strict):
    """Probes that cannot show a broken artifact are said in every report; --strict-probes
    turns that into a failure of an otherwise passing run."""
    from edgetl import report
    from edgetl.results import RuntimeStatus, VerifyResult

    good = compare(REF, REF, FLOAT32_CPU, artifact="onnx", runtime="onnxruntime-cpu")
    st = [RuntimeStatus("onnxruntime-cpu", True, artifacts=["onnx"])]
    result = VerifyResult(
        tmp_path, "dead", [good], st, probes=3, probe_coverage=DEAD, strict_probes=strict
    )
    assert result.ok is not strict
    assert "probes cannot prove parity" in result.summary()
    table = report.format_table(result)
    assert "WARNING" in table and "1232/1280 embedding features" in table
    report.write_json(result, tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["probe_coverage"]["informative"] is False and d["probe_warning"]
    report.write_junit(result, tmp_path / "r.xml")
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert suite.get("failures") == ("1" if strict else "0")
    assert "outputs barely depend" in (tmp_path / "r.xml").read_text()
    report.write_html(result, tmp_path / "r.html")
    assert "probes cannot prove parity" in (tmp_path / "r.html").read_text()
    # a bundle made before coverage was recorded is told to re-export
    old = VerifyResult(tmp_path, "old", [good], st, probes=3, probe_coverage=None)
    assert "re-export" in old.summary() and old.ok


def test_reports_from_a_crafted_result(tmp_path):
    from edgetl import report

    result = _crafted_result(tmp_path)
    assert not result.ok
    table = report.format_table(result)
    assert "tflite_float32  litert" in table and "FAIL" in table and "PASS" in table
    assert "block_3_expand_relu" in table and "onnxruntime-cuda [REQUIRED]: no CUDA here" in table
    report.write_json(result, tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["ok"] is False and len(d["pairs"]) == 2
    assert d["pairs"][1]["localization"]["layer"] == "block_3_expand_relu"
    report.write_junit(result, tmp_path / "r.xml")
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "2", "0")
    report.write_html(result, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert page.count("<svg") == 2 and "FAIL" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "<script" not in page and "<link" not in page and "https://" not in page


def test_raise_for_status_carries_the_table(tmp_path):
    from edgetl.errors import ParityError

    with pytest.raises(ParityError, match="tflite_float32@litert") as info:
        _crafted_result(tmp_path).raise_for_status()
    assert isinstance(info.value, AssertionError)
    assert "max_abs" in str(info.value)


def test_plugin_and_verify_import_cheaply():
    code = (
        "import sys, edgetl.pytest_plugin, edgetl.verifier, edgetl.report, edgetl.compare, edgetl.tolerances, edgetl.localize, edgetl.probes; "
        "heavy = [m for m in ('tensorflow', 'keras', 'onnxruntime', 'onnx', 'ai_edge_litert', "
        "'playwright') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- saturation (log p)

# A confident model's outputs: one-hot to 1e-12 (what a plain CNN fed raw 0..255 pixels gives).
SATURATED = probs([[1 - 2e-12, 1e-12, 1e-12], [3e-13, 1 - 1e-12, 7e-13], [1e-12, 2e-12, 1.0]])


def test_log_space_sees_a_change_that_saturated_probabilities_hide():
    """The runner-up probabilities x1.5 (a conv kernel x1.5 moves them like that) change the
    outputs by 1e-12: under any element limit, but log p moves by log 1.5."""
    cand = SATURATED.copy()
    cand[:, :] = np.where(SATURATED < 0.5, SATURATED * 1.5, SATURATED)
    tol = Tolerance(max_abs=1e-5, max_log=1e-3)
    r = compare(SATURATED, cand, tol)
    assert r.stats.max_abs < 1e-11 and r.stats.max_log == pytest.approx(np.log(1.5), rel=1e-4)
    assert not r.passed and len(r.reasons) == 1
    assert "log p" in r.reasons[0] and "floored at 1e-30" in r.reasons[0]
    assert compare(SATURATED, cand, tol.replace(max_log=None)).passed  # the blind old verdict


def test_log_floor_keeps_underflow_out():
    """Values under the floor (denormals, zeros from a kernel that flushes them) are equal in
    log space; clipping never enlarges a difference."""
    ref = probs([[1.0, 1e-35, 0.0], [0.5, 0.25, 0.25]])
    cand = probs([[1.0, 0.0, 1e-36], [0.5, 0.25, 0.25]])
    r = compare(ref, cand, Tolerance(max_abs=1e-5, max_log=1e-6))
    assert r.passed and r.stats.max_log == 0.0
    assert comparator.max_log_error(ref, cand, 1e-30) == 0.0
    assert comparator.max_log_error(ref, cand, 1e-40) > 1.0  # a lower floor would see noise


def test_log_limits_scale_with_the_bundles_log_floors():
    f32 = ArtifactRecord(id="onnx", format="onnx", precision="float32", path="model.onnx")
    f16 = ArtifactRecord(id="t16", format="tflite", precision="float16", path="m.tflite")
    noise = {"float32": 1e-7, "float32_log": 2e-3, "float16": 1e-2, "float16_log": 0.1}
    t = default_tolerance(f32, noise=noise)
    assert t.max_log == pytest.approx(tolerances.FLOAT32_LOG_MULTIPLE * 2e-3)
    assert t.log_floor == tolerances.LOG_FLOOR and "log<=" in t.describe()
    quiet = default_tolerance(f32, noise={**noise, "float32_log": 1e-9})
    assert quiet.max_log == tolerances.FLOAT32_LOG_MIN
    assert default_tolerance(f32, noise=noise, gpu=True).max_log > t.max_log
    assert default_tolerance(f16, noise=noise).max_log == pytest.approx(
        tolerances.FLOAT16_LOG_MULTIPLE * 0.1
    )
    # quantized: no log-space limit (top-1 and accuracy rules); bundles without log floors
    # (made before them) and WebGL: none either
    for precision in ("dynamic", "int8", "uint8"):
        rec = ArtifactRecord(id=precision, format="tflite", precision=precision, path="m")
        assert default_tolerance(rec, noise=noise).max_log is None
    assert default_tolerance(f32, noise={"float32": 1e-7}).max_log is None
    webgl = default_tolerance(f32, noise=noise, info={"backend": "webgl"})
    assert webgl.max_log is None
    o = [
        tolerances.parse_override("onnx:max_log=0.5"),
        tolerances.parse_override("log_floor=1e-20"),
    ]
    t2 = tolerances.apply_overrides(t, o, "onnx", "onnxruntime-cpu")
    assert (t2.max_log, t2.log_floor) == (0.5, 1e-20)
    with pytest.raises(UserError, match="log_floor needs a number"):
        tolerances.parse_override("log_floor=none")


def test_saturation_of_probes():
    from edgetl.probes import saturation, with_saturation

    y = probs([[1 - 1e-12, 1e-12, 0.0], [0.7, 0.2, 0.1], [1.0, 0.0, 0.0], [0.99999, 1e-5, 0.0]])
    s = saturation(y)
    assert s["saturated_probes"] == [0, 2, 3] and s["one_hot_probes"] == [2]
    cov = with_saturation({"informative": True, "problems": []}, y)
    assert cov["informative"] and cov["saturated"] == 3
    dead = with_saturation({"informative": True, "problems": []}, probs([[1.0, 0.0]] * 3))
    assert not dead["informative"] and "one-hot" in dead["problems"][0]


@pytest.mark.parametrize("strict", [False, True])
def test_saturated_probes_are_flagged_and_fail_when_strict(tmp_path, strict):
    """The coverage report says how many probes are saturated (judged in log p only);
    --strict-probes fails on them."""
    from edgetl import report
    from edgetl.probes import with_saturation
    from edgetl.results import RuntimeStatus, VerifyResult

    good = compare(SATURATED, SATURATED, FLOAT32_CPU, artifact="onnx", runtime="onnxruntime-cpu")
    st = [RuntimeStatus("onnxruntime-cpu", True, artifacts=["onnx"])]
    cov = with_saturation({"informative": True, "problems": [], "output_spread": 0.5}, SATURATED)
    result = VerifyResult(
        tmp_path, "confident", [good], st, probes=3, probe_coverage=cov, strict_probes=strict
    )
    assert result.ok is not strict
    assert result.probe_warning is None
    assert "3 of 3 probes saturated" in result.summary()
    assert ("FAILED (--strict-probes)" in result.summary()) is strict
    line = report.probe_line(result)
    assert "3/3 saturated (judged in log p)" in line
    assert ("informative" in line) is not strict or "FAILED" in line
    report.write_junit(result, tmp_path / "r.xml")
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert suite.get("failures") == ("1" if strict else "0")
    report.write_json(result, tmp_path / "r.json")
    assert "saturated" in json.loads((tmp_path / "r.json").read_text())["saturation_note"]
