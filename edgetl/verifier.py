"""`edgetl verify`: prove every artifact of a bundle agrees with the model it came from.

Three steps, each its own function:

1. run:      plan_jobs gives every available runtime the artifacts it accepts and the rows of
             the batch it runs (probes, then --data images or its stated sample); run_jobs
             opens each artifact (Runtime.open -> Session.infer: outputs and what ran), runtimes
             overlapping. A RunContext holds what sessions share (one Chromium for the three
             browser runtimes) and is closed when the run ends. The Keras runtime (flag
             `reference`) opens the bundle's source model.
2. judge:    every (artifact, runtime) pair goes through the one comparator (edgetl.compare)
             against the golden outputs recorded at export, with the tolerance that
             edgetl.tolerances gives the pair (scaled by the bundle's own float32 noise floor).
3. localize: a failing pair is traced layer by layer to the first Keras layer it gets wrong
             (edgetl.localize, through the layer outputs of a runtime's session).

Before any of it: the manifest, and the sha256 of every file (a tampered file is refused before
anything runs). The Keras source model is re-run too, where TensorFlow is installed, and checked
against the golden outputs. Runtimes that cannot run here are listed with their reason and never
count as a pass; --require turns a missing one into a failure. Exit 0 only if every pair that ran
passed (and, under --strict-probes, the probes can tell a broken artifact from a good one).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.compare import compare, judge_accuracy
from edgetl.errors import UserError
from edgetl.localize import localize
from edgetl.manifest import Manifest, ProbeSet, check_integrity, read_probes
from edgetl.results import (
    ERROR,
    FAIL,
    SOURCE_ARTIFACT,
    PairResult,
    RuntimeStatus,
    VerifyResult,
)
from edgetl.tolerances import (
    ToleranceOverride,
    apply_overrides,
    default_tolerance,
    parse_override,
    reference_tolerance,
)

KERAS = "keras"
# --data: every image goes through the fast runtimes (onnxruntime, LiteRT, Keras); a slow one
# sees the stratified sample its Runtime.data_sample says, and the report says how many each
# saw. Measured before (MobileNetV2 1.0/160, 1,000 images, 2 cores): onnxruntime 18-30 s,
# LiteRT 52-103 s for 4 artifacts, Keras 60-137 s, TF.js wasm 64 s in Chromium and 137 s in
# Node, TF.js cpu unfinished after 15 min (and 13 GB peak RSS).
DATA_LIMIT = 1000
# Runtimes run concurrently (measured: MobileNetV2 1.0/224, every format, all CPU runtimes
# incl. Chromium: 64 s one after another on 2 shared cores).
PARALLEL_RUNTIMES = 3


def _load_runtime_modules() -> dict[str, str]:
    """Import every runtime module; a missing or broken one is reported, not fatal."""
    from edgetl.runtimes.base import RUNTIME_MODULES

    broken = {}
    for mod in RUNTIME_MODULES:
        try:
            importlib.import_module(mod)
        except Exception as e:  # e.g. a module not written yet, or its package missing
            broken[mod] = f"{type(e).__name__}: {e}"
    return broken


def _split(values: Iterable[str] | str | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def load_labelled_data(data_dir: Path, manifest: Manifest, limit: int = DATA_LIMIT):
    """(images, true labels as model indices) from a class-per-folder directory; folders are
    matched to the bundle's labels by name, and a folder naming no label is refused."""
    from edgetl.data import sample_images

    images, labels, _ = sample_images(Path(data_dir), manifest.input, manifest.labels, limit)
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    if not keep:
        raise UserError(
            f"--data {data_dir}: no class folder matches a label of the bundle "
            f"({', '.join(manifest.labels)})"
        )
    if len(keep) < len(labels):
        raise UserError(
            f"--data {data_dir}: {len(labels) - len(keep)} image(s) are in folders that name no "
            f"label of the bundle ({', '.join(manifest.labels)})"
        )
    return images, np.asarray([labels[i] for i in keep], dtype=np.int64)


def stratified_subset(labels: np.ndarray, limit: int) -> np.ndarray:
    """Sorted indices of at most `limit` items, round-robin across classes."""
    from edgetl.data import interleave_by_class

    return np.sort(np.asarray(interleave_by_class(labels, limit), dtype=np.int64))


