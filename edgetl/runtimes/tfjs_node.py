"""TF.js in Node.js: runtimes "tfjs-node-cpu" and "tfjs-node-wasm".

Pure @tensorflow/tfjs (cpu backend) and @tensorflow/tfjs-backend-wasm from web/node_modules:
tfjs-node would be faster but downloads libtensorflow at install time, which an offline machine
cannot do. web/harness/node_runner.mjs runs every artifact of a verify in one Node process (a
start costs ~0.3 s, a small model's load ~0.1 s), reading the batch as raw float32 from disk.

After each run `last_info` holds, per artifact id, the backend, tfjs version and timings.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgetl.runtimes.base import RUNTIMES, Artifact, Runtime, web_dir

BACKENDS = ("cpu", "wasm")
OUTPUT_NAME = "probabilities"
MIN_NODE_MAJOR = 18
# MobileNet 1.0/224 on the cpu backend takes seconds per image; a verify runs 7 artifacts.
TIMEOUT_S = 1800
RUNNER = "harness/node_runner.mjs"
PACKAGES = {
    "cpu": ("@tensorflow/tfjs",),
    "wasm": ("@tensorflow/tfjs", "@tensorflow/tfjs-backend-wasm"),
}


class NodeRunnerError(RuntimeError):
    """node_runner.mjs failed as a whole; the message carries Node's stderr."""


def node_executable() -> str | None:
    """$EDGETL_NODE, else `node` on PATH."""
    return os.environ.get("EDGETL_NODE") or shutil.which("node")


@functools.lru_cache(maxsize=4)
def _node_major(exe: str) -> int | None:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.match(r"v(\d+)\.", out.stdout.strip())
    return int(m.group(1)) if out.returncode == 0 and m else None


def node_unavailable_reason(backend: str) -> str | None:
    """Why TF.js cannot run in Node here (None if it can): no node, or packages not installed."""
    exe = node_executable()
    if exe is None:
        return "Node.js not found: install node (>= 18) or set EDGETL_NODE"
    major = _node_major(exe)
    if major is None:
        return f"{exe} --version failed: is it Node.js?"
    if major < MIN_NODE_MAJOR:
        return f"Node.js {major} is too old; TF.js runs need >= {MIN_NODE_MAJOR}"
    modules = web_dir() / "node_modules"
    missing = [p for p in PACKAGES[backend] if not (modules / p / "package.json").is_file()]
    if missing:
        return f"{', '.join(missing)} not installed in {modules}: run `cd web && npm ci`"
    return None


