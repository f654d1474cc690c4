"""onnxruntime on GPU execution providers, in the environment `edgetl[gpu]` makes.

On a machine without a GPU (CI), a second virtualenv with onnxruntime-gpu (the wheel that
`pip install "edgetl[gpu]"` brings, in place of onnxruntime) must make onnxruntime-cuda and
onnxruntime-tensorrt *unavailable* with edgetl's own reason, never a silent CPU pass, and
without ORT's red provider-load errors flooding stderr. The real-GPU checks (marker gpu) are in
test_verify.py.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORT_GPU = "onnxruntime-gpu==1.22.0"  # the pin of the `gpu` extra in pyproject.toml


def _softmax_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def ort_gpu_python() -> Path:
    """A venv with onnxruntime-gpu and numpy only (cached in ~/.cache/edgetl between runs)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgetl"
    env_dir = cache / f"test-venv-{ORT_GPU.replace('==', '-')}"
    python = env_dir / "bin" / "python"
    marker = env_dir / ".complete"
    if not marker.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
        cmd = [str(python), "-m", "pip", "install", "-q", ORT_GPU, "numpy>=1.26,<2.2"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"could not install {ORT_GPU} in a test venv:\n{done.stderr[-2000:]}")
        marker.write_text("ok\n")
    return python


@pytest.mark.slow
def test_gpu_providers_without_a_gpu_are_unavailable_not_a_silent_cpu_pass(
    ort_gpu_python, tmp_path
):
    model = _softmax_model(tmp_path / "softmax.onnx")
    script = textwrap.dedent(
        f"""
        import json
        import onnxruntime as ort
        from edgetl.runtimes.base import RuntimeUnavailable
        from edgetl.runtimes.onnxruntime_runtime import RUNTIMES
        out = {{"build": ort.get_available_providers()}}
        for name in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
            rt = RUNTIMES.get(name)
            out[name] = {{"listed": rt.unavailable_reason()}}
            try:
                rt.session({str(model)!r})
                out[name]["ran"] = True
            except RuntimeUnavailable as e:
                out[name]["unavailable"] = str(e)
        print(json.dumps(out))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    done = subprocess.run(
        [str(ort_gpu_python), "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "CUDAExecutionProvider" in out["build"]  # the GPU build really is installed
    for name in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        assert out[name]["listed"] is None, out  # the build offers it ...
        assert "ran" not in out[name], out  # ... but no session may fall back silently
        assert "fell back to CPUExecutionProvider" in out[name]["unavailable"], out
    # ORT's own provider-load errors stay out of the user's stderr
    assert "[E:onnxruntime" not in done.stderr, done.stderr[-3000:]
