"""onnxruntime runtimes: "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt".

GPU numerics are pinned to true float32 so the strict tolerance can hold: the CUDA provider's
TF32 (on by default for matmul/conv, ~1e-3 differences) is switched off with use_tf32=0, and
TensorRT, which has no such option, reads NVIDIA_TF32_OVERRIDE=0 at session creation.
get_available_providers() describes the build, not the machine, so after creating a session we
ask it which provider really leads and refuse a silent CPU fallback (RuntimeUnavailable).
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np

from edgetl.runtimes.base import (
    RUNTIMES,
    Artifact,
    Options,
    RunContext,
    Runtime,
    RuntimeUnavailable,
    Session,
    single_output,
)

CPU = "CPUExecutionProvider"
RUN_BATCH = 32  # images per session.run: bounded memory with --data (intermediates scale with it)


class OnnxSession(Session):
    def __init__(self, runtime: OnnxRuntime, artifact: Artifact, options: Options) -> None:
        super().__init__(runtime, artifact)
        self.options = options
        self.sess = runtime.session(str(artifact.path), options)

    def infer(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        t = time.perf_counter()
        out = run_session(self.sess, to_layout(x, self.artifact.record.layout))
        info = {"provider": self.runtime.provider}
        return out, {**info, "timings": {"infer_ms": (time.perf_counter() - t) * 1e3}}

    def layer_outputs(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """The model run again with each Keras layer's last tensor added as a graph output;
        `names` are the Keras layers in order."""
        import onnx

        from edgetl.localize import layer_of_name

        order = {name: i for i, name in enumerate(names)}
        model = onnx.load(str(self.artifact.path))
        inits = {i.name for i in model.graph.initializer}
        last: dict[str, str] = {}  # layer -> its last tensor in topological order
        for node in model.graph.node:
            layer = layer_of_name(node.name, order)
            if layer is None:  # tf2onnx's fused Conv__123 nodes: named by their weights
                hits = [layer_of_name(i, order) for i in node.input if i in inits]
                hits = [h for h in hits if h is not None]
                layer = max(hits, key=order.__getitem__) if hits else None
            if layer is not None and node.output:
                last[layer] = node.output[0]
        existing = {o.name for o in model.graph.output}
        for tensor in last.values():
            if tensor not in existing:
                model.graph.output.append(onnx.ValueInfoProto(name=tensor))
                existing.add(tensor)
        sess = self.runtime.session(model.SerializeToString(), self.options)
        x = to_layout(x, self.artifact.record.layout)
        values = run_session(sess, x, output_names=list(last.values()))
        return {layer: values[t] for layer, t in last.items()}


class OnnxRuntime(Runtime):
    formats = frozenset({"onnx"})
    layer_formats = formats
    layer_source = "ONNX node outputs"

    def __init__(
        self,
        name: str,
        provider: str,
        options: dict | None = None,
        env: dict[str, str] | None = None,
        gpu: bool = False,
        description: str = "",
    ) -> None:
        self.name = name
        self.description = description
        self.provider = provider
        self.provider_options = dict(options or {})
        self.env = dict(env or {})
        self.gpu = gpu

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return 'onnxruntime is not installed (pip install "edgetl[cpu]", or "edgetl[gpu]")'
        import onnxruntime as ort

        have = ort.get_available_providers()
        if self.provider not in have:
            return (
                f"{self.provider} is not in this onnxruntime build (has: {', '.join(have)}); "
                "install onnxruntime-gpu instead of onnxruntime for GPU providers"
            )
        return None

    def providers(self) -> list:
        """Provider list for a session: ours first; CPU after it for ops the GPU lacks."""
        first = (self.provider, self.provider_options) if self.provider_options else self.provider
        if self.provider == "TensorrtExecutionProvider":
            return [first, ("CUDAExecutionProvider", {"use_tf32": 0}), CPU]
        return [first] if self.provider == CPU else [first, CPU]

    def session(self, model: str | bytes, options: Options | None = None):
        """An InferenceSession on this provider (path or serialized model), fallback refused.
        options.threads sets the intra-op threads (one inter-op thread then), optimize=False
        switches graph optimizations off."""
        import onnxruntime as ort

        os.environ.update(self.env)  # must precede session creation (NVIDIA_TF32_OVERRIDE)
        # A GPU provider that cannot start logs red errors through ORT's default logger before
        # the session falls back; the fallback is reported below in edgetl's own words.
        ort.set_default_logger_severity(4 if self.gpu else 3)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        options = options or Options()
        if options.threads:
            so.intra_op_num_threads = options.threads
            so.inter_op_num_threads = 1
        if not options.optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model, sess_options=so, providers=self.providers())
        used = sess.get_providers()
        if not used or used[0] != self.provider:
            raise RuntimeUnavailable(
                f"{self.name}: session fell back to {used[0] if used else 'nothing'} "
                f"({self.provider} could not start here: no GPU, driver or CUDA libraries?)"
            )
        return sess

    def start(self, artifact: Artifact, context: RunContext, options: Options) -> OnnxSession:
        return OnnxSession(self, artifact, options)


def to_layout(inputs: np.ndarray, layout: str) -> np.ndarray:
    """The NHWC probe batch as the artifact wants it (NCHW exports take (N, 3, H, W))."""
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "NCHW" else x


def run_session(
    sess, x: np.ndarray, output_names: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Feed the single image input; a single output is returned as "probabilities"."""
    name = sess.get_inputs()[0].name
    names = output_names or [o.name for o in sess.get_outputs()]
    chunks = [sess.run(names, {name: x[i : i + RUN_BATCH]}) for i in range(0, len(x), RUN_BATCH)]
    outs = chunks[0] if len(chunks) == 1 else [np.concatenate(p) for p in zip(*chunks, strict=True)]
    values = {n: np.asarray(o) for n, o in zip(names, outs, strict=True)}
    return single_output(values) if output_names is None else values


RUNTIMES.register(
    OnnxRuntime("onnxruntime-cpu", CPU, description="ONNX in native onnxruntime on the CPU")
)
RUNTIMES.register(
    OnnxRuntime(
        "onnxruntime-cuda",
        "CUDAExecutionProvider",
        {"use_tf32": 0},
        gpu=True,
        description="ONNX in onnxruntime-gpu on an NVIDIA GPU, CUDA provider (TF32 off)",
    ),
)
RUNTIMES.register(
    OnnxRuntime(
        "onnxruntime-tensorrt",
        "TensorrtExecutionProvider",
        env={"NVIDIA_TF32_OVERRIDE": "0"},
        gpu=True,
        description="ONNX in onnxruntime-gpu on an NVIDIA GPU, TensorRT provider (TF32 off)",
    ),
)