def run_node(
    backend: str,
    models: list[tuple[str, str, Path]],
    inputs: np.ndarray,
    layers: list[str] | None = None,
    timeout: float = TIMEOUT_S,
) -> tuple[dict, dict[str, dict[str, np.ndarray] | Exception], dict[str, dict[str, np.ndarray]]]:
    """Run (id, format, model.json) models in one node_runner process.

    Returns (summary, outputs per id or the model's error, named layer outputs per id).
    Raises NodeRunnerError (with Node's stderr) if the process itself fails."""
    exe = node_executable()
    if exe is None:
        raise NodeRunnerError("Node.js not found")
    x = np.ascontiguousarray(inputs, dtype="<f4")
    with tempfile.TemporaryDirectory(prefix="edgetl-node-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "inputs.bin").write_bytes(x.tobytes())
        cmd = [
            exe,
            str(web_dir() / RUNNER),
            "--backend", backend,
            "--input", str(tmp_path / "inputs.bin"),
            "--shape", ",".join(str(d) for d in x.shape),
            "--out", str(tmp_path / "out"),
        ]  # fmt: skip
        for mid, fmt, path in models:
            cmd += ["--model", f"{mid}={fmt}:{Path(path).resolve()}"]
        if layers:
            cmd += ["--layers", ",".join(layers)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, cwd=web_dir()
            )
        except subprocess.TimeoutExpired as e:
            raise NodeRunnerError(f"node_runner ({backend}) timed out after {timeout:g} s") from e
        summary_path = tmp_path / "out" / "summary.json"
        if proc.returncode != 0 or not summary_path.is_file():
            tail = (proc.stderr or proc.stdout).strip()[-4000:]
            raise NodeRunnerError(
                f"node_runner ({backend}) failed with exit status {proc.returncode}:\n{tail}"
            )
        summary = json.loads(summary_path.read_text())
        outputs: dict[str, dict[str, np.ndarray] | Exception] = {}
        layer_values: dict[str, dict[str, np.ndarray]] = {}
        for mid, entry in summary["models"].items():
            if "error" in entry:
                outputs[mid] = RuntimeError(f"TF.js ({backend}, Node) on {mid}: {entry['error']}")
                continue
            outs = {
                o["name"]: _read(tmp_path / "out" / o["file"], o["shape"]) for o in entry["outputs"]
            }
            if len(outs) == 1:
                outs = {OUTPUT_NAME: next(iter(outs.values()))}
            outputs[mid] = outs
            layer_values[mid] = {
                la["name"]: _read(tmp_path / "out" / la["file"], la["shape"])
                for la in entry.get("layers", [])
            }
    return summary, outputs, layer_values


def _read(path: Path, shape: list[int]) -> np.ndarray:
    return np.fromfile(path, dtype="<f4").reshape(shape).astype(np.float32)


class TfjsNodeRuntime(Runtime):
    formats = frozenset({"tfjs_layers", "tfjs_graph"})
    gpu = False
    has_layer_outputs = True

    def __init__(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown TF.js Node backend {backend!r}; use {BACKENDS}")
        self.backend = backend
        self.name = f"tfjs-node-{backend}"
        # --data sample (MobileNetV2 1.0/160, 2 cores): wasm ran 216 images in 30 s, the
        # pure-JS cpu backend in 178 s (~0.8 s an image)
        self.data_sample = 200 if backend == "wasm" else 32
        # artifact id -> {"backend", "tfjs_version", "node", "timings": {load_ms, infer_ms}}
        self.last_info: dict[str, dict] = {}

    def unavailable_reason(self) -> str | None:
        return node_unavailable_reason(self.backend)

    def run(self, artifact: Artifact, inputs: np.ndarray) -> dict[str, np.ndarray]:
        result = self.run_many([artifact], inputs)[artifact.id]
        if isinstance(result, Exception):
            raise result
        return result

    def run_many(
        self, artifacts: list[Artifact], inputs: np.ndarray
    ) -> dict[str, dict[str, np.ndarray] | Exception]:
        """Every accepted artifact in one Node process; a process failure is each one's error."""
        results: dict[str, dict[str, np.ndarray] | Exception] = {}
        todo = []
        for a in artifacts:
            if self.accepts(a):
                todo.append(a)
            else:
                results[a.id] = ValueError(f"{self.name} cannot run {a.format} artifacts")
        self.last_info = {}
        if not todo:
            return results
        try:
            summary, outputs, _ = run_node(
                self.backend, [(a.id, a.format, a.path) for a in todo], inputs
            )
        except NodeRunnerError as e:
            return {**results, **{a.id: e for a in todo}}
        results.update(outputs)
        self._record(summary)
        return results

    def layer_outputs(
        self, artifact: Artifact, inputs: np.ndarray, names: list[str]
    ) -> dict[str, np.ndarray]:
        """Named Keras layers' outputs in TF.js (Layers models only), for localizing a mismatch."""
        if artifact.format != "tfjs_layers":
            raise ValueError(
                f"{self.name} has per-layer outputs for tfjs_layers, not {artifact.format}"
            )
        summary, outputs, layers = run_node(
            self.backend, [(artifact.id, artifact.format, artifact.path)], inputs, layers=names
        )
        if isinstance(outputs[artifact.id], Exception):
            raise outputs[artifact.id]
        self._record(summary)
        return layers[artifact.id]

    def _record(self, summary: dict) -> None:
        common = {k: summary.get(k) for k in ("backend", "tfjs_version", "node", "wasm_simd")}
        for mid, entry in summary["models"].items():
            if "error" not in entry:
                self.last_info[mid] = {**common, "timings": entry["timings"]}


for _backend in BACKENDS:
    RUNTIMES.register(f"tfjs-node-{_backend}", TfjsNodeRuntime(_backend))
