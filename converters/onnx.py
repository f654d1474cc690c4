"""Keras -> ONNX via tf2onnx, with a dynamic batch, NHWC (default) or NCHW input, and the labels
and input contract stored in the model's metadata_props."""

from __future__ import annotations

import json
from pathlib import Path

# tf2onnx 1.17 converts opsets 13..18 (19+ rejected). 15 is its default and what onnxruntime
# (>= 1.10) and onnxruntime-web both run.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 13, 18, 15
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
FILE = "model.onnx"  # in the bundle


def export_onnx(model, out_dir: Path, *, contract, options) -> list:
    """The bundle's ONNX artifact, out_dir/model.onnx, with labels and contract in its
    metadata; returns its ArtifactRecord."""
    from edgetl.manifest import ArtifactRecord, record_files

    opset = options.opset or DEFAULT_OPSET
    meta = options.metadata(contract)
    convert_onnx(
        model,
        Path(out_dir) / FILE,
        opset=opset,
        nchw=options.nchw,
        metadata=metadata_for(meta["labels"], meta["input"]),
    )
    return [
        ArtifactRecord(
            id="onnx",
            format="onnx",
            precision="float32",
            path=FILE,
            files=record_files(Path(out_dir), [FILE]),
            layout="NCHW" if options.nchw else "NHWC",
            options={"opset": opset},
        )
    ]


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


def metadata_for(labels: list[str], contract: dict) -> dict[str, str]:
    return {
        "labels": json.dumps(labels, ensure_ascii=False),
        "input_contract": json.dumps(contract),
    }
