"""Quantized ONNX (`export --quantize float16,int8`) and the int8 candidate choice shared with
TFLite (converters.calibration): real files from tiny_run, run in onnxruntime (and
onnxruntime-web in Chromium), judged by verify like their TFLite siblings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import RANDOM_WEIGHTS_INT8
from edgetl.converters import (
    calibration,
    quantizations_for,
    split_quantization,
    unwritten_quantization,
)

from edgetl.registry import UnknownNameError

# ---------------------------------------------------------------- the choice (no model)


def test_held_out_images_are_every_fourth_and_never_calibrated_on():
    x = np.arange(24, dtype=np.float32)[:, None]
    fit, held = calibration.split_held_out(x)
    assert held[:, 0].tolist() == [3, 7, 11, 15, 19, 23]
    assert not set(fit[:, 0].tolist()) & set(held[:, 0].tolist())
    few = x[:12]  # 3 would be held out: too few to judge by, so all images do both jobs
    assert [len(a) for a in calibration.split_held_out(few)] == [12, 12]


REF = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.55, 0.45]], np.float32)


def _choose(outputs: dict[tuple[str, int], np.ndarray]):
    """choose() over crafted candidates: ops "a" (1.0 step), "b" (0.45), "c" (0.35); a
    candidate's outputs are looked up by (ranges, number of float ops)."""
    errors = {"a": 1.0, "b": 0.45, "c": 0.35}
    built = []

    def build(ranges, ops):
        built.append((ranges, len(ops)))
        return f"{ranges}|{len(ops)}".encode()

    def run(model):
        ranges, n = model.decode().split("|")
        return outputs[(ranges, int(n))]

    chosen = calibration.choose(lambda r: errors, build, run, REF)
    return chosen, built


def test_choice_stops_at_the_first_threshold_that_keeps_top1_and_takes_the_closer_ranges():
    good, closer = REF + 0.05 * np.sign(0.5 - REF), REF.copy()
    flipped = REF[:, ::-1].copy()
    chosen, built = _choose(
        {("typical", 1): flipped, ("min/max", 1): flipped,
         ("typical", 2): good, ("min/max", 2): closer,
         ("typical", 3): closer, ("min/max", 3): closer}
    )  # fmt: skip
    assert (chosen.ranges, len(chosen.float_ops), chosen.float_above) == ("min/max", 2, 0.4)
    assert chosen.top1 == 1.0 and chosen.error == 0.0
    assert ("typical", 3) not in built  # lower thresholds are never tried once one suffices


def test_choice_falls_back_to_the_candidate_that_keeps_most_when_none_reaches_the_target():
    one_flip = REF.copy()
    one_flip[0] = [0.1, 0.9]  # 3 of 4 decisive rows kept (the 0.55/0.45 row is not decisive)
    flipped = REF[:, ::-1].copy()
    chosen, _ = _choose(
        {("typical", 1): flipped, ("min/max", 1): flipped,
         ("typical", 2): one_flip, ("min/max", 2): flipped,
         ("typical", 3): flipped, ("min/max", 3): flipped}
    )  # fmt: skip
    assert (chosen.ranges, len(chosen.float_ops), chosen.top1) == ("typical", 2, 0.75)


def test_quantize_entries_name_a_format_or_every_format_that_writes_the_variant():
    # ONNX int8 is named only ("onnx:int8"): experimental, it fails the real model
    assert quantizations_for("onnx", ["float16", "dynamic", "int8"]) == ["float16"]
    assert quantizations_for("onnx", ["float16", "onnx:int8"]) == ["float16", "int8"]
    assert quantizations_for("tflite", ["float16", "dynamic", "int8"]) == [
        "float16",
        "dynamic",
        "int8",
    ]
    assert quantizations_for("onnx", ["tflite:int8", "onnx:float16"]) == ["float16"]
    assert split_quantization("tflite:int8") == ("tflite", "int8")
    with pytest.raises(UnknownNameError, match="dynamic applies to tflite"):
        split_quantization("onnx:dynamic")
    assert "applies to tflite" in unwritten_quantization(["dynamic"], ["onnx"])
    assert "applies to tflite" in unwritten_quantization(["int8"], ["onnx"])
    assert unwritten_quantization(["onnx:int8"], ["onnx"]) is None


