"""The result types of a verify run, shared by the verifier and the reports (which import only
this module, so there is no import cycle): per-pair statistics, localization, pair results,
runtime statuses and the whole run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.errors import ParityError
from edgetl.tolerances import Tolerance

PASS, FAIL = "pass", "fail"
ERROR = "error"  # a pair whose runtime raised instead of giving outputs (counts as a failure)
SOURCE_ARTIFACT = "source_model"  # pseudo-artifact id of the Keras re-run vs the golden probes


@dataclass
class Stats:
    max_abs: float
    mean_abs: float
    p99_abs: float
    cosine: float  # minimum over probes
    top1_agreement: float  # fraction of all probes
    top5_agreement: float  # candidate top-1 within the reference's top-k (k = min(5, classes))
    decisive_top1_agreement: float | None  # on probes with reference margin >= tol.top1_margin
    decisive: int
    count: int
    nan: int
    inf: int
    worst: tuple[int, int] | None  # (probe, class) of max_abs
    # max |log max(p', floor) - log max(p, floor)|: what still moves where softmax saturates
    max_log: float = math.nan
    worst_log: tuple[int, int] | None = None
    log_floor: float | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (_finite(v) if isinstance(v, float) else v) for k, v in d.items()}


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


@dataclass
class Localization:
    """Where a failing artifact first departs from Keras, or why that could not be said."""

    layer: str | None
    reason: str
    layers_compared: int = 0
    # (layer, normalized max error) in Keras order, up to and including the first bad layer
    trace: list[tuple[str, float]] = field(default_factory=list)

    @property
    def localized(self) -> bool:
        return self.layer is not None

    def describe(self) -> str:
        if self.layer:
            return f"first layer out of tolerance: {self.layer} ({self.reason})"
        return f"not localized: {self.reason}"

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "reason": self.reason,
            "layers_compared": self.layers_compared,
            "trace": [[n, _finite(e)] for n, e in self.trace],
        }


@dataclass
class PairResult:
    artifact: str
    runtime: str
    reference: str  # "golden" (probes/expected.bin) or "keras" (a fresh Keras run)
    status: str  # pass | fail
    reasons: list[str]
    tolerance: Tolerance
    stats: Stats | None = None
    histogram: dict | None = None  # log10 |error| bins, for the HTML report
    accuracy: float | None = None  # with --data
    reference_accuracy: float | None = None
    localization: Localization | None = None
    info: dict = field(default_factory=dict)  # what the runtime reported (backend, precision)
    seconds: float | None = None
    images: int | None = None  # with --data: labelled images behind `accuracy`

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "runtime": self.runtime,
            "reference": self.reference,
            "status": self.status,
            "reasons": self.reasons,
            "tolerance": self.tolerance.to_dict(),
            "stats": self.stats.to_dict() if self.stats else None,
            "histogram": self.histogram,
            "accuracy": self.accuracy,
            "reference_accuracy": self.reference_accuracy,
            "localization": self.localization.to_dict() if self.localization else None,
            "info": self.info,
            "seconds": self.seconds,
            "images": self.images,
        }


@dataclass
class RuntimeStatus:
    name: str
    available: bool
    reason: str | None = None  # why not available
    gpu: bool = False
    artifacts: list[str] = field(default_factory=list)  # what it ran
    seconds: float = 0.0
    required: bool = False
    images: int | None = None  # with --data: how many labelled images it ran (slow: a sample)
    # artifacts it takes but cannot run on this machine (e.g. float16 ONNX on a WebGPU adapter
    # without shader-f16): id -> why; not counted as passing, like an unavailable runtime
    not_run: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class VerifyResult:
    bundle_dir: Path
    name: str
    pairs: list[PairResult]
    runtimes: list[RuntimeStatus]
    probes: int
    data: dict | None = None  # {"dir", "images", "keras_accuracy"} with --data
    seconds: float = 0.0
    # How much the probes can prove (recorded at export; see edgetl.probes): None for bundles
    # made before it was measured. strict_probes turns uninformative probes into a failure.
    probe_coverage: dict | None = None
    strict_probes: bool = False

    @property
    def probe_warning(self) -> str | None:
        """Why the probes cannot tell a broken artifact from a good one, or None."""
        c = self.probe_coverage
        if c is None:
            return "the bundle records no probe coverage (made by an older edgetl): re-export it"
        if c.get("informative", True):
            return None
        return "probes cannot prove parity: " + "; ".join(c.get("problems", []))

    @property
    def saturation_note(self) -> str | None:
        """Probes whose outputs are saturated (judged in log p only), or None."""
        c = self.probe_coverage or {}
        n, hot = c.get("saturated", 0), c.get("one_hot", 0)
        if not n:
            return None
        text = (
            f"{n} of {self.probes} probes saturated (top-1 within {c.get('saturated_mass', 1e-4):g}"
            " of 1: probability errors cannot show a change there; judged in log p)"
        )
        if hot:
            text += f", {hot} of them one-hot in float32 (nothing can show a change there)"
        return text

    @property
    def strict_problems(self) -> list[str]:
        """What --strict-probes fails on: probes that cannot prove parity, saturated probes."""
        return [w for w in (self.probe_warning, self.saturation_note) if w]

    @property
    def missing_required(self) -> list[RuntimeStatus]:
        return [r for r in self.runtimes if r.required and not r.available]

    @property
    def failed(self) -> list[PairResult]:
        return [p for p in self.pairs if not p.passed]

    @property
    def ok(self) -> bool:
        """Every pair that ran passed, at least one ran, and no required runtime is missing."""
        ran = [p for p in self.pairs if p.artifact != SOURCE_ARTIFACT]
        weak = self.strict_probes and bool(self.strict_problems)
        return bool(ran) and not self.failed and not self.missing_required and not weak

    def summary(self) -> str:
        n_fail = len(self.failed)
        parts = [f"{len(self.pairs) - n_fail}/{len(self.pairs)} pairs passed"]
        if n_fail:
            parts.append("FAILED: " + ", ".join(f"{p.artifact}@{p.runtime}" for p in self.failed))
        if self.missing_required:
            parts.append(
                "required runtime(s) unavailable: "
                + ", ".join(f"{r.name} ({r.reason})" for r in self.missing_required)
            )
        if not [p for p in self.pairs if p.artifact != SOURCE_ARTIFACT]:
            parts.append("no artifact was run by any available runtime: nothing is proven")
        if self.probe_warning:
            prefix = "FAILED (--strict-probes): " if self.strict_probes else "WARNING: "
            parts.append(prefix + self.probe_warning)
        if self.saturation_note:
            prefix = "FAILED (--strict-probes): " if self.strict_probes else "NOTE: "
            parts.append(prefix + self.saturation_note)
        return "; ".join(parts)

    def table(self) -> str:
        from edgetl.report import format_table

        return format_table(self)

    def raise_for_status(self) -> None:
        if not self.ok:
            raise ParityError(f"{self.bundle_dir}: {self.summary()}\n{self.table()}")

    def to_dict(self) -> dict:
        from edgetl.report import to_json_dict

        return to_json_dict(self)
