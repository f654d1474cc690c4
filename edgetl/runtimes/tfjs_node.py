"""TF.js in Node.js: runtimes "tfjs-node-cpu" and "tfjs-node-wasm".

Pure @tensorflow/tfjs (cpu backend) and @tensorflow/tfjs-backend-wasm from web/node_modules:
tfjs-node would be faster but downloads libtensorflow at install time, which an offline machine
cannot do. web/harness/node_runner.mjs runs every artifact of a verify in one Node process (a
start costs ~0.3 s, a small model's load ~0.1 s), reading the batch as raw float32 from disk.
A session runs one process per infer(), run_many() one for all the artifacts of a verify; the
info holds the backend, tfjs version and timings.
Per-layer outputs (`--layers`) of Layers models serve localization.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from edgetl.runtimes.base import (
    RUN_LIMIT_ENV,
    RUNTIMES,
    Artifact,
    Options,
    RunContext,
    RuntimeTimeout,
    Session,
    run_limit_s,
)
from edgetl.runtimes.tfjs_common import TfjsRuntime, decode_outputs, float32_array
from edgetl.webdir import web_dir

BACKENDS = ("cpu", "wasm")
MIN_NODE_MAJOR = 18
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
    timeout: float | None = None,
) -> tuple[dict, dict[str, dict[str, np.ndarray] | Exception], dict[str, dict[str, np.ndarray]]]:
    """Run (id, format, model.json) models in one node_runner process.

    Returns (summary, outputs per id or the model's error, named layer outputs per id).
    Raises NodeRunnerError (with Node's stderr) if the process itself fails."""
    exe = node_executable()
    if exe is None:
        raise NodeRunnerError("Node.js not found")
    timeout = run_limit_s() if timeout is None else timeout
    x = np.ascontiguousarray(inputs, dtype="<f4")
    with tempfile.TemporaryDirectory(prefix="edgetl-node-") as tmp:
        tmp_path = Path(tmp).resolve()  # node runs in web/: TMPDIR may be relative (staging)
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
            raise RuntimeTimeout(
                f"TF.js ({backend}, Node) timed out after {timeout:g} s and was stopped "
                f"(the limit is ${RUN_LIMIT_ENV})"
            ) from e
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
            outputs[mid] = decode_outputs(entry["outputs"], partial(_read, tmp_path / "out"))
            layer_values[mid] = {
                la["name"]: _read(tmp_path / "out", la) for la in entry.get("layers", [])
            }
    return summary, outputs, layer_values


def _read(folder: Path, entry: dict) -> np.ndarray:
    return float32_array((folder / entry["file"]).read_bytes(), entry["shape"])


def run_info(summary: dict, model_id: str) -> dict:
    """What ran a model: backend, tfjs and Node versions, wasm SIMD, timings."""
    common = {k: summary.get(k) for k in ("backend", "tfjs_version", "node", "wasm_simd")}
    return {**common, "timings": summary["models"][model_id]["timings"]}


class NodeSession(Session):
    runtime: TfjsNodeRuntime

    def _run(self, x: np.ndarray, layers: list[str] | None = None):
        a = self.artifact
        summary, outputs, layer_values = run_node(
            self.runtime.backend, [(a.id, a.format, a.path)], x, layers=layers
        )
        if isinstance(outputs[a.id], Exception):
            raise outputs[a.id]
        return outputs[a.id], run_info(summary, a.id), layer_values[a.id]

    def infer(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        outputs, info, _ = self._run(x)
        return outputs, info

    def layer_outputs(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """Named Keras layers' outputs in TF.js (Layers models only), for localizing a mismatch."""
        if self.artifact.format != "tfjs_layers":
            raise ValueError(
                f"{self.runtime.name} has per-layer outputs for tfjs_layers, "
                f"not {self.artifact.format}"
            )
        return self._run(x, names)[2]


class TfjsNodeRuntime(TfjsRuntime):
    host = "node"
    backends = BACKENDS
    layer_formats = frozenset({"tfjs_layers"})

    def unavailable_reason(self) -> str | None:
        return node_unavailable_reason(self.backend)

    def start(self, artifact: Artifact, context: RunContext, options: Options) -> NodeSession:
        return NodeSession(self, artifact)

    def run_many(self, artifacts: list[Artifact], inputs: np.ndarray, context=None) -> dict:
        """Every accepted artifact in one Node process (a start costs ~1.5 s on 2 shared cores:
        one process per artifact made a 2-artifact verify 2.5 -> 4.0 s); a process failure is
        each one's error."""
        results: dict = {}
        todo = []
        for a in artifacts:
            if self.accepts(a):
                todo.append(a)
            else:
                results[a.id] = ValueError(f"{self.name} cannot run {a.format} artifacts")
        if not todo:
            return results
        try:
            summary, outputs, _ = run_node(
                self.backend, [(a.id, a.format, a.path) for a in todo], inputs
            )
        except (NodeRunnerError, RuntimeTimeout) as e:
            return {**results, **{a.id: e for a in todo}}
        for a in todo:
            out = outputs[a.id]
            results[a.id] = out if isinstance(out, Exception) else (out, run_info(summary, a.id))
        return results


for _backend in BACKENDS:
    RUNTIMES.register(TfjsNodeRuntime(_backend))
