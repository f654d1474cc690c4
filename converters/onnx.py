"""Keras -> ONNX via tf2onnx, with a dynamic batch, NHWC (default) or NCHW input, and the labels
and input contract stored in the model's metadata_props."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from edgetl.converters.calibration import RANGES, choose, split_held_out

# tf2onnx 1.17 converts opsets 13..18 (19+ rejected). 15 is its default and what onnxruntime
# (>= 1.10) and onnxruntime-web both run.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 13, 18, 15
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
FILE = "model.onnx"  # in the bundle
MAX_CALIBRATION_IMAGES = 300  # as TFLite's int8 (converters/tflite.py)
INT8_DEBUG_IMAGES = 32  # calibration images each op's own int8 error is measured on


def export_onnx(model, out_dir: Path, *, contract, options) -> list:
    """The bundle's ONNX artifacts: out_dir/model.onnx (float32) and model_<variant>.onnx for
    each of options.quantizations that ONNX writes (float16, int8), all with labels and
    contract in their metadata; returns their ArtifactRecords."""
    from edgetl.converters import quantizations_for

    from edgetl.manifest import ArtifactRecord, record_files

    opset = options.opset or DEFAULT_OPSET
    meta = options.metadata(contract)
    out_dir = Path(out_dir)
    convert_onnx(
        model,
        out_dir / FILE,
        opset=opset,
        nchw=options.nchw,
        metadata=metadata_for(meta["labels"], meta["input"]),
    )
    layout = "NCHW" if options.nchw else "NHWC"
    records = [
        ArtifactRecord(
            id="onnx",
            format="onnx",
            precision="float32",
            path=FILE,
            files=record_files(out_dir, [FILE]),
            layout=layout,
            options={"opset": opset},
        )
    ]
    for q in quantizations_for("onnx", options.quantizations):
        name = f"model_{q}.onnx"
        extra: dict = {"opset": opset}
        if q == "float16":
            convert_float16(out_dir / FILE, out_dir / name)
        else:
            images = np.asarray(options.calibration_images[:MAX_CALIBRATION_IMAGES], np.float32)
            chosen = convert_int8(out_dir / FILE, out_dir / name, images, nchw=options.nchw)
            extra |= {"calibration_images": len(images), "int8": chosen}
        records.append(
            ArtifactRecord(
                id=f"onnx_{q}",
                format="onnx",
                precision=q,
                path=name,
                files=record_files(out_dir, [name]),
                layout=layout,
                options=extra,
            )
        )
    return records


def convert_float16(src: Path, dst: Path) -> Path:
    """The float32 ONNX model with float16 weights and activations (onnxruntime's float16
    converter, the one onnxconverter-common ships); input and output stay float32, so every
    runtime feeds it the contract's pixels as they are."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    OnnxModel(model).topological_sort()  # the input Casts are appended after their consumers
    onnx.checker.check_model(model)
    Path(dst).write_bytes(model.SerializeToString())
    return Path(dst)


def convert_int8(src: Path, dst: Path, images: np.ndarray, *, nchw: bool = False) -> dict:
    """Static int8 QDQ (onnxruntime.quantization: per-channel int8 weights, int8 activations)
    of the float32 ONNX model at `src`, calibrated on `images` (float32 NHWC, contract range)
    by TFLite int8's rule (converters.calibration): typical or min/max activation ranges, the
    ops whose own int8 error exceeds a threshold kept in float, chosen on held-out images.
    Returns what was chosen (recorded in the manifest)."""
    import tempfile

    import onnx

    from edgetl.runtimes.onnxruntime_runtime import to_layout

    if images is None or not len(images):
        raise ValueError("int8 quantization needs calibration images")
    layout = "NCHW" if nchw else "NHWC"
    fit, held = (to_layout(part, layout) for part in split_held_out(images))
    float_model = onnx.load(str(src))
    with tempfile.TemporaryDirectory(prefix="edgetl-onnx-int8-") as tmp:
        clean = Path(tmp) / "float.onnx"
        clean.write_bytes(_without_dead_channels(float_model).SerializeToString())
        ranges = {r: _activation_ranges(clean, fit, typical=r == "typical") for r in RANGES}

        def build(r: str, float_ops: tuple[str, ...]) -> bytes:
            return _quantize_qdq(clean, ranges[r], float_ops)

        def errors(r: str) -> dict[str, float]:
            return _own_errors(build(r, ()), fit[:INT8_DEBUG_IMAGES])

        reference = _run(float_model.SerializeToString(), held)
        chosen = choose(errors, build, lambda m: _run(m, held), reference)
    model = onnx.load_from_string(chosen.model)
    del model.metadata_props[:]
    for entry in float_model.metadata_props:
        model.metadata_props.add(key=entry.key, value=entry.value)
    model.producer_name = "edgetl"
    onnx.checker.check_model(model)
    Path(dst).write_bytes(model.SerializeToString())
    return chosen.describe()