# ---------------------------------------------------------------- the plan


@dataclass
class Job:
    """One runtime, the artifacts it accepts, and which rows of the batch it runs."""

    status: RuntimeStatus
    runtime: object  # edgetl.runtimes.base.Runtime
    artifacts: list  # [Artifact]
    rows: np.ndarray  # indices into the input batch (probes first, then --data images)
    outputs: dict = field(default_factory=dict)  # artifact id -> {name: array} | Exception
    info: dict = field(default_factory=dict)  # artifact id -> what the runtime reported


@dataclass
class Batch:
    """The inputs of a run: the golden probes, then --data images with their true labels."""

    probes: ProbeSet
    inputs: np.ndarray
    data_labels: np.ndarray | None = None

    @property
    def k(self) -> int:
        return len(self.probes.inputs)


def make_batch(manifest: Manifest, probes: ProbeSet, data: Path | None, say) -> Batch:
    if data is None:
        return Batch(probes, probes.inputs)
    images, labels = load_labelled_data(Path(data), manifest)
    say(f"--data: {len(images)} labelled images")
    inputs = np.concatenate([probes.inputs, images]).astype(np.float32)
    return Batch(probes, inputs, labels)


def plan_jobs(names, required, records, manifest: Manifest, root: Path, batch: Batch) -> list[Job]:
    from edgetl.runtimes.base import RUNTIMES, Artifact
    from edgetl.runtimes.keras_runtime import source_artifact

    jobs = []
    all_rows = np.arange(len(batch.inputs))
    for name in names:
        rt = RUNTIMES.get(name)
        if rt.reference:  # the source model, re-run against the golden outputs
            arts = [source_artifact(root, (manifest.source_model or {}).get("file", ""))]
        else:
            arts = [a for a in (Artifact(r, root) for r in records) if rt.accepts(a)]
        status = RuntimeStatus(
            name, False, rt.unavailable_reason(), gpu=rt.gpu, required=name in required
        )
        rows = all_rows
        if batch.data_labels is not None and rt.data_sample is not None:
            sub = stratified_subset(batch.data_labels, rt.data_sample)
            rows = np.concatenate([np.arange(batch.k), batch.k + sub])
        status.images = int(len(rows) - batch.k) if batch.data_labels is not None else None
        jobs.append(Job(status, rt, arts, rows))
    return jobs


# ---------------------------------------------------------------- 1. run


def run_jobs(jobs: list[Job], batch: Batch, context, say) -> None:
    """Fill each available job's outputs and info (Runtime.run_many: a session per artifact, or
    one Node process for all). Runtimes are
    independent processes or thread-safe libraries, so they overlap; same_thread runtimes
    (Playwright) stay on this thread. `context` holds what the sessions share (Chromium)."""

    def execute(job: Job) -> None:
        t = time.perf_counter()
        results = job.runtime.run_many(job.artifacts, batch.inputs[job.rows], context)
        for a in job.artifacts:
            got = results.get(a.id, RuntimeError("the runtime returned nothing for it"))
            if isinstance(got, Exception):  # reported per artifact by judge
                job.outputs[a.id] = got
            else:
                job.outputs[a.id], job.info[a.id] = got
        job.status.seconds = time.perf_counter() - t
        if job.outputs:
            say(f"{job.status.name}: {len(job.outputs)} model(s) in {job.status.seconds:.1f} s")

    runnable = [j for j in jobs if j.status.reason is None]
    here = [j for j in runnable if j.runtime.same_thread]
    pooled = [j for j in runnable if not j.runtime.same_thread]
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNTIMES) as pool:
        futures = [pool.submit(execute, j) for j in pooled]
        for j in here:
            execute(j)
        for f in futures:
            f.result()


# ---------------------------------------------------------------- 2. judge


def _accuracy(y: np.ndarray, batch: Batch, rows: np.ndarray) -> float:
    data_rows = rows[rows >= batch.k]
    return float((y[rows >= batch.k].argmax(1) == batch.data_labels[data_rows - batch.k]).mean())