# ---------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory, tiny_run, sample_data) -> Path:
    """tiny_run (data-fitted MobileNetV2 0.35/96) as ONNX float32, float16 and int8."""
    from edgetl.bundle import export_from_source

    out = tmp_path_factory.mktemp("onnxq") / "bundle"
    export_from_source(
        tiny_run,
        out,
        data_dir=sample_data,
        sample_limit=24,
        formats=["onnx"],
        quantizations=["float16", "onnx:int8"],
        model_name="tiny",
        log=lambda *_: None,
    )
    return out


def test_onnx_variants_are_recorded_smaller_with_float32_io_and_int8_as_qdq(onnx_bundle):
    import onnx

    from edgetl.manifest import Manifest

    m = Manifest.load(onnx_bundle)
    f32, f16, i8 = (m.artifact(i) for i in ("onnx", "onnx_float16", "onnx_int8"))
    assert (f16.precision, i8.precision, f16.format, i8.format) == (
        "float16", "int8", "onnx", "onnx"
    )  # fmt: skip
    assert 0.4 * f32.size < f16.size < 0.6 * f32.size
    assert i8.size < 0.75 * f32.size
    chosen = i8.options["int8"]
    assert i8.options["calibration_images"] == 24
    assert chosen["ranges"] in calibration.RANGES
    assert chosen["float_above_steps"] in calibration.FLOAT_ABOVE
    for rec in (f16, i8):
        model = onnx.load(str(onnx_bundle / rec.path))
        io = [*model.graph.input, *model.graph.output]
        assert {t.type.tensor_type.elem_type for t in io} == {onnx.TensorProto.FLOAT}
        assert {p.key for p in model.metadata_props} >= {"labels", "input_contract"}
    ops = [n.op_type for n in onnx.load(str(onnx_bundle / i8.path)).graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 20


def test_onnx_variants_pass_verify_like_their_tflite_siblings(onnx_bundle):
    from edgetl.tolerances import TFLITE_INT8
    from edgetl.verifier import verify

    # tiny_run has locally made random-ish weights, under which int8 flips a borderline probe
    # (measured: 8 of 9 decisive kept, as TFLite's int8 on the same model; conftest)
    loose = [*RANDOM_WEIGHTS_INT8, "onnx_int8:min_top1=0.75"]
    result = verify(
        onnx_bundle, runtimes=["onnxruntime-cpu"], tolerances=loose, localize_failures=False
    )
    assert result.ok, result.table()
    pairs = {p.artifact: p for p in result.pairs}
    assert pairs["onnx_int8"].tolerance.name.startswith(TFLITE_INT8.name)
    assert pairs["onnx_float16"].tolerance.name == "TFLITE_FLOAT16"
    assert pairs["onnx_float16"].stats.max_abs > pairs["onnx"].stats.max_abs  # really float16


def test_int8_with_wrong_scales_fails_verify(onnx_bundle, tmp_path):
    """Every activation scale of the QDQ model x4 (a calibration gone wrong): the int8 rule
    must catch it, not only pass honest files."""
    import onnx
    from onnx import numpy_helper

    from edgetl.corrupt import rehash
    from edgetl.verifier import verify

    copy = tmp_path / "b"
    shutil.copytree(onnx_bundle, copy)
    path = copy / "model_int8.onnx"
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            scale = inits[node.input[1]]
            scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 4, scale.name))
    onnx.save(model, str(path))
    rehash(copy, ["onnx_int8"])
    result = verify(copy, runtimes=["onnxruntime-cpu"], artifacts=["onnx_int8"])
    assert not result.ok, result.table()


@pytest.mark.browser
def test_onnx_variants_run_on_onnxruntime_web_wasm(onnx_bundle):
    from edgetl.runtimes.base import load_runtimes
    from edgetl.verifier import verify

    if load_runtimes().get("ort-web-wasm").unavailable_reason():
        pytest.skip(load_runtimes().get("ort-web-wasm").unavailable_reason())
    loose = [*RANDOM_WEIGHTS_INT8, "onnx_int8:min_top1=0.75"]
    result = verify(
        onnx_bundle, runtimes=["ort-web-wasm"], tolerances=loose, localize_failures=False
    )
    ran = {p.artifact for p in result.pairs if p.runtime == "ort-web-wasm"}
    assert ran == {"onnx", "onnx_float16", "onnx_int8"}
    assert result.ok, result.table()


