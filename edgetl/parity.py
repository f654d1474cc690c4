"""One comparator for every (reference, candidate) pair, the default tolerances, and layer
localization when a pair fails.

Everything here is judged on the classifier's output probabilities (softmax, so every element
is in 0..1 and absolute error is meaningful). Float artifacts are judged by element error;
quantized ones (TFLite dynamic-range and int8) by top-1 agreement on the probes whose reference
prediction is decisive, and, with labelled data, by the accuracy they lose against Keras.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import numpy as np

from edgetl.errors import UserError

PASS, FAIL = "pass", "fail"
TOP_K = 5
REL_FLOOR = 1e-6  # max_rel divides by max(|reference|, this): tiny probabilities don't explode


@dataclass(frozen=True)
class Tolerance:
    """What a candidate may differ from its reference by; None = that statistic is not judged."""

    max_abs: float | None = 1e-5
    p99_abs: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None  # fraction of decisive probes whose top-1 must agree
    # A probe is decisive when the reference's top-1 beats its runner-up by at least this much;
    # near-ties may flip under any rounding and say nothing about the artifact.
    top1_margin: float = 0.0
    max_accuracy_drop: float | None = None  # with --data: accuracy points (0..1) lost vs Keras
    name: str = "custom"  # the module constant it came from, for reports
    basis: str = ""  # why this value (measurement / source)

    def replace(self, **changes) -> Tolerance:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        parts = []
        if self.max_abs is not None:
            parts.append(f"abs<={self.max_abs:g}")
        if self.p99_abs is not None:
            parts.append(f"p99<={self.p99_abs:g}")
        if self.min_cosine is not None:
            parts.append(f"cos>={self.min_cosine:g}")
        if self.min_top1 is not None:
            margin = f" (margin {self.top1_margin:g})" if self.top1_margin else ""
            parts.append(f"top1>={self.min_top1:g}{margin}")
        if self.max_accuracy_drop is not None:
            parts.append(f"acc drop<={self.max_accuracy_drop:g}")
        return ", ".join(parts) or "none"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- default tolerances
# Measured on this machine (2 CPU cores) unless said otherwise; "probabilities" = softmax output.

# float32 on a CPU (onnxruntime, LiteRT/XNNPACK, TF.js cpu/wasm, the Keras re-run): different
# kernels and summation orders only. Measured max |error| vs Keras: ONNX 5.8e-6 and TFLite 3.3e-6
# (MobileNetV2 0.35/96 with data-fitted BN statistics, trained head); field notes: <= 1.2e-7 on
# random weights, TF.js <= 9e-8. Hugging Face Optimum's default atol is the same 1e-5.
FLOAT32_CPU = Tolerance(
    max_abs=1e-5,
    name="FLOAT32_CPU",
    basis="float32 CPU kernels: measured <= 5.8e-6 (ONNX), 3.3e-6 (TFLite); Optimum atol 1e-5",
)
# onnxruntime on CUDA/TensorRT with TF32 switched off (use_tf32=0 / NVIDIA_TF32_OVERRIDE=0):
# float32 GPU kernels (cuDNN algorithm choice, fused ops). Optimum uses 1e-4 for MobileNets.
# With TF32 left on, ~1e-3 differences are expected (field notes), which this refuses on purpose.
FLOAT32_GPU = Tolerance(
    max_abs=1e-4,
    name="FLOAT32_GPU",
    basis="float32 GPU (TF32 off); Optimum's MobileNet atol 1e-4; TF32 on gives ~1e-3",
)
# TFLite float16: weights stored as float16 (relative rounding 2^-11 ~ 4.9e-4), compute float32;
# the rounding compounds over ~50 layers. Field notes: 3e-5 on random weights (whose features
# vanish). Measured here with data-fitted BN statistics: 3.8e-3 (MobileNetV2 1.0/224) and 8.1e-3
# (0.35/96, trained head), top-1 unchanged, no single layer departing (localization trace grows
# smoothly), and 1.01e-2 on an untrained head over V2 0.35/96. 2e-3 failed all of them, so
# 2e-2 (2x the worst measured): still 5-20x below what one corrupted weight gives.
TFLITE_FLOAT16 = Tolerance(
    max_abs=2e-2,
    name="TFLITE_FLOAT16",
    basis="float16 weights: measured 3.8e-3 (V2 1.0/224), 8.1e-3..1.01e-2 (V2 0.35/96)",
)
# TF.js WebGL storing float32 textures (WEBGL_RENDER_FLOAT32_CAPABLE): tfjs' own tests use 1e-3.
WEBGL_FLOAT32 = Tolerance(
    max_abs=1e-3, name="WEBGL_FLOAT32", basis="tfjs test suite: 1e-3 on float32 backends"
)
# WebGL with float16 textures (many mobile GPUs): tfjs' own tests use 1e-1.
WEBGL_FLOAT16 = Tolerance(
    max_abs=1e-1, name="WEBGL_FLOAT16", basis="tfjs test suite: 1e-1 where WebGL is float16"
)
# Quantized TFLite: element error says little (measured max |error| 3e-2..5e-2 dynamic-range,
# 0.19 int8 on the trained 0.35/96 model, with identical predictions on confident probes), so
# they are judged by top-1 agreement on decisive probes and, with --data, by accuracy lost
# against Keras (field notes: int8 MobileNetV2 loses ~1 point of top-1 on ImageNet).
TFLITE_DYNAMIC = Tolerance(
    max_abs=None,
    min_top1=0.9,
    top1_margin=0.1,
    max_accuracy_drop=0.03,
    name="TFLITE_DYNAMIC",
    basis="dynamic-range int8 weights: judged by top-1 on decisive probes (margin >= 0.1)",
)
TFLITE_INT8 = Tolerance(
    max_abs=None,
    min_top1=0.9,
    top1_margin=0.2,
    max_accuracy_drop=0.05,
    name="TFLITE_INT8",
    basis="full int8: judged by top-1 on decisive probes (margin >= 0.2) and accuracy drop",
)


def default_tolerance(
    artifact_format: str,
    precision: str,
    runtime_name: str,
    *,
    gpu: bool = False,
    info: dict | None = None,
) -> Tolerance:
    """The tolerance for one (artifact, runtime) pair. `info` is what the runtime reported about
    the run (the browser's webgl_precision); WebGL is assumed float16 unless it says float32."""
    if precision == "dynamic":
        return TFLITE_DYNAMIC
    if precision == "int8":
        return TFLITE_INT8
    if precision == "float16":
        return TFLITE_FLOAT16
    if "webgl" in runtime_name:
        return WEBGL_FLOAT32 if (info or {}).get("webgl_precision") == "float32" else WEBGL_FLOAT16
    return FLOAT32_GPU if gpu else FLOAT32_CPU


# ---------------------------------------------------------------- overrides

_TOL_FIELDS = {"max_abs", "p99_abs", "min_cosine", "min_top1", "top1_margin", "max_accuracy_drop"}


@dataclass(frozen=True)
class ToleranceOverride:
    """`[SELECTOR:]FIELD=VALUE`; SELECTOR is an artifact id, a runtime name or artifact@runtime."""

    field: str
    value: float | None
    selector: str | None = None

    def applies(self, artifact_id: str, runtime_name: str) -> bool:
        s = self.selector
        return s is None or s in (artifact_id, runtime_name, f"{artifact_id}@{runtime_name}")


def parse_override(text: str) -> ToleranceOverride:
    selector, _, assignment = text.rpartition(":") if ":" in text else (None, "", text)
    key, eq, raw = assignment.partition("=")
    key = key.strip()
    if not eq or key not in _TOL_FIELDS:
        raise UserError(
            f"bad tolerance {text!r}: expected [ARTIFACT|RUNTIME|ARTIFACT@RUNTIME:]FIELD=VALUE "
            f"with FIELD one of {', '.join(sorted(_TOL_FIELDS))} (VALUE 'none' = not judged)"
        )
    raw = raw.strip()
    if raw.lower() in ("none", "off"):
        if key == "top1_margin":
            raise UserError("top1_margin needs a number")
        return ToleranceOverride(key, None, selector or None)
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"bad tolerance {text!r}: {raw!r} is not a number") from None
    if value < 0 or math.isnan(value):
        raise UserError(f"bad tolerance {text!r}: must be >= 0")
    return ToleranceOverride(key, value, selector or None)


