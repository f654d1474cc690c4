"""Every artifact export writes is opened in its own runtime and run on one probe before the
bundle is committed, so `edgetl export` exiting 0 means every file loads where it is meant to
(ONNX in onnxruntime, TFLite in LiteRT, TF.js in TF.js on Node). A converter can write a file
its runtime rejects (a TF.js topology tfjs cannot rebuild was found only by verify, as a
JavaScript TypeError); now the export fails instead, names the artifact and says why, and the
staged bundle is removed.

One runtime per format: the fastest registered CPU runtime off the browser that runs it (the
in-process ones, else the one with the largest --data sample). Artifacts whose format has no
runtime available here are listed as not load-checked, with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.errors import UserError
from edgetl.manifest import ArtifactRecord
from edgetl.runtimes.base import Artifact, Runtime, load_runtimes


class ArtifactLoadError(UserError):
    """An artifact export wrote does not load (or run) in its own runtime."""


@dataclass
class LoadCheck:
    """What check_artifacts_load found: artifact id -> runtime that loaded it, and the ids
    that could not be checked here, with the reason."""

    loaded: dict[str, str] = field(default_factory=dict)
    unchecked: dict[str, str] = field(default_factory=dict)


def runtime_for_format(fmt: str) -> tuple[Runtime | None, str]:
    """(runtime, "") for `fmt`, or (None, why none can run it here)."""
    runtimes = load_runtimes()
    candidates = [
        rt
        for rt in runtimes.values()
        if fmt in rt.formats and not rt.gpu and not rt.same_thread and not rt.reference
    ]
    if not candidates:
        return None, f"no runtime for {fmt} is registered"
    candidates.sort(key=lambda rt: -(rt.data_sample or float("inf")))
    reasons = []
    for rt in candidates:
        reason = rt.unavailable_reason()
        if reason is None:
            return rt, ""
        reasons.append(f"{rt.name}: {reason}")
    return None, "; ".join(reasons)


def probe_input(input_shape: tuple[int, ...], value_range: tuple[float, float]) -> np.ndarray:
    """One seeded image (1, H, W, C) spanning the model's input range."""
    lo, hi = value_range
    rng = np.random.default_rng(0)
    return rng.uniform(lo, hi, (1, *input_shape)).astype(np.float32)


def check_artifacts_load(
    root: Path, records: list[ArtifactRecord], x: np.ndarray, n_classes: int
) -> LoadCheck:
    """Open every artifact under `root` in its runtime and run `x` (one image) through it;
    raises ArtifactLoadError naming the first artifact that fails to load, fails to run or
    gives an output of the wrong shape."""
    result = LoadCheck()
    by_runtime: dict[str, list[Artifact]] = defaultdict(list)
    runtimes: dict[str, Runtime] = {}
    for record in records:
        rt, why = runtime_for_format(record.format)
        if rt is None:
            result.unchecked[record.id] = why
            continue
        runtimes[rt.name] = rt
        by_runtime[rt.name].append(Artifact(record, root))
    for name, artifacts in by_runtime.items():
        outcomes = runtimes[name].run_many(artifacts, x)
        for a in artifacts:
            outcome = outcomes[a.id]
            if isinstance(outcome, Exception):
                raise ArtifactLoadError(_failed(a, name, _reason(outcome)))
            outputs, _ = outcome
            y = outputs.get("probabilities")
            if y is None or tuple(np.shape(y)) != (len(x), n_classes):
                got = {k: tuple(np.shape(v)) for k, v in outputs.items()}
                raise ArtifactLoadError(
                    _failed(
                        a,
                        name,
                        f"it ran but gave outputs {got}, not one of shape ({len(x)}, {n_classes})",
                    )
                )
            result.loaded[a.id] = name
    return result


def _reason(error: Exception) -> str:
    """The error's last informative line (Node's stderr tail, a Python message), one line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
    text = text or type(error).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def _failed(artifact: Artifact, runtime: str, reason: str) -> str:
    return (
        f"{artifact.id} ({artifact.record.path}) was converted but does not load in {runtime}: "
        f"{reason}. Nothing was written. This model's structure is one the {artifact.format} "
        "converter gets wrong: export the other formats (--formats without it) and report the "
        "model"
    )
