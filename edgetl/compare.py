"""The one comparator (Polygraphy-style): statistics of candidate - reference on the probes,
judged against a Tolerance. Every failed check becomes a reason; nothing here only warns.

Everything is judged on the classifier's output probabilities (softmax, so every element is in
0..1 and absolute error is meaningful). Float artifacts are judged by element error; quantized
ones (TFLite dynamic-range and int8) by top-1 agreement on the probes whose reference prediction
is decisive, and, with labelled data, by the accuracy they lose against Keras.

Float artifacts are also judged in log-probability space: |log max(p', floor) - log max(p, floor)|
per class. Where softmax saturates (a confident model: top-1 at 1 - 1e-12) a broken layer moves
the probabilities by 1e-12, far under any element limit, but it moves the small probabilities'
logarithms (the logits, up to a shared shift) as much as on any other probe. The floor keeps
values that float32 cannot represent (denormals, flushed to zero by some kernels) out of it;
clipping at a floor never enlarges a difference.
"""

from __future__ import annotations

import math

import numpy as np

from edgetl.results import FAIL, PASS, PairResult, Stats
from edgetl.tolerances import FLOAT32_CPU, LOG_FLOOR, Tolerance

TOP_K = 5


def log_probs(p: np.ndarray, floor: float) -> np.ndarray:
    """log max(p, floor) in float64: the log-space view of probabilities (see module doc)."""
    return np.log(np.maximum(np.asarray(p, np.float64), floor))


def max_log_error(reference: np.ndarray, candidate: np.ndarray, floor: float) -> float:
    """max |log max(candidate, floor) - log max(reference, floor)| over finite elements."""
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    finite = np.isfinite(ref) & np.isfinite(cand)
    if not finite.any():
        return math.inf
    return float(np.abs(log_probs(cand[finite], floor) - log_probs(ref[finite], floor)).max())


def compute_stats(
    reference: np.ndarray,
    candidate: np.ndarray,
    top1_margin: float = 0.0,
    log_floor: float = LOG_FLOOR,
) -> Stats:
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
        worst_flat = int(np.argmax(err))
        worst = (worst_flat // c, worst_flat % c)
    else:
        max_abs = mean_abs = p99 = math.inf
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
    log_err = np.where(finite, np.abs(log_probs(safe, log_floor) - log_probs(ref, log_floor)), 0.0)
    if abs_vals.size:
        max_log = float(log_err.max())
        worst_log_flat = int(np.argmax(log_err))
        worst_log = (worst_log_flat // c, worst_log_flat % c)
    else:
        max_log, worst_log = math.inf, None
    return Stats(
        max_abs=max_abs,
        mean_abs=mean_abs,
        p99_abs=p99,
        cosine=float(cos.min()) if k else math.nan,
        top1_agreement=float(agree.mean()) if k else math.nan,
        top5_agreement=float(in_topk.mean()) if k else math.nan,
        decisive_top1_agreement=float(agree[decisive].mean()) if n_dec else None,
        decisive=n_dec,
        count=k,
        nan=nan,
        inf=inf,
        worst=worst,
        max_log=max_log,
        worst_log=worst_log,
        log_floor=log_floor,
    )


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
    s = compute_stats(reference, candidate, tolerance.top1_margin, tolerance.log_floor)
    result.stats = s
    result.histogram = error_histogram(reference, candidate)
    reasons = result.reasons
    if s.nan or s.inf:
        reasons.append(f"{s.nan} NaN and {s.inf} Inf values in the output")
    t = tolerance
    if t.max_abs is not None and s.max_abs > t.max_abs:
        where = f" (probe {s.worst[0]}, class {s.worst[1]})" if s.worst else ""
        reasons.append(f"max |error| {s.max_abs:.3g} > {t.max_abs:g}{where}")
    if t.max_log is not None and s.max_log > t.max_log:
        where = f"probe {s.worst_log[0]}, class {s.worst_log[1]}; " if s.worst_log else ""
        reasons.append(
            f"max |error of log p| {s.max_log:.3g} > {t.max_log:g} ({where}log p floored at "
            f"{t.log_floor:g})"
        )
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
