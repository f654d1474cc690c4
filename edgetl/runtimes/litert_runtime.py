"""Runtime "litert": every TFLite precision through ai_edge_litert's Interpreter (CPU, XNNPACK).

tf.lite.Interpreter is deprecated in favour of LiteRT; this needs no TensorFlow at all. The
interpreter is resized to chunks of RUN_BATCH images (memory stays bounded with --data: one
invoke on 1,000 images at 160 px held GBs of intermediates), and integer inputs/outputs
(int8 models exported with --int8-io uint8/int8) are quantized and dequantized with the
tensor's own scale and zero point, so callers always see float32 0..255 in, probabilities out.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from edgetl.runtimes.base import RUNTIMES, Artifact, Runtime

OUTPUT_NAME = "probabilities"
RUN_BATCH = 32


def make_interpreter(model_path: str, *, preserve_all_tensors: bool = False):
    """A LiteRT interpreter; preserve_all_tensors keeps intermediates readable (localization)."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(
        model_path=model_path,
        num_threads=os.cpu_count() or 1,
        experimental_preserve_all_tensors=preserve_all_tensors,
    )


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """float -> the tensor's dtype; integer tensors use their own (scale, zero_point)."""
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return np.asarray(x, dtype=dtype)
    scale, zero = detail["quantization"]
    if not scale:
        raise ValueError(f"integer input {detail['name']!r} has no quantization parameters")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    if not np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        return np.asarray(q, dtype=np.float32)
    scale, zero = detail["quantization"]
    return ((q.astype(np.float32) - zero) * scale).astype(np.float32)


def invoke(interp, x: np.ndarray) -> None:
    """Resize input 0 to the batch, allocate, quantize-and-set it, invoke."""
    inp = interp.get_input_details()[0]
    if list(inp["shape"]) != list(x.shape):
        interp.resize_tensor_input(inp["index"], list(x.shape), strict=False)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]  # quantization is unchanged; refreshed shape
    interp.set_tensor(inp["index"], quantize(x, inp))
    interp.invoke()


class LiteRTRuntime(Runtime):
    name = "litert"
    formats = frozenset({"tflite"})
    gpu = False

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("ai_edge_litert") is None:
            return "ai-edge-litert is not installed"
        return None

    def run(self, artifact: Artifact, inputs: np.ndarray) -> dict[str, np.ndarray]:
        interp = make_interpreter(str(artifact.path))
        x = np.asarray(inputs, dtype=np.float32)
        chunks = []
        for i in range(0, len(x), RUN_BATCH):
            invoke(interp, x[i : i + RUN_BATCH])
            outs = interp.get_output_details()
            chunks.append([dequantize(interp.get_tensor(d["index"]), d) for d in outs])
        values = (
            chunks[0]
            if len(chunks) == 1
            else [np.concatenate(p) for p in zip(*chunks, strict=True)]
        )
        if len(values) == 1:
            return {OUTPUT_NAME: values[0]}
        return {d["name"]: v for d, v in zip(outs, values, strict=True)}


RUNTIMES.register("litert", LiteRTRuntime())
