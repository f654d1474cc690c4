"""The CI recipe, run the way a runner would run it (no runner is reachable from here): a fresh
clone of this repository, a new venv, .github/actions/verify/run.sh with the environment
action.yml gives it, against the tiny run's model and files converted without edgetl. The venv
sees this environment's installed packages through a .pth file, as a restored pip cache makes
the install quick on a runner; edgetl itself, `npm ci` and the verify run are real."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_SH = Path(".github/actions/verify/run.sh")


def _venv_on_this_stack(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    target = next((venv / "lib").glob("python3*/site-packages"))
    paths = [p for p in (*site.getsitepackages(), *sys.path) if p.endswith("site-packages")]
    (target / "_this_stack.pth").write_text("\n".join(dict.fromkeys(paths)) + "\n")


@pytest.mark.slow
@pytest.mark.node
def test_action_script_on_a_fresh_clone(tmp_path, tiny_run, foreign_artifacts):
    clone = tmp_path / "edgetl"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    venv = tmp_path / "venv"
    _venv_on_this_stack(venv)
    report = tmp_path / "report"
    out = tmp_path / "github_output"
    files = [foreign_artifacts[k] for k in ("onnx", "tflite")]
    files.append(foreign_artifacts["tfjs_graph"].parent)
    env = {
        **os.environ,
        "RUNNER_TEMP": str(tmp_path),
        "GITHUB_OUTPUT": str(out),
        "EDGETL_DIR": str(clone),
        "EDGETL_VENV": str(venv),
        "EDGETL_REPORT_DIR": str(report),
        "EDGETL_EXTRAS": "export,cpu,browser",
        "EDGETL_BROWSER": "true",
        "INPUT_ARTIFACTS": " ".join(map(str, files)),
        "INPUT_REFERENCE": str(tiny_run / "model.keras"),
        "INPUT_PROBES": "",
        "INPUT_IMAGES": "",
        "INPUT_RUNTIMES": "keras onnxruntime-cpu litert tfjs-node-wasm",
        "INPUT_REQUIRE": "onnxruntime-cpu litert tfjs-node-wasm",
        "INPUT_ARGS": f"--save-probes {tmp_path / 'probes'}",
    }
    proc = subprocess.run(
        ["bash", str(clone / RUN_SH)], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK: 4/4 pairs passed" in proc.stdout
    suite = ET.parse(report / "junit.xml").getroot()
    assert int(suite.get("tests")) >= 4 and suite.get("failures") == "0"
    assert json.loads((report / "result.json").read_text())["ok"] is True
    assert (report / "report.html").stat().st_size > 1000
    assert f"report-dir={report}" in out.read_text()
    # edgetl ran from the clone, not from this checkout (cwd: neither, as sys.path has "")
    assert str(clone) in subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import edgetl; print(edgetl.__file__)"],
        capture_output=True, text=True, check=True, cwd=venv,
    ).stdout  # fmt: skip

    # a mismatch: exit status 1, reports still written (the action uploads them `if: always()`)
    bad = tmp_path / "bad.onnx"
    shutil.copyfile(foreign_artifacts["onnx"], bad)
    _scale_first_conv(bad)
    shutil.rmtree(report)
    env.update(
        INPUT_ARTIFACTS=str(bad), INPUT_PROBES=str(tmp_path / "probes"), INPUT_ARGS="",
        INPUT_REFERENCE="", INPUT_RUNTIMES="onnxruntime-cpu", INPUT_REQUIRE="",
    )  # fmt: skip
    proc = subprocess.run(
        ["bash", str(clone / RUN_SH)], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ET.parse(report / "junit.xml").getroot().get("failures") == "1"


def _scale_first_conv(path: Path) -> None:
    """Every weight of the first 4-d initializer x1.5: a broken conversion."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    init = next(i for i in model.graph.initializer if len(i.dims) == 4)
    w = numpy_helper.to_array(init) * np.float32(1.5)
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, path)