def apply_overrides(
    tol: Tolerance, overrides: list[ToleranceOverride], artifact_id: str, runtime_name: str
) -> Tolerance:
    changes = {o.field: o.value for o in overrides if o.applies(artifact_id, runtime_name)}
    if not changes:
        return tol
    return tol.replace(**changes, name=f"{tol.name}+override")


# ---------------------------------------------------------------- statistics


@dataclass
class Stats:
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    cosine: float  # minimum over probes
    top1_agreement: float  # fraction of all probes
    top5_agreement: float  # candidate top-1 within the reference's top-k (k = min(5, classes))
    decisive_top1_agreement: float | None  # on probes with reference margin >= tol.top1_margin
    decisive: int
    count: int
    nan: int
    inf: int
    worst: tuple[int, int] | None  # (probe, class) of max_abs

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (_finite(v) if isinstance(v, float) else v) for k, v in d.items()}


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def compute_stats(reference: np.ndarray, candidate: np.ndarray, top1_margin: float = 0.0) -> Stats:
    """Statistics of candidate - reference; both (K, C). Non-finite candidate values are counted
    and excluded from the error statistics (they fail the pair on their own)."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    k, c = ref.shape
    nan = int(np.isnan(cand).sum())
    inf = int(np.isinf(cand).sum())
    finite = np.isfinite(cand) & np.isfinite(ref)
    err = np.where(finite, np.abs(cand - ref), 0.0)
    abs_vals = err[finite]
    if abs_vals.size:
        max_abs = float(abs_vals.max())
        mean_abs = float(abs_vals.mean())
        p99 = float(np.percentile(abs_vals, 99))
        rel = abs_vals / np.maximum(np.abs(ref[finite]), REL_FLOOR)
        max_rel = float(rel.max())
        worst_flat = int(np.argmax(err))
        worst = (worst_flat // c, worst_flat % c)
    else:
        max_abs = mean_abs = p99 = max_rel = math.inf
        worst = None
    safe = np.where(finite, cand, 0.0)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(safe, axis=1)
    cos = np.where(norms > 0, (ref * safe).sum(1) / np.where(norms > 0, norms, 1), 0.0)
    cos = np.where(finite.all(1), cos, -1.0)  # a probe with NaN/Inf is not similar
    ref_top1 = ref.argmax(1)
    cand_top1 = np.where(np.isnan(cand), -np.inf, cand).argmax(1)
    agree = (ref_top1 == cand_top1) & finite.all(1)
    kk = min(TOP_K, c)
    ref_topk = np.argsort(-ref, axis=1)[:, :kk]
    in_topk = np.array([cand_top1[i] in ref_topk[i] for i in range(k)]) & finite.all(1)
    if c > 1:
        srt = np.sort(ref, axis=1)
        margin = srt[:, -1] - srt[:, -2]
    else:
        margin = np.full(k, np.inf)
    decisive = margin >= top1_margin
    n_dec = int(decisive.sum())
    return Stats(
        max_abs=max_abs,
        mean_abs=mean_abs,
        p99_abs=p99,
        max_rel=max_rel,
        cosine=float(cos.min()) if k else math.nan,
        top1_agreement=float(agree.mean()) if k else math.nan,
        top5_agreement=float(in_topk.mean()) if k else math.nan,
        decisive_top1_agreement=float(agree[decisive].mean()) if n_dec else None,
        decisive=n_dec,
        count=k,
        nan=nan,
        inf=inf,
        worst=worst,
    )


# ---------------------------------------------------------------- pair results


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
        }


HIST_EDGES = np.arange(-10.0, 0.5, 0.5)  # log10 |error| from 1e-10 to 1


def error_histogram(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Counts of log10 |error| per half decade; exact zeros and non-finite kept apart."""
    err = np.abs(np.asarray(candidate, np.float64) - np.asarray(reference, np.float64)).ravel()
    finite = err[np.isfinite(err)]
    zeros = int((finite == 0).sum())
    logs = np.log10(finite[finite > 0]) if finite.size else np.array([])
    logs = np.clip(logs, HIST_EDGES[0], HIST_EDGES[-1] - 1e-9)
    counts, _ = np.histogram(logs, bins=HIST_EDGES)
    return {
        "edges_log10": HIST_EDGES.tolist(),
        "counts": counts.tolist(),
        "zeros": zeros,
        "nonfinite": int(err.size - finite.size),
    }


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance = FLOAT32_CPU,
    *,
    artifact: str = "",
    runtime: str = "",
    reference_name: str = "golden",
) -> PairResult:
    """Judge one candidate output against its reference; every failed check is a reason."""
    reference = np.asarray(reference)
    candidate = np.asarray(candidate)
    result = PairResult(artifact, runtime, reference_name, FAIL, [], tolerance)
    if reference.shape != candidate.shape or reference.ndim != 2:
        result.reasons.append(
            f"output shape {tuple(candidate.shape)} != reference {tuple(reference.shape)}"
        )
        return result
    if not np.isfinite(reference).all():
        result.reasons.append("the reference itself contains NaN/Inf")
        return result
    s = compute_stats(reference, candidate, tolerance.top1_margin)
    result.stats = s
    result.histogram = error_histogram(reference, candidate)
    reasons = result.reasons
    if s.nan or s.inf:
        reasons.append(f"{s.nan} NaN and {s.inf} Inf values in the output")
    t = tolerance
    if t.max_abs is not None and s.max_abs > t.max_abs:
        where = f" (probe {s.worst[0]}, class {s.worst[1]})" if s.worst else ""
        reasons.append(f"max |error| {s.max_abs:.3g} > {t.max_abs:g}{where}")
    if t.p99_abs is not None and s.p99_abs > t.p99_abs:
        reasons.append(f"p99 |error| {s.p99_abs:.3g} > {t.p99_abs:g}")
    if t.min_cosine is not None and s.cosine < t.min_cosine:
        reasons.append(f"min cosine {s.cosine:.6g} < {t.min_cosine:g}")
    if t.min_top1 is not None:
        if s.decisive_top1_agreement is not None:
            agree, n, what = s.decisive_top1_agreement, s.decisive, "decisive probes"
        else:  # every probe is a near-tie: judge on all of them rather than on none
            agree, n, what = s.top1_agreement, s.count, "probes (none decisive)"
        if agree < t.min_top1:
            reasons.append(
                f"top-1 agrees on {round(agree * n)}/{n} {what} ({agree:.0%} < {t.min_top1:.0%})"
            )
    result.status = FAIL if reasons else PASS
    return result


