"""Artifacts made without edgetl, the way a team's own pipeline makes them: tf2onnx called
directly, tf.lite.TFLiteConverter, model.export + tensorflowjs' SavedModel converter (a graph
model), and tensorflowjs' Keras converter on a Keras 3 model (a Layers model.json tfjs 4.22
cannot load). Used by tests/test_anywhere.py and tests/test_action.py; also runnable:

    python tests/foreign.py MODEL.keras OUT_DIR
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def make_foreign(model_path: Path, out: Path, *, nchw: bool = False) -> dict[str, Path]:
    """Write model.onnx, model.tflite, tfjs_graph/model.json, keras3_layers/model.json under
    `out` from the Keras model at `model_path`; returns name -> path."""
    os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")
    import keras
    import tensorflow as tf
    import tf2onnx

    out.mkdir(parents=True, exist_ok=True)
    model = keras.models.load_model(model_path, compile=False)
    _, h, w, c = model.input_shape
    made: dict[str, Path] = {}

    spec = (tf.TensorSpec((None, h, w, c), tf.float32, name="pixels"),)
    proto, _ = tf2onnx.convert.from_keras(
        model, input_signature=spec, opset=15, inputs_as_nchw=["pixels"] if nchw else None
    )
    made["onnx"] = out / "model.onnx"
    made["onnx"].write_bytes(proto.SerializeToString())

    made["tflite"] = out / "model.tflite"
    made["tflite"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

    from tensorflowjs.converters import save_keras_model
    from tensorflowjs.converters.tf_saved_model_conversion_v2 import convert_tf_saved_model

    tmp = Path(tempfile.mkdtemp(prefix="foreign-savedmodel-"))
    try:
        model.export(str(tmp / "sm"), format="tf_saved_model", verbose=False)
        convert_tf_saved_model(str(tmp / "sm"), str(out / "tfjs_graph"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    made["tfjs_graph"] = out / "tfjs_graph" / "model.json"

    save_keras_model(model, str(out / "keras3_layers"))
    made["keras3_layers"] = out / "keras3_layers" / "model.json"
    return made


if __name__ == "__main__":
    for name, path in make_foreign(Path(sys.argv[1]), Path(sys.argv[2])).items():
        print(name, path)
