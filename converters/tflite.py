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
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative():
            for batch in calibration():
                yield [np.asarray(batch, dtype=np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io = {"float32": tf.float32, "uint8": tf.uint8, "int8": tf.int8}[io_dtype]
        converter.inference_input_type = io
        converter.inference_output_type = io
    return converter.convert()


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