def judge_accuracy(result: PairResult, accuracy: float, reference_accuracy: float) -> None:
    """Record accuracy on labelled data beside the reference's, failing on too large a drop."""
    result.accuracy, result.reference_accuracy = accuracy, reference_accuracy
    limit = result.tolerance.max_accuracy_drop
    drop = reference_accuracy - accuracy
    if limit is not None and drop > limit + 1e-12:
        result.reasons.append(
            f"accuracy {accuracy:.1%} vs Keras {reference_accuracy:.1%}: drop {drop:.1%} > "
            f"{limit:.1%}"
        )
        result.status = FAIL


# ---------------------------------------------------------------- layer localization

# A layer is out of tolerance when max |candidate - keras| / max |keras| over its output exceeds
# this, per artifact precision. Errors accumulate with depth; the worst layer of clean artifacts
# (MobileNetV2 0.35/96, data-fitted BN, trained head) measured: ONNX 2.0e-5, TFLite float32
# 2.3e-5, float16 0.049, dynamic 0.21, int8 0.87 (relative RMS is no better: 0.75 for int8).
# Thresholds sit 2-40x above; for int8 only a gross fault stands out.
LOCALIZE_REL = {"float32": 1e-3, "float16": 0.25, "dynamic": 0.6, "int8": 2.0}
LOCALIZE_PROBES = 2
TFJS_LAYER_FALLBACK = "tfjs-node-cpu"  # layer outputs for tfjs_layers artifacts failing elsewhere  # intermediates are large (224 px: MBs per layer per probe)
_SCOPE_SUFFIX = re.compile(r"_\d+$")