DEAD_CHANNEL = 1e-5  # a kernel channel below this share of its tensor's largest |weight|


def _without_dead_channels(model):
    """A copy with the Conv kernels' dead output channels (every |weight| under DEAD_CHANNEL
    of the tensor's largest) set to exactly 0. Their per-channel int8 scale (5e-9 on the
    accuracy bench's real MobileNetV2) makes the int32 bias scale (input scale x weight
    scale) so small that the bias overflows int32: the QDQ model's top-1 agreed with float on
    8% of held-out images. A zero channel gets scale 1; what such a channel contributed is
    under 1e-5 of its layer's largest weight times the input."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        init = inits[node.input[1]]
        w = numpy_helper.to_array(init).copy()
        peak = np.abs(w).reshape(len(w), -1).max(axis=1)
        dead = peak < DEAD_CHANNEL * peak.max()
        if dead.any():
            w[dead] = 0
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    return model


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    """The model's probabilities on x through onnxruntime's CPU kernels (what verify runs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)])


class _Images:
    """onnxruntime.quantization's CalibrationDataReader over an array, one image at a time (so
    the typical range is the mean of each image's own min and max)."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self.name, self.x, self.i = name, x, 0

    def get_next(self) -> dict | None:
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1 : self.i]}


def _activation_ranges(src: Path, x: np.ndarray, *, typical: bool):
    """Every activation's range on x: min/max over the images, or (typical) the mean of each
    image's min and max (onnxruntime's moving-average calibration over batches of one)."""
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    with tempfile.TemporaryDirectory(prefix="edgetl-onnx-int8-") as tmp:
        calibrator = create_calibrator(
            Path(src),
            ops,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"moving_average": typical},
        )
        calibrator.collect_data(_Images(INPUT_NAME, x))
        ranges = calibrator.compute_data()
        del calibrator
    return ranges


def _quantize_qdq(src: Path, ranges, float_ops: tuple[str, ...]) -> bytes:
    """QDQ int8 (int8 activations, per-channel 7-bit weights) with the given activation ranges,
    `float_ops` (node names) left in float."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    quantizer = QDQQuantizer(
        load_model_with_shape_infer(Path(src)),
        True,  # per_channel
        # 7-bit weights: x86 kernels (VPMADDUBSW) saturate int8 x int8 pair sums, and did on
        # the parity bench's MobileNetV2 0.35/96 (held-out top-1 67% -> 92%, mean error 0.26 ->
        # 0.063 with 7 bits; onnxruntime's documented remedy). Other CPUs lose ~nothing by it.
        True,  # reduce_range
        QuantType.QInt8,
        QuantType.QInt8,
        ranges,
        [],
        list(float_ops),
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        {
            "ActivationSymmetric": False,
            "WeightSymmetric": True,
            "QDQKeepRemovableActivations": True,
        },
    )
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # what quantize_static's save does
    return quantizer.model.model.SerializeToString()


