"""Runtime "litert": every TFLite precision through ai_edge_litert's Interpreter (CPU, XNNPACK).

tf.lite.Interpreter is deprecated in favour of LiteRT; this needs no TensorFlow at all. The
interpreter is resized to chunks of RUN_BATCH images (memory stays bounded with --data: one
invoke on 1,000 images at 160 px held GBs of intermediates), and integer inputs/outputs
(int8 models exported with --int8-io uint8/int8) are quantized and dequantized with the
tensor's own scale and zero point, so callers always see float32 0..255 in, probabilities out.
Per-layer outputs (localization) come from an interpreter that keeps every intermediate tensor.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings

import numpy as np

from edgetl.runtimes.base import (
    RUNTIMES,
    Artifact,
    Options,
    RunContext,
    Runtime,
    Session,
    single_output,
)

RUN_BATCH = 32


def make_interpreter(
    model: str | bytes,
    *,
    preserve_all_tensors: bool = False,
    threads: int | None = None,
    xnnpack: bool = True,
):
    """A LiteRT interpreter for a .tflite path or flatbuffer bytes; preserve_all_tensors keeps
    intermediates readable (localization, int8 calibration), xnnpack=False uses the builtin
    kernels without default delegates."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    source = (
        {"model_content": bytes(model)}
        if isinstance(model, bytes | bytearray)
        else {"model_path": model}
    )
    return Interpreter(
        **source,
        num_threads=threads or os.cpu_count() or 1,
        experimental_preserve_all_tensors=preserve_all_tensors,
        experimental_op_resolver_type=resolver,
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
    """Resize input 0 to the batch (allocating only when its shape changes), set it, invoke."""
    inp = interp.get_input_details()[0]
    if list(inp["shape"]) != list(x.shape):
        interp.resize_tensor_input(inp["index"], list(x.shape), strict=False)
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]  # quantization is unchanged; refreshed shape
    interp.set_tensor(inp["index"], quantize(x, inp))
    interp.invoke()


class LiteRTSession(Session):
    def __init__(self, runtime: Runtime, artifact: Artifact, options: Options) -> None:
        super().__init__(runtime, artifact)
        self.interp = make_interpreter(
            str(artifact.path), threads=options.threads, xnnpack=options.optimize
        )
        self.interp.allocate_tensors()

    def infer(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        t = time.perf_counter()
        x = np.asarray(x, dtype=np.float32)
        chunks = []
        for i in range(0, len(x), RUN_BATCH):
            invoke(self.interp, x[i : i + RUN_BATCH])
            outs = self.interp.get_output_details()
            chunks.append([dequantize(self.interp.get_tensor(d["index"]), d) for d in outs])
        values = [np.concatenate(p) for p in zip(*chunks, strict=True)]
        info = {"timings": {"infer_ms": (time.perf_counter() - t) * 1e3}}
        return single_output({d["name"]: v for d, v in zip(outs, values, strict=True)}), info

    def layer_outputs(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """Each Keras layer's last op output (dequantized), from an interpreter that keeps all
        intermediates; `names` are the Keras layers in order."""
        from edgetl.localize import layer_of_name

        order = {name: i for i, name in enumerate(names)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": it is
            interp = make_interpreter(str(self.artifact.path), preserve_all_tensors=True)
        interp.allocate_tensors()
        invoke(interp, np.asarray(x, np.float32))
        details = {d["index"]: d for d in interp.get_tensor_details()}
        last: dict[str, int] = {}
        for op in interp._get_ops_details():
            for idx in op["outputs"]:
                d = details.get(int(idx))
                layer = layer_of_name(d["name"], order) if d else None
                if layer is not None:
                    last[layer] = int(idx)
        if order:  # the model's output is the last layer's (a Dense's softmax is an unnamed op)
            last[names[-1]] = int(interp.get_output_details()[0]["index"])
        return {layer: dequantize(interp.get_tensor(i), details[i]) for layer, i in last.items()}


class LiteRTRuntime(Runtime):
    name = "litert"
    description = "TFLite files of every precision in the LiteRT interpreter (CPU, XNNPACK)"
    formats = frozenset({"tflite"})
    layer_formats = formats
    layer_source = "TFLite tensors"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("ai_edge_litert") is None:
            return "ai-edge-litert is not installed (pip install ai-edge-litert==2.3.0)"
        return None

    def start(self, artifact: Artifact, context: RunContext, options: Options) -> LiteRTSession:
        return LiteRTSession(self, artifact, options)


RUNTIMES.register(LiteRTRuntime())
