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

import numpy as np

from edgetl.runtimes.base import RUNTIMES, Artifact, Runtime, RuntimeUnavailable

OUTPUT_NAME = "probabilities"
CPU = "CPUExecutionProvider"
RUN_BATCH = 32  # images per session.run: bounded memory with --data (intermediates scale with it)


class OnnxRuntime(Runtime):
    formats = frozenset({"onnx"})

    def __init__(
        self,
        name: str,
        provider: str,
        options: dict | None = None,
        env: dict[str, str] | None = None,
        gpu: bool = False,
    ) -> None:
        self.name = name
        self.provider = provider
        self.options = dict(options or {})
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
        first = (self.provider, self.options) if self.options else self.provider
        if self.provider == "TensorrtExecutionProvider":
            return [first, ("CUDAExecutionProvider", {"use_tf32": 0}), CPU]
        return [first] if self.provider == CPU else [first, CPU]

    def session(self, model: str | bytes):
        """An InferenceSession on this provider (path or serialized model), fallback refused."""
        import onnxruntime as ort

        os.environ.update(self.env)  # must precede session creation (NVIDIA_TF32_OVERRIDE)
        # A GPU provider that cannot start logs red errors through ORT's default logger before
        # the session falls back; the fallback is reported below in edgetl's own words.
        ort.set_default_logger_severity(4 if self.gpu else 3)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(model, sess_options=so, providers=self.providers())
        used = sess.get_providers()
        if not used or used[0] != self.provider:
            raise RuntimeUnavailable(
                f"{self.name}: session fell back to {used[0] if used else 'nothing'} "
                f"({self.provider} could not start here: no GPU, driver or CUDA libraries?)"
            )
        return sess

    def run(self, artifact: Artifact, inputs: np.ndarray) -> dict[str, np.ndarray]:
        sess = self.session(str(artifact.path))
        return run_session(sess, to_layout(inputs, artifact.record.layout))


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
    if output_names is None and len(names) == 1:
        return {OUTPUT_NAME: np.asarray(outs[0], dtype=np.float32)}
    return {n: np.asarray(o) for n, o in zip(names, outs, strict=True)}


RUNTIMES.register("onnxruntime-cpu", OnnxRuntime("onnxruntime-cpu", CPU))
RUNTIMES.register(
    "onnxruntime-cuda",
    OnnxRuntime("onnxruntime-cuda", "CUDAExecutionProvider", {"use_tf32": 0}, gpu=True),
)
RUNTIMES.register(
    "onnxruntime-tensorrt",
    OnnxRuntime(
        "onnxruntime-tensorrt",
        "TensorrtExecutionProvider",
        env={"NVIDIA_TF32_OVERRIDE": "0"},
        gpu=True,
    ),
)