def _own_errors(qdq: bytes, x: np.ndarray) -> dict[str, float]:
    """Each quantized op (node name) -> the RMS error its output's int8 rounding and clipping
    adds, in units of that output's quantization step, on x: the op's float output in the QDQ
    model (its inputs already int8) against the same tensor quantized and dequantized. The
    ONNX counterpart of TFLite's debugger figure (converters.tflite._op_errors). A tensor whose
    only consumer is a Relu or Clip was given that activation's range by the quantizer (the
    activation is then done by the rounding), so it is compared with the activation's output."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load_from_string(qdq)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n.name for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    dequant = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    pairs = {}  # op name -> (float tensor, dequantized tensor, scale, activation bounds)
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits or n.input[0] not in producer:
            continue
        scale = float(inits[n.input[1]].ravel()[0])
        if n.output[0] in dequant and scale > 0:
            bounds = _activation_after(dequant[n.output[0]], consumers, inits)
            pairs[producer[n.input[0]]] = (n.input[0], dequant[n.output[0]], scale, bounds)
    names = sorted({t for f, d, _, _ in pairs.values() for t in (f, d)})
    existing = {o.name for o in model.graph.output}
    for t in names:
        if t not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every Q/DQ
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    squares: dict[str, float] = dict.fromkeys(pairs, 0.0)
    counts: dict[str, int] = dict.fromkeys(pairs, 0)
    for i in range(len(x)):
        values = dict(zip(names, sess.run(names, {INPUT_NAME: x[i : i + 1]}), strict=True))
        for op, (f, d, scale, (lo, hi)) in pairs.items():
            diff = (values[d].astype(np.float64) - np.clip(values[f], lo, hi)) / scale
            squares[op] += float(np.sum(diff * diff))
            counts[op] += diff.size
    return {op: float(np.sqrt(squares[op] / max(counts[op], 1))) for op in pairs}


def _activation_after(tensor: str, consumers: dict, inits: dict) -> tuple[float, float]:
    """(low, high) of the Relu / Clip that alone consumes `tensor`, else no bounds."""
    users = consumers.get(tensor, [])
    if len(users) != 1 or users[0].op_type not in ("Relu", "Clip"):
        return -np.inf, np.inf
    node = users[0]
    if node.op_type == "Relu":
        return 0.0, np.inf
    bound = [float(inits[i].ravel()[0]) if i in inits else None for i in node.input[1:3]]
    bound += [None] * (2 - len(bound))
    lo = bound[0] if bound[0] is not None else -np.inf
    hi = bound[1] if bound[1] is not None else np.inf
    return lo, hi


def convert_onnx(
    model,
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
    nchw: bool = False,
    metadata: dict[str, str] | None = None,
    output_name: str = OUTPUT_NAME,
) -> Path:
    """Write `model` as ONNX to `path`; input "image" (N,H,W,3) float32 0..255 (or N,3,H,W)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"ONNX opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}")
    import onnx
    import tensorflow as tf
    import tf2onnx

    quiet_tf2onnx()
    _, h, w, c = model.input_shape
    spec = (tf.TensorSpec((None, h, w, c), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(
        functional(model),
        input_signature=spec,
        opset=opset,
        inputs_as_nchw=[INPUT_NAME] if nchw else None,
    )
    _rename_output(proto, output_name)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "edgetl"
    onnx.checker.check_model(proto)
    path = Path(path)
    path.write_bytes(proto.SerializeToString())
    return path


def functional(model):
    """`model` itself, or a Sequential wrapped as a functional model around it: tf2onnx 1.17
    looks up a Keras 3 Sequential's tensors by name and fails on every one (KeyError
    'keras_tensor_N'); the same layers called on a new Input convert (same weights, same
    outputs). A Sequential nested inside a functional model converts as it is."""
    import keras

    if not isinstance(model, keras.Sequential):
        return model
    inp = keras.Input(batch_shape=tuple(model.inputs[0].shape), name=INPUT_NAME)
    return keras.Model(inp, model(inp), name=model.name)


def _rename_output(proto, name: str) -> None:
    """tf2onnx names the output after the Keras layer path; give it the stable contract name."""
    if len(proto.graph.output) != 1:
        raise ValueError(
            f"expected a single-output classifier, got {len(proto.graph.output)} outputs"
        )
    old = proto.graph.output[0].name
    if old == name:
        return
    for node in proto.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    proto.graph.output[0].name = name


class _DropTransposeFailure(logging.Filter):
    """tf2onnx logs "Failed to apply optimize_transpose" with a full traceback on MobileNetV3
    (field notes: harmless, the graph stays unoptimized and is verified like any other); the
    other optimizer messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Failed to apply %s" and record.args == ("optimize_transpose",))


def quiet_tf2onnx() -> None:
    """Keep tf2onnx's optimize_transpose tracebacks out of stderr (CLI, benches, library)."""
    log = logging.getLogger("tf2onnx.optimizer")
    if not any(isinstance(f, _DropTransposeFailure) for f in log.filters):
        log.addFilter(_DropTransposeFailure())


def metadata_for(labels: list[str], contract: dict) -> dict[str, str]:
    return {
        "labels": json.dumps(labels, ensure_ascii=False),
        "input_contract": json.dumps(contract),
    }