def judge_jobs(
    jobs: list[Job], batch: Batch, manifest: Manifest, overrides: list[ToleranceOverride]
) -> tuple[list[PairResult], np.ndarray | None]:
    """Every pair against the golden outputs; returns the pairs and Keras' outputs (if run)."""
    from edgetl.runtimes.base import RuntimeUnavailable

    k, noise = batch.k, manifest.probes.get("noise")
    pairs: list[PairResult] = []
    keras_out: np.ndarray | None = None  # Keras' outputs on every row (the accuracy reference)
    for job in sorted(jobs, key=lambda j: not j.runtime.reference):
        st = job.status
        if st.reason is not None:
            continue
        unavailable = [o for o in job.outputs.values() if isinstance(o, RuntimeUnavailable)]
        if unavailable and len(unavailable) == len(job.outputs):
            st.reason = str(unavailable[0])
            continue
        st.available = True
        if job.runtime.reference:
            pr, keras_out = _judge_reference(job, batch, noise, overrides)
            pairs.append(pr)
            continue
        for a in job.artifacts:
            out = job.outputs.get(a.id, RuntimeError("the runtime returned nothing for it"))
            st.artifacts.append(a.id)
            info = dict(job.info.get(a.id, {}))
            tol = default_tolerance(a.record, gpu=job.runtime.gpu, info=info, noise=noise)
            tol = apply_overrides(tol, overrides, a.id, st.name)
            share = st.seconds / len(job.artifacts)  # the artifact's share of its runtime's time
            if isinstance(out, Exception):
                pairs.append(_error_pair(a.id, st.name, out, tol, info, share))
                continue
            y = np.asarray(out.get("probabilities", next(iter(out.values()))), np.float32)
            pr = compare(batch.probes.expected, y[:k], tol, artifact=a.id, runtime=st.name)
            pr.info, pr.seconds = info, share
            if batch.data_labels is not None and len(y) == len(job.rows):
                pr.images = int((job.rows >= k).sum())
                acc = _accuracy(y, batch, job.rows)
                if keras_out is None:
                    pr.accuracy = acc
                else:
                    judge_accuracy(pr, acc, _accuracy(keras_out[job.rows], batch, job.rows))
            pairs.append(pr)
    return pairs, keras_out


def _judge_reference(job: Job, batch: Batch, noise, overrides) -> tuple[PairResult, np.ndarray]:
    """The source model re-run against the golden outputs; its outputs (None if it failed) are
    the accuracy reference of every other pair."""
    st, out = job.status, job.outputs[SOURCE_ARTIFACT]
    tol = apply_overrides(reference_tolerance(noise), overrides, SOURCE_ARTIFACT, st.name)
    if isinstance(out, Exception):
        return _error_pair(SOURCE_ARTIFACT, st.name, out, reference_tolerance(noise)), None
    keras_out = out["probabilities"]
    st.artifacts = [SOURCE_ARTIFACT]
    pr = compare(
        batch.probes.expected, keras_out[: batch.k], tol, artifact=SOURCE_ARTIFACT, runtime=st.name
    )
    if not pr.passed:
        pr.reasons.insert(0, "the source model no longer reproduces the golden probes")
    pr.seconds = st.seconds
    return pr, keras_out


def _error_pair(artifact, runtime, error, tol, info=None, seconds=None) -> PairResult:
    reason = f"{type(error).__name__}: {error}"
    return PairResult(
        artifact, runtime, "golden", ERROR, [reason], tol, info=info or {}, seconds=seconds
    )


# ---------------------------------------------------------------- 3. localize


def localize_failed_pairs(pairs: list[PairResult], jobs: list[Job], root: Path, batch: Batch, say):
    by_runtime = {j.status.name: j for j in jobs}
    for pr in pairs:
        if pr.status != FAIL or pr.artifact == SOURCE_ARTIFACT:
            continue
        job = by_runtime[pr.runtime]
        art = next(a for a in job.artifacts if a.id == pr.artifact)
        say(f"{pr.artifact}@{pr.runtime} failed; localizing ...")
        pr.localization = localize(root, art.record, job.runtime, batch.probes.inputs)


# ---------------------------------------------------------------- verify