def keras_layer_outputs(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output for `x`, nested sub-models flattened, in topological order."""
    out: dict[str, np.ndarray] = {}
    _collect_layer_outputs(model, np.asarray(x, np.float32), out)
    return out


def _collect_layer_outputs(model, x: np.ndarray, out: dict[str, np.ndarray]) -> None:
    import keras

    layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    # Keras keys a functional model's own nodes as f"{id(op)}_ib-{index}" (a layer shared with
    # another model has further inbound nodes that belong to that model).
    keys = getattr(model, "_nodes", None)
    taps, plan = [], []
    for layer in layers:
        own = [
            n
            for i, n in enumerate(layer._inbound_nodes)
            if keys is None or f"{id(layer)}_ib-{i}" in keys
        ]
        if not own:
            continue
        node = own[0]
        nested = isinstance(layer, keras.Model)
        plan.append((layer, nested, len(taps)))
        taps.append(node.output_tensors[0])
        if nested:
            taps.append(node.input_tensors[0])
    probe = keras.Model(model.inputs[0], taps)
    values = probe(x, training=False)
    values = [np.asarray(v) for v in (values if isinstance(values, list | tuple) else [values])]
    for layer, nested, i in plan:
        if nested:
            _collect_layer_outputs(layer, values[i + 1], out)
        out.setdefault(layer.name, values[i])


def layer_of_name(name: str, order: dict[str, int]) -> str | None:
    """The Keras layer a converter's tensor/node name belongs to: for each ';'-joined part, the
    innermost path segment naming a layer (Keras 3 scopes add "_1"); across parts (fused ops),
    the latest layer in Keras order, since a fused op outputs its last layer's value."""
    best = None
    for part in name.split(";"):
        segs = [s for s in part.split(":")[0].split("/") if s]
        for seg in reversed(segs):
            stripped = _SCOPE_SUFFIX.sub("", seg)
            hit = stripped if stripped in order else seg if seg in order else None
            if hit is not None:
                if best is None or order[hit] > order[best]:
                    best = hit
                break
    return best


def _alignments(candidate: np.ndarray, reference: np.ndarray) -> list[np.ndarray]:
    """The candidate's tensor in the reference's layout: as is, NCHW -> NHWC, or with unit
    dimensions dropped. Several when ambiguous (H == W == C): the caller takes the closest."""
    out = []
    if candidate.shape == reference.shape:
        out.append(candidate)
    if candidate.ndim == 4 and candidate.transpose(0, 2, 3, 1).shape == reference.shape:
        out.append(candidate.transpose(0, 2, 3, 1))
    squeeze = [d for d in candidate.shape if d != 1] == [d for d in reference.shape if d != 1]
    if not out and squeeze and candidate.shape[:1] == reference.shape[:1]:
        out.append(candidate.reshape(reference.shape))
    return out


def _normalized_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    diff = np.abs(candidate.astype(np.float64) - reference)
    if not np.isfinite(diff).all():
        return math.inf
    return float(diff.max()) / max(float(np.abs(reference).max()), 1e-12)


def first_divergence(
    keras_outputs: dict[str, np.ndarray],
    candidate_outputs: dict[str, np.ndarray],
    threshold: float,
    source: str,
) -> Localization:
    """Walk the layers in Keras order; name the first whose normalized error > threshold."""
    trace: list[tuple[str, float]] = []
    for name, ref in keras_outputs.items():
        cand = candidate_outputs.get(name)
        if cand is None:
            continue
        views = _alignments(np.asarray(cand, np.float32), ref)
        if not views:
            continue
        err = min(_normalized_error(v, ref) for v in views)
        trace.append((name, err))
        if err > threshold:
            return Localization(
                name,
                f"max |error| / max |keras| = {err:.3g} > {threshold:g} ({source}, "
                f"{len(trace)} layers compared)",
                len(trace),
                trace,
            )
    if not trace:
        return Localization(None, f"no {source} tensor could be matched to a Keras layer")
    worst = max(trace, key=lambda t: t[1])
    return Localization(
        None,
        f"no single layer departs: all {len(trace)} matched {source} are within {threshold:g} "
        f"of Keras (largest {worst[1]:.3g} at {worst[0]}; an error that grows across layers, "
        "e.g. rounding, or one between matched layers)",
        len(trace),
        trace,
    )


def onnx_layer_outputs(
    path: str, x: np.ndarray, order: dict[str, int], runtime=None, layout: str = "NHWC"
) -> dict[str, np.ndarray]:
    """Run the ONNX model with each Keras layer's last tensor added as a graph output."""
    import onnx

    from edgetl.runtimes.onnxruntime_runtime import RUNTIMES, run_session, to_layout

    model = onnx.load(path)
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
    runtime = runtime or RUNTIMES.get("onnxruntime-cpu")
    sess = runtime.session(model.SerializeToString())
    values = run_session(sess, to_layout(x, layout), output_names=list(last.values()))
    return {layer: values[t] for layer, t in last.items()}


def tflite_layer_outputs(path: str, x: np.ndarray, order: dict[str, int]) -> dict[str, np.ndarray]:
    """Run LiteRT keeping every intermediate; each Keras layer's last op output, dequantized."""
    import warnings

    from edgetl.runtimes.litert_runtime import dequantize, invoke, make_interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": it is
        interp = make_interpreter(path, preserve_all_tensors=True)
    invoke(interp, np.asarray(x, np.float32))
    details = {d["index"]: d for d in interp.get_tensor_details()}
    last: dict[str, int] = {}
    for op in interp._get_ops_details():
        for idx in op["outputs"]:
            d = details.get(int(idx))
            layer = layer_of_name(d["name"], order) if d else None
            if layer is not None:
                last[layer] = int(idx)
    if order:  # the model's output is the last layer's (a Dense's softmax is an unnamed op)
        last[max(order, key=order.__getitem__)] = int(interp.get_output_details()[0]["index"])
    return {layer: dequantize(interp.get_tensor(i), details[i]) for layer, i in last.items()}


def localize(
    bundle_dir,
    record,
    runtime,
    inputs: np.ndarray,
    keras_model=None,
) -> Localization:
    """Name the first Keras layer whose output this artifact gets wrong (best effort).

    `record` is the ArtifactRecord, `runtime` the Runtime that failed (its own intermediate
    outputs are used where it can give them; ONNX and TFLite intermediates run on
    onnxruntime-cpu / LiteRT when that runtime has no such hook)."""
    from pathlib import Path

    from edgetl.runtimes.base import RUNTIMES, Artifact

    x = np.asarray(inputs[:LOCALIZE_PROBES], np.float32)
    threshold = LOCALIZE_REL.get(record.precision, LOCALIZE_REL["float32"])
    artifact = Artifact(record, Path(bundle_dir))
    if keras_model is None:
        if "keras" not in RUNTIMES or RUNTIMES.get("keras").unavailable_reason():
            return Localization(None, "Keras (TensorFlow) is not available to compute layers")
        from edgetl.runtimes.keras_runtime import source_model_path

        try:
            keras_model = RUNTIMES.get("keras").load(source_model_path(bundle_dir))
        except Exception as e:
            return Localization(None, f"cannot load the source model: {e}")
    try:
        ref = keras_layer_outputs(keras_model, x)
    except Exception as e:
        return Localization(None, f"Keras layer outputs failed: {type(e).__name__}: {e}")
    order = {name: i for i, name in enumerate(ref)}
    layer_runtime = runtime if hasattr(runtime, "layer_outputs") else None
    if layer_runtime is None and record.format == "tfjs_layers":
        # The browser gives no intermediates: TF.js in Node on the same artifact tells whether
        # the artifact itself departs (and where); if it does not, the browser backend does.
        fallback = RUNTIMES.get(TFJS_LAYER_FALLBACK) if TFJS_LAYER_FALLBACK in RUNTIMES else None
        if fallback is not None and fallback.unavailable_reason() is None:
            layer_runtime = fallback
    try:
        if layer_runtime is not None:  # TF.js runtimes (node_runner --layers)
            cand = layer_runtime.layer_outputs(artifact, x, list(ref))
            source = f"{layer_runtime.name} layer outputs"
        elif record.format == "onnx":
            ort_rt = runtime if getattr(runtime, "session", None) else None
            cand = onnx_layer_outputs(str(artifact.path), x, order, ort_rt, record.layout)
            source = "ONNX node outputs"
        elif record.format == "tflite":
            cand = tflite_layer_outputs(str(artifact.path), x, order)
            source = "TFLite tensors"
        else:
            return Localization(
                None, f"{runtime.name} offers no per-layer outputs for {record.format} artifacts"
            )
    except Exception as e:
        return Localization(None, f"intermediate outputs failed: {type(e).__name__}: {e}")
    return first_divergence(ref, cand, threshold, source)