@pytest.mark.browser
@pytest.mark.slow
def test_float16_onnx_on_a_webgpu_adapter_without_shader_f16_is_not_run_not_an_error(
    onnx_bundle, tmp_path
):
    """SwiftShader (CI's WebGPU adapter) has no shader-f16, so onnxruntime-web cannot build a
    float16 model's kernels there: the pair is "not run on this machine" (named, not counted
    as passing), never an ERROR that fails an honest bundle; on an adapter with shader-f16 it
    runs and is judged."""
    from edgetl.report import write_junit
    from edgetl.runtimes.base import load_runtimes
    from edgetl.verifier import verify

    rt = load_runtimes().get("ort-web-webgpu")
    if rt.unavailable_reason():
        pytest.skip(rt.unavailable_reason())
    result = verify(
        onnx_bundle,
        runtimes=["ort-web-webgpu"],
        artifacts=["onnx", "onnx_float16"],
        localize_failures=False,
    )
    status = next(r for r in result.runtimes if r.name == "ort-web-webgpu")
    if not status.available:
        pytest.skip(f"no WebGPU adapter here: {status.reason}")
    assert result.ok, result.table()
    ran = {p.artifact for p in result.pairs}
    assert "onnx" in ran
    if "onnx_float16" not in ran:
        assert "shader-f16" in status.not_run["onnx_float16"], status
        assert "onnx_float16@ort-web-webgpu: the WebGPU adapter has no shader-f16" in (
            result.table()
        )
        write_junit(result, tmp_path / "junit.xml")
        junit = (tmp_path / "junit.xml").read_text()
        assert 'skipped="1"' in junit and "shader-f16" in junit


def test_tf2onnx_transpose_tracebacks_are_dropped_and_other_warnings_kept():
    """bench parity printed tf2onnx's "Failed to apply optimize_transpose" tracebacks
    (MobileNetV3); convert_onnx and the bench install the filter, other messages pass."""
    import logging

    from edgetl.converters.onnx import quiet_tf2onnx

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log = logging.getLogger("tf2onnx.optimizer")
    handler = Keep()
    log.addHandler(handler)
    try:
        quiet_tf2onnx()
        quiet_tf2onnx()  # idempotent: one filter
        try:
            raise ValueError("boom")
        except ValueError:
            log.warning("Failed to apply %s", "optimize_transpose", exc_info=1)
            log.warning("Failed to apply %s", "fold_constants", exc_info=1)
    finally:
        log.removeHandler(handler)
    assert seen == ["Failed to apply fold_constants"]
    assert sum(type(f).__name__ == "_DropTransposeFailure" for f in log.filters) == 1


def test_bench_parity_scores_int8_faults_apart_from_float32_ones(tmp_path):
    """bench parity's summary lines left the int8 column out; a caught and a missed int8 fault
    and a float32 one are each counted where they belong (crafted verdicts, no model)."""
    import numpy as np

    from edgetl import corrupt
    from edgetl.bench import _score
    from edgetl.compare import compare
    from edgetl.results import PairResult, RuntimeStatus, VerifyResult
    from edgetl.tolerances import TFLITE_INT8, Tolerance

    ref = np.array([[0.9, 0.1], [0.1, 0.9]], np.float32)

    def pair(artifact: str, runtime: str, out: np.ndarray, tol: Tolerance) -> PairResult:
        c = compare(ref, out, tol, artifact=artifact, runtime=runtime)
        return PairResult(artifact, runtime, "golden", "pass" if c.passed else "fail",
                          c.reasons, tol, c.stats)  # fmt: skip

    keys = [("onnx", "onnxruntime-cpu"), ("tflite_int8", "litert")]
    result = VerifyResult(
        tmp_path,
        "crafted",
        [
            pair("onnx", "onnxruntime-cpu", ref + 0.1, Tolerance(max_abs=1e-3)),  # caught
            pair("tflite_int8", "litert", ref, TFLITE_INT8),  # missed
        ],
        [RuntimeStatus("onnxruntime-cpu", True), RuntimeStatus("litert", True)],
        probes=2,
    )
    fault = corrupt.BY_NAME["antialias_resize"]  # applies to every precision
    details = {"onnx": "x", "tflite_int8": "x"}
    _cells, tally, missed, errors = _score(fault, "crafted", keys, details, result)
    assert tally == {"float32": (1, 1), "int8": (0, 1)}
    assert len(missed) == 1 and "tflite_int8@litert" in missed[0] and not errors