def runtime_names(runtimes, require) -> tuple[list[str], list[str], dict[str, str]]:
    """(runtimes to run, required ones, runtime modules that failed to import). Every asked-for
    name must be registered; a broken module is reported only when no names were asked for."""
    from edgetl.runtimes.base import RUNTIMES

    broken = _load_runtime_modules()
    if runtimes is not None:  # asked-for names must exist; a broken module is then no excuse
        broken = {}
    names = _split(runtimes) or RUNTIMES.names()
    required = _split(require) or []
    for n in [*names, *required]:
        RUNTIMES.check(n)
    return list(dict.fromkeys([*names, *required])), required, broken


def _data_info(batch: Batch, data, keras_out: np.ndarray | None) -> dict | None:
    """What --data saw: folder, image count and Keras' accuracy on every image (if it ran)."""
    if batch.data_labels is None:
        return None
    info = {"dir": str(data), "images": len(batch.data_labels)}
    if keras_out is not None:
        info["keras_accuracy"] = _accuracy(keras_out, batch, np.arange(len(batch.inputs)))
    return info


def verify(
    bundle_dir: str | Path,
    runtimes: Sequence[str] | str | None = None,
    data: str | Path | None = None,
    *,
    artifacts: Sequence[str] | str | None = None,
    require: Sequence[str] | str | None = None,
    tolerances: Sequence[str | ToleranceOverride] | None = None,
    localize_failures: bool = True,
    strict_probes: bool = False,
    log: Callable[[str], None] | None = None,
) -> VerifyResult:
    """Verify a bundle; returns the result (call .raise_for_status() or check .ok).

    runtimes: names (default: every registered one, "keras" as the reference); artifacts: ids
    (default all); require: runtimes that must be available; tolerances: overrides such as
    "max_abs=1e-4" or "tflite_float16:max_abs=1e-2" (selector: artifact, runtime or a@r);
    strict_probes: fail when the bundle's probes cannot tell a broken artifact from a good one."""
    from edgetl.runtimes.base import RunContext

    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    root = Path(bundle_dir)
    manifest = Manifest.load(root)
    wanted = _split(artifacts)
    for a in wanted or []:
        manifest.artifact(a)  # BundleError listing the bundle's ids
    records = [a for a in manifest.artifacts if wanted is None or a.id in wanted]
    check_integrity(root, manifest, [a.id for a in records])
    probes = read_probes(root, manifest)
    overrides = [
        o if isinstance(o, ToleranceOverride) else parse_override(o) for o in tolerances or []
    ]
    names, required, broken = runtime_names(runtimes, require)
    batch = make_batch(manifest, probes, Path(data) if data is not None else None, say)
    jobs = plan_jobs(names, required, records, manifest, root, batch)
    with RunContext() as context:  # the run's shared resources (Chromium), closed at the end
        run_jobs(jobs, batch, context, say)
    pairs, keras_out = judge_jobs(jobs, batch, manifest, overrides)
    if localize_failures:
        localize_failed_pairs(pairs, jobs, root, batch, say)

    statuses = [j.status for j in jobs]
    for mod, why in broken.items():
        short = mod.rsplit(".", 1)[-1]
        statuses.append(RuntimeStatus(short, False, f"module {mod} failed to import ({why})"))
    return VerifyResult(
        root,
        manifest.name,
        pairs,
        statuses,
        batch.k,
        _data_info(batch, data, keras_out),
        time.perf_counter() - t0,
        probe_coverage=manifest.probes.get("coverage"),
        strict_probes=strict_probes,
    )


