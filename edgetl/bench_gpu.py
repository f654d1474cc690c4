"""`python -m edgetl.bench gpu`: the GPU check, one command for a host with an NVIDIA GPU
(about 8 minutes there: most of it the CUDA wheels' download).

1. the GPU: `nvidia-smi`'s name, driver and memory (no nvidia-smi: every GPU step below is
   skipped, saying so);
2. a bundle (MobileNetV2 0.35/96 with locally made, data-fitted weights: ONNX float32);
3. the `gpu` extra (onnxruntime-gpu[cuda,cudnn], pinned in pyproject.toml) in a fresh venv of
   its own (it must never share one with the CPU onnxruntime), edgetl's sources on its path;
4. in that venv, `edgetl verify` on onnxruntime-cuda and onnxruntime-tensorrt, with TF32 off
   (edgetl's setting: use_tf32=0, NVIDIA_TF32_OVERRIDE=0) and then on (the providers'
   defaults), each error against the bundle's Keras golden outputs and the GPU limit;
5. batch-1 and batch-64 throughput of the same ONNX model on each provider and on the CPU;
6. Chromium's WebGPU on the real adapter (`--enable-unsafe-webgpu`, no `--disable-gpu`, no
   SwiftShader): `navigator.gpu.requestAdapter()`'s info, and verify on every registered
   runtime that runs in WebGPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import venv
from pathlib import Path

from edgetl.runtimes.base import load_runtimes

GPU_EXTRA = "gpu"  # pyproject.toml's extra: onnxruntime-gpu[cuda,cudnn]==1.22.0
ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 64)
RUNS = {1: 50, 64: 10}
# What each GPU runtime is given for TF32 on and off (edgetl's own registry entries are "off").
TF32 = {
    "onnxruntime-cuda": {"off": ({"use_tf32": 0}, {}), "on": ({"use_tf32": 1}, {})},
    "onnxruntime-tensorrt": {
        "off": ({}, {"NVIDIA_TF32_OVERRIDE": "0"}),
        "on": ({}, {"NVIDIA_TF32_OVERRIDE": ""}),
    },
}


def nvidia_gpu() -> tuple[str | None, str]:
    """(the GPU as nvidia-smi names it, None where there is none; why not)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, "no NVIDIA GPU here (nvidia-smi not found)"
    query = "--query-gpu=name,driver_version,memory.total"
    done = subprocess.run(
        [smi, query, "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    if done.returncode or not done.stdout.strip():
        return None, f"nvidia-smi found no GPU: {(done.stderr or done.stdout).strip()[:200]}"
    return done.stdout.strip().splitlines()[0], ""


def gpu_extra_requirements() -> list[str]:
    """The `gpu` extra's requirements, read from pyproject.toml (one source of truth)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [r for r in project["dependencies"] if r.split("==")[0] in ("numpy", "onnx")]
    return [*project["optional-dependencies"][GPU_EXTRA], *pins]


def make_gpu_venv(where: Path) -> Path:
    """A fresh venv with the gpu extra (onnxruntime-gpu and its CUDA/cuDNN wheels), numpy and
    onnx at the project's pins; edgetl itself comes from the sources (PYTHONPATH), since
    verifying on onnxruntime needs no TensorFlow. Returns its python."""
    shutil.rmtree(where, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    python = where / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", *gpu_extra_requirements()]
    subprocess.run(pip, check=True, timeout=420)
    return python


# Runs in the GPU venv: verify per (runtime, TF32), then throughput per provider; prints JSON.
_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    from edgetl.runtimes.base import Options, RuntimeUnavailable, load_runtimes
    from edgetl.runtimes.onnxruntime_runtime import OnnxRuntime
    from edgetl.verifier import verify
    bundle, onnx_path, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    rts = load_runtimes()
    out = {"verify": [], "throughput": []}
    for name, modes in plan["tf32"].items():
        base = rts.get(name)
        for mode, (options, env) in modes.items():
            os.environ.update(env)
            if not env.get("NVIDIA_TF32_OVERRIDE", "x"):
                os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
            run_name = name if mode == "off" else f"{name}-tf32"  # registered for this run
            if run_name not in rts:
                rts.register(OnnxRuntime(run_name, base.provider,
                                         {**base.provider_options, **options},
                                         env={k: v for k, v in env.items() if v}, gpu=True))
            row = {"runtime": name, "tf32": mode}
            try:
                result = verify(bundle, runtimes=[run_name], localize_failures=False)
                pairs = [p for p in result.pairs if p.runtime == run_name]
                down = [s.reason for s in result.runtimes if s.name == run_name and not s.available]
                if pairs:
                    p = pairs[0]
                    row |= {"status": p.status, "max_abs": p.stats.max_abs if p.stats else None,
                            "limit": p.tolerance.describe()}
                else:
                    row |= {"status": "unavailable", "why": "; ".join(down)[:300]}
            except Exception as e:
                row |= {"status": "error", "why": f"{type(e).__name__}: {e}"[:300]}
            out["verify"].append(row)
    x = np.random.default_rng(0).uniform(0, 255, (64, *plan["shape"])).astype(np.float32)
    for name in plan["throughput"]:
        rt = rts.get(name)
        for batch in plan["batches"]:
            row = {"runtime": name, "batch": batch}
            try:
                sess = rt.session(onnx_path)
                feed = {sess.get_inputs()[0].name: x[:batch]}
                for _ in range(3):
                    sess.run(None, feed)
                n = plan["runs"][str(batch)]
                t = time.perf_counter()
                for _ in range(n):
                    sess.run(None, feed)
                dt = (time.perf_counter() - t) / n
                row |= {"ms": dt * 1e3, "images_per_s": batch / dt}
            except RuntimeUnavailable as e:
                row |= {"why": str(e)[:300]}
            except Exception as e:
                row |= {"why": f"{type(e).__name__}: {e}"[:300]}
            out["throughput"].append(row)
    print(json.dumps(out))
    """
)


def gpu_child(python: Path, bundle: Path, onnx_path: Path, shape: tuple, runtimes: list[str]):
    """The verify and throughput runs in the GPU venv (edgetl from the sources)."""
    plan = {
        "tf32": TF32,
        "throughput": runtimes,
        "batches": list(BATCHES),
        "runs": {str(b): n for b, n in RUNS.items()},
        "shape": list(shape),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [str(python), "-c", _CHILD, str(bundle), str(onnx_path), json.dumps(plan)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_throughput(onnx_path: Path, shape: tuple) -> list[dict]:
    """Batch-1 and batch-64 throughput on onnxruntime-cpu in this process (the baseline)."""
    import numpy as np

    rt = load_runtimes().get("onnxruntime-cpu")
    sess = rt.session(str(onnx_path))
    x = np.random.default_rng(0).uniform(0, 255, (64, *shape)).astype(np.float32)
    rows = []
    for batch in BATCHES:
        feed = {sess.get_inputs()[0].name: x[:batch]}
        for _ in range(3):
            sess.run(None, feed)
        t = time.perf_counter()
        for _ in range(RUNS[batch]):
            sess.run(None, feed)
        dt = (time.perf_counter() - t) / RUNS[batch]
        rows.append({"runtime": "onnxruntime-cpu", "batch": batch, "ms": dt * 1e3,
                     "images_per_s": batch / dt})  # fmt: skip
    return rows


_ADAPTER = """async () => {
  if (!navigator.gpu) return {adapter: null, why: 'navigator.gpu is undefined'};
  const a = await navigator.gpu.requestAdapter();
  if (!a) return {adapter: null, why: 'navigator.gpu.requestAdapter() returned null'};
  const i = a.info || {};
  return {adapter: {vendor: i.vendor, architecture: i.architecture, device: i.device,
                    description: i.description, fallback: !!a.isFallbackAdapter}};
}"""


def webgpu_adapter() -> dict:
    """navigator.gpu.requestAdapter()'s answer in headless Chromium started for a real GPU:
    --enable-unsafe-webgpu, without --disable-gpu and without SwiftShader, on a secure
    (127.0.0.1) page of edgetl's own server."""
    from playwright.sync_api import sync_playwright

    from edgetl.runtimes.tfjs_browser import browser_unavailable_reason, chromium_path
    from edgetl.serve import start_server, stop_server

    reason = browser_unavailable_reason()
    if reason:
        return {"adapter": None, "why": reason}
    flags = [
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-component-update",
        "--enable-unsafe-webgpu",
    ]
    server, url = start_server(None)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=flags, headless=True)
            page = browser.new_page()
            page.goto(url)
            answer = page.evaluate(_ADAPTER)
            browser.close()
    finally:
        stop_server(server)
    return answer


def webgpu_runtimes() -> list[str]:
    """Registered runtimes that run in the browser's WebGPU (ort-web-webgpu, and any other that
    another branch registers with 'webgpu' in its name)."""
    return [n for n in load_runtimes().names() if "webgpu" in n]


def bench_gpu(work: Path) -> str:
    from edgetl.bench import parity_bundle
    from edgetl.manifest import Manifest
    from edgetl.verifier import verify

    t0 = time.perf_counter()
    lines = ["GPU check (python -m edgetl.bench gpu)"]
    gpu, why = nvidia_gpu()
    lines.append(f"1. GPU: {gpu}" if gpu else f"1. GPU: none: {why}")
    bundle, _ = parity_bundle(work, "mobilenet_v2", 0.35, 96, quantizations=(),
                              export_options={"formats": ["onnx"]})  # fmt: skip
    manifest = Manifest.load(bundle)
    onnx_path = bundle / manifest.artifact("onnx").path
    shape = (manifest.input.height, manifest.input.width, 3)
    lines.append(f"2. bundle: {bundle.name} (ONNX float32, {len(manifest.labels)} classes)")
    gpu_rows: dict = {"verify": [], "throughput": []}
    if gpu is None:
        lines.append(f"3. gpu extra in a fresh venv: skipped: {why}")
        lines.append(
            f"4. verify on onnxruntime-cuda / onnxruntime-tensorrt, TF32 off/on: skipped: {why}"
        )
    else:
        t = time.perf_counter()
        try:
            python = make_gpu_venv(work / "gpu-venv")
            lines.append(
                f"3. gpu extra ({', '.join(gpu_extra_requirements())}) in {work / 'gpu-venv'}: "
                f"{time.perf_counter() - t:.0f} s"
            )
            gpu_rows = gpu_child(
                python, bundle, onnx_path, shape, ["onnxruntime-cuda", "onnxruntime-tensorrt"]
            )
        except (subprocess.SubprocessError, OSError, ValueError) as e:
            lines.append(f"3. gpu extra / GPU runs failed: {type(e).__name__}: {str(e)[:300]}")
        lines.append("4. verify on the GPU providers (error vs the Keras golden outputs):")
        for r in gpu_rows["verify"]:
            err = (
                f"max |err| {r['max_abs']:.2e} ({r['limit']})"
                if r.get("max_abs") is not None
                else r.get("why", "")
            )
            lines.append(f"   {r['runtime']:22} TF32 {r['tf32']:3}: {r['status']:11} {err}")
    lines.append("5. throughput, ONNX float32 (ms per batch, images/s):")
    for r in [*cpu_throughput(onnx_path, shape), *gpu_rows["throughput"]]:
        if "ms" in r:
            lines.append(
                f"   {r['runtime']:22} batch {r['batch']:>2}: {r['ms']:8.2f} ms  "
                f"{r['images_per_s']:9.1f} images/s"
            )
        else:
            lines.append(f"   {r['runtime']:22} batch {r['batch']:>2}: skipped: {r['why']}")
    if gpu is None:
        lines.append(f"   onnxruntime-cuda / -tensorrt: skipped: {why}")
    adapter = webgpu_adapter()
    lines.append(
        "6. Chromium WebGPU (--enable-unsafe-webgpu, real adapter): "
        + (
            json.dumps(adapter["adapter"])
            if adapter["adapter"]
            else f"no adapter: {adapter['why']}"
        )
    )
    names = webgpu_runtimes()
    if adapter["adapter"] and names:
        result = verify(bundle, runtimes=names, localize_failures=False)
        for p in result.pairs:
            err = f"{p.stats.max_abs:.2e}" if p.stats else "-"
            lines.append(f"   {p.artifact}@{p.runtime}: {p.status} max |err| {err}")
        for s in result.runtimes:
            if not s.available:
                lines.append(f"   {s.name}: unavailable: {s.reason}")
    else:
        why_not = "no adapter" if not adapter["adapter"] else "no WebGPU runtime registered"
        lines.append(f"   verify on {', '.join(names) or 'WebGPU runtimes'}: skipped: {why_not}")
    lines.append(f"wall {time.perf_counter() - t0:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    print(bench_gpu(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/edgetl-bench-gpu")))