# ---------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, metavar="BUNDLE_DIR", help="a bundle made by edgetl export")
    p.add_argument(
        "--runtimes",
        nargs="+",
        metavar="RUNTIME",
        help="runtimes to use (space or comma separated; default: all; 'keras' is the "
        "reference re-run)",
    )
    p.add_argument(
        "--artifacts",
        nargs="+",
        metavar="ID",
        help="artifact ids to check (default: all in the manifest)",
    )
    p.add_argument(
        "--data",
        type=Path,
        metavar="DATA_DIR",
        help="labelled image folder (one sub-folder per class): report each artifact's "
        "accuracy beside Keras'; quantized artifacts fail on too large a drop",
    )
    p.add_argument(
        "--require",
        nargs="+",
        metavar="RUNTIME",
        default=[],
        help="runtimes that must be available: missing one is a failure",
    )
    p.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="[SEL:]FIELD=VALUE",
        help="override a tolerance, e.g. max_abs=1e-4 or tflite_float16:max_abs=1e-2 "
        "(SEL: artifact id, runtime or artifact@runtime; repeatable)",
    )
    p.add_argument(
        "--no-localize", action="store_true", help="do not look for the first failing layer"
    )
    p.add_argument(
        "--strict-probes",
        action="store_true",
        help="fail when the bundle's probes cannot tell a broken artifact from a good one "
        "(outputs that do not depend on the input, or most embedding features never switched "
        "on); without it this is a warning",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the full result as JSON")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML (one test per pair)")
    p.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="write a self-contained HTML report with error histograms",
    )


def check_output_files(args: argparse.Namespace) -> None:
    """--json / --junit / --html: refuse, before any work, a path that cannot be written."""
    seen: dict[Path, str] = {}
    for flag in ("json", "junit", "html"):
        path = getattr(args, flag, None)
        if path is None:
            continue
        path = Path(path)
        where = f"--{flag} {path}"
        if path.is_dir():
            raise UserError(
                f"{where} is a folder; give a file name, e.g. {path / ('report.' + flag)}"
            )
        parent = path.parent
        if not parent.is_dir():
            raise UserError(
                f"{where}: the folder {parent} does not exist; create it first or choose "
                "another path"
            )
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise UserError(f"{where}: {parent} is not writable")
        key = Path(os.path.abspath(path))
        if key in seen:
            raise UserError(f"{where}: the same file as --{seen[key]}")
        seen[key] = flag


def check_source_model(bundle: Path, runtimes) -> None:
    """Load the bundle's Keras source model before the run (it is cached for verify): a model
    that Keras refuses (a Lambda layer, which would run code from the bundle; a corrupt file)
    is one clear message instead of a failure deep in the comparison."""
    from edgetl.manifest import BundleError

    names = _split(runtimes)
    if names is not None and KERAS not in names:
        return
    try:
        from edgetl.runtimes.base import RUNTIMES, RuntimeUnavailable
        from edgetl.runtimes.keras_runtime import source_model_path

        rt = RUNTIMES.get(KERAS)
    except Exception:  # no Keras runtime here: verify reports it
        return
    if rt.unavailable_reason() is not None:
        return
    try:
        rt.load(source_model_path(bundle))
    except (BundleError, RuntimeUnavailable):
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        why = (
            "it contains a Lambda layer (arbitrary Python code), which edgetl never runs"
            if "lambda" in str(e).lower()
            else f"{type(e).__name__}: {first}"
        )
        raise BundleError(f"{bundle}: the bundle's source model is refused: {why}") from None


def run(args: argparse.Namespace) -> int:
    from edgetl import report
    from edgetl.manifest import Manifest

    if not args.bundle.is_dir():
        raise UserError(f"{args.bundle}: no such bundle directory")
    check_output_files(args)
    if args.data is not None and not Path(args.data).is_dir():
        raise UserError(f"--data {args.data}: not a folder")
    manifest = Manifest.load(args.bundle)  # refuses paths that leave the bundle
    ids = _split(args.artifacts)
    for a in ids or []:
        manifest.artifact(a)  # BundleError listing the bundle's ids
    check_integrity(args.bundle, manifest, ids)
    check_source_model(args.bundle, args.runtimes)
    result = verify(
        args.bundle,
        runtimes=args.runtimes,
        data=args.data,
        artifacts=args.artifacts,
        require=args.require,
        tolerances=args.tolerance,
        localize_failures=not args.no_localize,
        strict_probes=args.strict_probes,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(report.format_table(result))
    if args.json:
        report.write_json(result, args.json)
    if args.junit:
        report.write_junit(result, args.junit)
    if args.html:
        report.write_html(result, args.html)
    print(("OK: " if result.ok else "FAIL: ") + result.summary())
    return 0 if result.ok else 1
