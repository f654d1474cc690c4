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
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.anywhere import ERROR_HINT
from edgetl.compare import compare, judge_accuracy
from edgetl.errors import UserError
from edgetl.localize import localize
from edgetl.manifest import Manifest, ProbeSet, check_integrity, read_probes
from edgetl.probes import with_saturation
from edgetl.results import (
    ERROR,
    FAIL,
    SOURCE_ARTIFACT,
    PairResult,
    RuntimeStatus,
    VerifyResult,
)
from edgetl.runtimes.base import RunContext
from edgetl.tolerances import (
    ToleranceOverride,
    apply_overrides,
    default_tolerance,
    parse_override,
    reference_tolerance,
)

KERAS = "keras"
# --data: every image of the folder (or a stratified --data-limit sample) goes through the
# fast runtimes (onnxruntime, LiteRT, Keras), decoded and run DATA_CHUNK images at a time with
# each artifact's session kept open, so memory does not grow with the folder; only each
# image's predicted class is kept. A slow runtime sees the stratified sample its
# Runtime.data_sample says, and the report says how many each saw. Measured before
# (MobileNetV2 1.0/160, 1,000 images, 2 cores): onnxruntime 18-30 s, LiteRT 52-103 s for 4
# artifacts, Keras 60-137 s, TF.js wasm 64 s in Chromium and 137 s in Node, TF.js cpu
# unfinished after 15 min (and 13 GB peak RSS with every image decoded at once).
DATA_CHUNK = 128  # images decoded and run at once: 77 MB of float32 at 224 px
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


@dataclass
class LabelledData:
    """--data: the labelled image files (not decoded) and their true labels as model
    indices; images() decodes them DATA_CHUNK at a time, in the model's input range."""

    files: list[Path]
    labels: np.ndarray
    contract: object  # edgetl.contract.InputContract

    def __len__(self) -> int:
        return len(self.files)

    def images(self, rows: np.ndarray | None = None, chunk: int | None = None) -> Iterator:
        """(data rows, float32 batch) in chunks of `chunk` (default DATA_CHUNK); `rows`: a
        subset (default every image)."""
        from edgetl.data import images_in_range
        from edgetl.pipeline import ImageFiles

        chunk = chunk or DATA_CHUNK
        rows = np.arange(len(self.files)) if rows is None else np.asarray(rows)
        c = self.contract
        batches = ImageFiles(self.files, c.height, c.width).batches(chunk, order=rows)
        for start, batch in zip(range(0, len(rows), chunk), batches, strict=True):
            yield rows[start : start + chunk], images_in_range(batch, c)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """The images `rows` at once (a runtime's small stated sample)."""
        c = self.contract
        parts = [x for _, x in self.images(rows)]
        return (
            np.concatenate(parts)
            if parts
            else np.zeros((0, c.height, c.width, c.channels), np.float32)
        )


def load_labelled_data(
    data_dir: Path, manifest: Manifest, limit: int | None = None
) -> LabelledData:
    """The labelled images of a class-per-folder directory (every one, or a stratified sample
    of `limit`); folders are matched to the bundle's labels by name, and a folder naming no
    label is refused. Nothing is decoded here."""
    from edgetl.data import scan_image_folder

    folder = scan_image_folder(Path(data_dir), min_classes=1, allow_flat=True)
    index = {name: i for i, name in enumerate(manifest.labels)}
    unmatched = [c for c in folder.classes if c not in index]
    labels_of_class = np.asarray([index.get(c, -1) for c in folder.classes], dtype=np.int64)
    picked = np.arange(len(folder.files))
    if limit is not None:
        picked = stratified_subset(folder.labels, limit)
    labels = labels_of_class[np.asarray(folder.labels)[picked]]
    if len(unmatched) == len(folder.classes):
        raise UserError(
            f"--data {data_dir}: no class folder matches a label of the bundle "
            f"({', '.join(manifest.labels)})"
        )
    if (labels < 0).any():
        raise UserError(
            f"--data {data_dir}: {int((labels < 0).sum())} image(s) are in folders that name no "
            f"label of the bundle ({', '.join(manifest.labels)})"
        )
    return LabelledData([folder.files[int(i)] for i in picked], labels, manifest.input)


def stratified_subset(labels: np.ndarray, limit: int) -> np.ndarray:
    """Sorted indices of at most `limit` items, round-robin across classes."""
    from edgetl.data import interleave_by_class

    return np.sort(np.asarray(interleave_by_class(labels, limit), dtype=np.int64))


# ---------------------------------------------------------------- the plan


@dataclass
class Job:
    """One runtime, the artifacts it accepts, and which --data images it runs."""

    status: RuntimeStatus
    runtime: object  # edgetl.runtimes.base.Runtime
    artifacts: list  # [Artifact]
    data_rows: np.ndarray | None = None  # indices into the --data images; None: no --data
    streamed: bool = False  # every --data image, in chunks (else its sample, with the probes)
    outputs: dict = field(default_factory=dict)  # artifact id -> {name: probe array} | Exception
    info: dict = field(default_factory=dict)  # artifact id -> what the runtime reported
    predicted: dict = field(default_factory=dict)  # artifact id -> class per data row | Exception
    timed_out: bool = False  # ran past run_limit_s(): abandoned, its late results ignored
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class Batch:
    """The inputs of a run: the golden probes, and the --data images with their true labels."""

    probes: ProbeSet
    data: LabelledData | None = None
    cluster: str | None = None  # Ray address for the streamed --data images (edgetl.cluster)
    workers: str = "this process"  # where the streamed --data images ran

    @property
    def k(self) -> int:
        return len(self.probes.inputs)

    @property
    def data_labels(self) -> np.ndarray | None:
        return None if self.data is None else self.data.labels


def make_batch(
    manifest: Manifest, probes: ProbeSet, data: Path | None, say, limit: int | None = None
) -> Batch:
    if data is None:
        return Batch(probes)
    labelled = load_labelled_data(Path(data), manifest, limit)
    say(f"--data: {len(labelled)} labelled images")
    return Batch(probes, labelled)


def plan_jobs(names, required, records, manifest: Manifest, root: Path, batch: Batch) -> list[Job]:
    from edgetl.runtimes.base import RUNTIMES, Artifact
    from edgetl.runtimes.keras_runtime import source_artifact

    jobs = []
    for name in names:
        rt = RUNTIMES.get(name)
        if rt.reference:  # the source model, re-run against the golden outputs
            arts = [source_artifact(root, (manifest.source_model or {}).get("file", ""))]
        else:
            arts = [a for a in (Artifact(r, root) for r in records) if rt.accepts(a)]
        reason = rt.unavailable_reason()
        if rt.reference and reason is None and not (manifest.source_model or {}).get("file"):
            reason = "no reference model given: the saved golden outputs are the reference"
        status = RuntimeStatus(name, False, reason, gpu=rt.gpu, required=name in required)
        rows, streamed = None, False
        if batch.data is not None and rt.data_sample is not None:
            rows = stratified_subset(batch.data.labels, rt.data_sample)
        elif batch.data is not None:
            rows, streamed = np.arange(len(batch.data)), True
        status.images = None if rows is None else len(rows)
        jobs.append(Job(status, rt, arts, rows, streamed))
    return jobs


# ---------------------------------------------------------------- 1. run


def _overlapped(
    jobs: list[Job], work: Callable[[Job], None], on_timeout: Callable[[Job, Exception], None]
) -> None:
    """work(job) for every job, runtimes overlapping (PARALLEL_RUNTIMES at once) in daemon
    threads, each given run_limit_s(): a job still running then is left behind (a thread
    cannot be killed; a daemon one does not hold the process at exit) and on_timeout(job, err)
    records the ERROR, so a hang never holds verify. same_thread runtimes (Playwright) stay on
    this thread, bounded by their own page timeouts."""
    import threading

    from edgetl.runtimes.base import RUN_LIMIT_ENV, RuntimeTimeout, run_limit_s

    limit = run_limit_s()
    slots = threading.Semaphore(PARALLEL_RUNTIMES)
    failures: list[BaseException] = []
    finished: list[threading.Event] = []

    def run(job: Job, done: threading.Event) -> None:
        try:
            work(job)
        except BaseException as e:  # re-raised on this thread below
            failures.append(e)
        finally:
            with job.lock:
                if not done.is_set():
                    done.set()
                    slots.release()

    def expire(job: Job, done: threading.Event) -> None:
        with job.lock:
            if done.is_set():
                return
            job.timed_out = True
            done.set()
            slots.release()
        on_timeout(job, RuntimeTimeout(
            f"{job.status.name} ran past its {limit:g} s limit and was abandoned "
            f"(${RUN_LIMIT_ENV} sets the limit)"
        ))  # fmt: skip

    def launch() -> None:
        for job in [j for j in jobs if not j.runtime.same_thread]:
            slots.acquire()
            done = threading.Event()
            finished.append(done)
            timer = threading.Timer(limit, expire, (job, done))
            timer.daemon = True
            timer.start()
            threading.Thread(target=run, args=(job, done), daemon=True).start()

    launcher = threading.Thread(target=launch, daemon=True)
    launcher.start()
    for j in jobs:
        if j.runtime.same_thread:
            work(j)
    launcher.join()
    for done in finished:
        done.wait()
    if failures:
        raise failures[0]


def _classes(out: dict) -> np.ndarray:
    y = np.asarray(out.get("probabilities", next(iter(out.values()))), np.float32)
    return y.argmax(1).astype(np.int32)


def run_jobs(jobs: list[Job], batch: Batch, context, say) -> None:
    """Fill each available job's probe outputs, info and --data predictions. First the probes
    (with a sampled runtime's --data sample) through Runtime.run_many: a session per artifact,
    or one Node process for all; then, for the runtimes that see every --data image, the
    folder streamed in chunks (_stream_data). Runtimes are independent processes or
    thread-safe libraries, so they overlap. `context` holds what sessions share (Chromium)."""

    started = time.perf_counter()

    def execute(job: Job) -> None:
        t = time.perf_counter()
        inputs = batch.probes.inputs
        sample = job.data_rows is not None and not job.streamed
        if sample:
            inputs = np.concatenate([inputs, batch.data.decode(job.data_rows)])
        results = job.runtime.run_many(job.artifacts, inputs.astype(np.float32), context)
        with job.lock:
            if not job.timed_out:
                keep(job, results, inputs, sample, t)

    def keep(job: Job, results: dict, inputs: np.ndarray, sample: bool, t: float) -> None:
        for a in job.artifacts:
            got = results.get(a.id, RuntimeError("the runtime returned nothing for it"))
            if isinstance(got, Exception):  # reported per artifact by judge
                job.outputs[a.id] = got
                continue
            out, job.info[a.id] = got
            job.outputs[a.id] = {n: np.asarray(v)[: batch.k] for n, v in out.items()}
            if sample and all(len(v) == len(inputs) for v in out.values()):
                job.predicted[a.id] = _classes({n: v[batch.k :] for n, v in out.items()})
            elif sample:
                job.predicted[a.id] = RuntimeError("the runtime returned the wrong row count")
        job.status.seconds = time.perf_counter() - t
        if job.outputs:
            say(f"{job.status.name}: {len(job.outputs)} model(s) in {job.status.seconds:.1f} s")

    def timed_out(job: Job, error: Exception) -> None:
        for a in job.artifacts:
            job.outputs[a.id] = error
        job.status.seconds = time.perf_counter() - started

    _overlapped([j for j in jobs if j.status.reason is None], execute, timed_out)
    streamed = [j for j in jobs if j.status.reason is None and j.streamed]
    if streamed:
        _stream_data(streamed, batch, context, say)


def _stream_data(jobs: list[Job], batch: Batch, context, say) -> None:
    """Every --data image through every artifact whose probes ran, DATA_CHUNK images at a
    time (decoded once, shared by the runtimes), each session opened once; only the predicted
    class per image is kept, so memory does not grow with the folder. On Ray when the run
    names a cluster (_stream_data_on_ray)."""
    import contextlib
    import functools

    if batch.cluster is not None:
        return _stream_data_on_ray(jobs, batch, say)
    t0, n = time.perf_counter(), len(batch.data)
    with contextlib.ExitStack() as stack:
        sessions: dict[int, dict] = {}
        for job in jobs:
            sessions[id(job)] = {}
            for a in job.artifacts:
                if isinstance(job.outputs.get(a.id), Exception):
                    continue  # already an error on the probes
                try:
                    sessions[id(job)][a.id] = stack.enter_context(job.runtime.open(a, context))
                    job.predicted[a.id] = np.full(n, -1, np.int32)
                except Exception as e:  # reported per artifact by judge
                    job.predicted[a.id] = e

        def run_chunk(rows: np.ndarray, chunk: np.ndarray, job: Job) -> None:
            t = time.perf_counter()
            for art_id, session in list(sessions[id(job)].items()):
                pred = job.predicted[art_id]
                if isinstance(pred, Exception):
                    continue
                try:
                    got = _classes(session.infer(chunk)[0])
                    if len(got) != len(rows):
                        raise RuntimeError("the runtime returned the wrong row count")
                    pred[rows] = got
                except Exception as e:  # this artifact stops; the others go on
                    job.predicted[art_id] = e
            job.status.seconds += time.perf_counter() - t

        def chunk_timed_out(job: Job, error: Exception) -> None:
            for art_id in sessions[id(job)]:
                job.predicted[art_id] = error
            sessions[id(job)] = {}  # the abandoned session is not fed again

        for rows, chunk in batch.data.images():
            live = [j for j in jobs if not j.timed_out]
            _overlapped(live, functools.partial(run_chunk, rows, chunk), chunk_timed_out)
    say(f"--data: {n} images through {len(jobs)} runtime(s) in {time.perf_counter() - t0:.1f} s")


def _stream_data_on_ray(jobs: list[Job], batch: Batch, say) -> None:
    """_stream_data sharded over Ray workers: each worker opens every artifact's session on
    its shard of whole chunks (edgetl.cluster.predict_shard); the classes come back per image."""
    from edgetl.cluster import predict_on_ray

    t0, n = time.perf_counter(), len(batch.data)
    owners = [
        (job, a)
        for job in jobs
        for a in job.artifacts
        if not isinstance(job.outputs.get(a.id), Exception)  # already an error on the probes
    ]
    pairs = [(job.runtime.name, a) for job, a in owners]
    got, cpus = predict_on_ray(
        batch.cluster, pairs, batch.data.files, batch.data.contract, DATA_CHUNK
    )
    for (job, a), predicted in zip(owners, got, strict=True):
        job.predicted[a.id] = predicted
    seconds = time.perf_counter() - t0
    for job in jobs:
        job.status.seconds += seconds
    batch.workers = f"ray: {cpus} CPUs"
    say(
        f"--data: {n} images through {len(jobs)} runtime(s) on Ray ({cpus} CPUs) in {seconds:.1f} s"
    )


# ---------------------------------------------------------------- 2. judge


def _accuracy(predicted: np.ndarray, batch: Batch, rows: np.ndarray) -> float:
    """Share of the --data images `rows` whose predicted class is their label."""
    return float((predicted == batch.data_labels[rows]).mean()) if len(rows) else 0.0


def judge_jobs(
    jobs: list[Job], batch: Batch, manifest: Manifest, overrides: list[ToleranceOverride]
) -> tuple[list[PairResult], np.ndarray | None]:
    """Every pair against the golden outputs, and on --data against Keras' accuracy on the same
    images; returns the pairs and Keras' class per --data image (if it ran on them)."""
    from edgetl.runtimes.base import RuntimeUnavailable

    k, noise = batch.k, manifest.probes.get("noise")
    pairs: list[PairResult] = []
    keras_pred: np.ndarray | None = None  # Keras' class per --data image (the reference)
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
            pr, keras_pred = _judge_reference(job, batch, noise, overrides)
            pairs.append(pr)
            continue
        for a in job.artifacts:
            out = job.outputs.get(a.id, RuntimeError("the runtime returned nothing for it"))
            st.artifacts.append(a.id)
            info = dict(job.info.get(a.id, {}))
            tol = default_tolerance(a.record, gpu=job.runtime.gpu, info=info, noise=noise)
            tol = apply_overrides(tol, overrides, a.id, st.name)
            share = st.seconds / len(job.artifacts)  # the artifact's share of its runtime's time
            if isinstance(out, RuntimeUnavailable):  # this machine lacks what it needs
                st.artifacts.remove(a.id)
                st.not_run[a.id] = str(out)
                continue
            if isinstance(out, Exception):
                hint = a.record.options.get(ERROR_HINT)
                pairs.append(_error_pair(a.id, st.name, out, tol, info, share, hint=hint))
                continue
            y = np.asarray(out.get("probabilities", next(iter(out.values()))), np.float32)
            predicted = job.predicted.get(a.id)
            if isinstance(predicted, Exception):
                pairs.append(_error_pair(a.id, st.name, predicted, tol, info, share, "--data"))
                continue
            pr = compare(batch.probes.expected, y[:k], tol, artifact=a.id, runtime=st.name)
            pr.info, pr.seconds = info, share
            if predicted is not None:
                rows = job.data_rows
                pr.images = len(rows)
                acc = _accuracy(predicted, batch, rows)
                if keras_pred is None:
                    pr.accuracy = acc
                else:
                    judge_accuracy(pr, acc, _accuracy(keras_pred[rows], batch, rows))
            pairs.append(pr)
    return pairs, keras_pred


def _judge_reference(
    job: Job, batch: Batch, noise, overrides
) -> tuple[PairResult, np.ndarray | None]:
    """The source model re-run against the golden outputs; its class per --data image (None if
    it failed) is the accuracy reference of every other pair."""
    st, out = job.status, job.outputs[SOURCE_ARTIFACT]
    tol = apply_overrides(reference_tolerance(noise), overrides, SOURCE_ARTIFACT, st.name)
    if isinstance(out, Exception):
        return _error_pair(SOURCE_ARTIFACT, st.name, out, reference_tolerance(noise)), None
    predicted = job.predicted.get(SOURCE_ARTIFACT)
    if isinstance(predicted, Exception):
        return _error_pair(SOURCE_ARTIFACT, st.name, predicted, tol, where="--data"), None
    st.artifacts = [SOURCE_ARTIFACT]
    pr = compare(
        batch.probes.expected,
        out["probabilities"][: batch.k],
        tol,
        artifact=SOURCE_ARTIFACT,
        runtime=st.name,
    )
    if not pr.passed:
        pr.reasons.insert(0, "the source model no longer reproduces the golden probes")
    pr.seconds = st.seconds
    if predicted is None or job.data_rows is None:
        return pr, None
    by_row = np.full(len(batch.data), -1, np.int32)  # every row when streamed, else its sample
    by_row[job.data_rows] = predicted[job.data_rows] if job.streamed else predicted
    return pr, by_row


def _error_pair(
    artifact, runtime, error, tol, info=None, seconds=None, where="", hint=None
) -> PairResult:
    reason = f"{type(error).__name__}: {error}"
    if hint:  # what the load error means, in one line, with the runtime's own first line
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        reason = f"{hint}; the runtime said: {first}"
    if where:
        reason = f"on the {where} images: {reason}"
    return PairResult(
        artifact, runtime, "golden", ERROR, [reason], tol, info=info or {}, seconds=seconds
    )


# ---------------------------------------------------------------- 3. localize


def localize_failed_pairs(
    pairs: list[PairResult], jobs: list[Job], root: Path, batch: Batch, say, keras_model=None
):
    by_runtime = {j.status.name: j for j in jobs}
    for pr in pairs:
        if pr.status != FAIL or pr.artifact == SOURCE_ARTIFACT:
            continue
        job = by_runtime[pr.runtime]
        art = next(a for a in job.artifacts if a.id == pr.artifact)
        say(f"{pr.artifact}@{pr.runtime} failed; localizing ...")
        pr.localization = localize(
            root, art.record, job.runtime, batch.probes.inputs, keras_model=keras_model
        )


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


def _data_info(batch: Batch, data, keras_pred: np.ndarray | None) -> dict | None:
    """What --data saw: folder, image count and Keras' accuracy on every image (if it ran)."""
    if batch.data is None:
        return None
    info = {"dir": str(data), "images": len(batch.data), "workers": batch.workers}
    if keras_pred is not None:
        seen = np.flatnonzero(keras_pred >= 0)
        info["keras_accuracy"] = _accuracy(keras_pred[seen], batch, seen)
    return info


def verify(
    bundle_dir: str | Path,
    runtimes: Sequence[str] | str | None = None,
    data: str | Path | None = None,
    *,
    data_limit: int | None = None,
    cluster: str | None = None,
    artifacts: Sequence[str] | str | None = None,
    require: Sequence[str] | str | None = None,
    tolerances: Sequence[str | ToleranceOverride] | None = None,
    localize_failures: bool = True,
    strict_probes: bool = False,
    log: Callable[[str], None] | None = None,
    context: RunContext | None = None,
) -> VerifyResult:
    """Verify a bundle; returns the result (call .raise_for_status() or check .ok).

    runtimes: names (default: every registered one, "keras" as the reference); artifacts: ids
    (default all); require: runtimes that must be available; tolerances: overrides such as
    "max_abs=1e-4" or "tflite_float16:max_abs=1e-2" (selector: artifact, runtime or a@r);
    strict_probes: fail when the bundle's probes cannot tell a broken artifact from a good one;
    data_limit: check a stratified sample of that many --data images (default: every one);
    cluster: 'ray' or 'ray://HOST:PORT' shards the --data images over Ray workers (default:
    $EDGETL_CLUSTER, unset: this process); context: a RunContext to share with other calls
    (one Chromium, with the WebGPU shaders it compiled, for several bundles), left open."""
    from edgetl.distribute import cluster_setting, ray_address

    address = ray_address(cluster_setting(cluster))  # a bad setting is refused before any work

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
    return _verify_records(
        root, manifest, records, probes, runtimes, require, overrides, data, data_limit,
        address, localize_failures, strict_probes, say, t0, context=context,
    )  # fmt: skip


def _verify_records(
    root: Path,
    manifest: Manifest,
    records: list,
    probes: ProbeSet,
    runtimes,
    require,
    overrides: list[ToleranceOverride],
    data,
    data_limit: int | None,
    address: str | None,
    localize_failures: bool,
    strict_probes: bool,
    say,
    t0: float,
    keras_model=None,
    context: RunContext | None = None,
) -> VerifyResult:
    """run -> judge -> localize for `records` against `probes`: a bundle's, or the in-memory
    records and probes of verify_files (edgetl.anywhere)."""
    names, required, broken = runtime_names(runtimes, require)
    data_dir = Path(data) if data is not None else None
    batch = make_batch(manifest, probes, data_dir, say, data_limit)
    batch.cluster = address
    jobs = plan_jobs(names, required, records, manifest, root, batch)
    if context is not None:
        run_jobs(jobs, batch, context, say)
    else:
        with RunContext() as own:  # the run's shared resources (Chromium), closed at the end
            run_jobs(jobs, batch, own, say)
    pairs, keras_pred = judge_jobs(jobs, batch, manifest, overrides)
    if localize_failures:
        localize_failed_pairs(pairs, jobs, root, batch, say, keras_model)

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
        _data_info(batch, data, keras_pred),
        time.perf_counter() - t0,
        probe_coverage=with_saturation(manifest.probes.get("coverage"), probes.expected),
        strict_probes=strict_probes,
    )


def verify_files(
    artifacts: Sequence[str | Path],
    reference: str | Path | None = None,
    runtimes: Sequence[str] | str | None = None,
    data: str | Path | None = None,
    *,
    probes: str | Path | None = None,
    images: str | Path | None = None,
    labels: Sequence[str] | None = None,
    input_range: tuple[float, float] | None = None,
    save_probes: str | Path | None = None,
    force: bool = False,
    data_limit: int | None = None,
    cluster: str | None = None,
    require: Sequence[str] | str | None = None,
    tolerances: Sequence[str | ToleranceOverride] | None = None,
    localize_failures: bool = True,
    strict_probes: bool = False,
    log: Callable[[str], None] | None = None,
    context: RunContext | None = None,
) -> VerifyResult:
    """Verify a user's own files (ONNX, TFLite, TF.js model.json: found by content) against a
    Keras `reference`, no bundle needed (edgetl.anywhere builds its records and probes in
    memory; the files are read where they are). Probes are made from the reference like export
    makes them, with real images from `images` (or `data`), or read from `probes` (a folder
    `save_probes` wrote, hashes checked). Judged exactly as a bundle is."""
    from edgetl import anywhere
    from edgetl.distribute import cluster_setting, ray_address
    from edgetl.runtimes.base import RUNTIMES

    address = ray_address(cluster_setting(cluster))
    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    if not artifacts:
        raise UserError("no artifact files given: name the ONNX / TFLite / model.json files")
    if reference is None and probes is None:
        raise UserError("give --reference MODEL.keras (or --probes DIR saved from it)")
    records = anywhere.artifact_records([Path(a) for a in artifacts])  # bad files: refused first
    overrides = [
        o if isinstance(o, ToleranceOverride) else parse_override(o) for o in tolerances or []
    ]
    runtime_names(runtimes, require)  # unknown names refused before the probes are made
    if save_probes is not None:  # a folder that would lose something: refused before any work
        from edgetl.outdir import check_out_dir

        reads = {"reference model": Path(reference)} if reference else None
        check_out_dir(Path(save_probes), force=force, reads=reads, flag="--save-probes")
    if probes is not None:
        ref = anywhere.load_saved_probes(
            Path(probes), Path(reference) if reference else None, labels=labels,
            input_range=input_range, log=say,
        )  # fmt: skip
    else:
        ref = anywhere.make_reference(
            Path(reference), images=Path(images or data) if (images or data) else None,
            labels=list(labels) if labels else None, input_range=input_range, log=say,
        )  # fmt: skip
    if save_probes is not None:
        anywhere.save_probes(ref, Path(save_probes), force=force)
        say(f"probes saved to {save_probes}")
    if ref.model is not None and KERAS in RUNTIMES:
        RUNTIMES.get(KERAS).remember(ref.source_path, ref.model)  # loaded once, legacy .h5 too
    manifest = ref.manifest
    manifest.artifacts = records
    say("artifacts: " + ", ".join(f"{r.id} ({Path(r.path).name})" for r in records))
    root = ref.source_path.parent if ref.source_path else Path(probes).resolve()
    result = _verify_records(
        root, manifest, records, ref.probes, runtimes, require, overrides, data, data_limit,
        address, localize_failures, strict_probes, say, t0, keras_model=ref.model,
        context=context,
    )  # fmt: skip
    result.bundle_dir = ref.source_path or Path(probes)
    return result


# ---------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgetl.argtypes import add_number
    from edgetl.runtimes.base import describe_runtimes

    p.formatter_class = _HelpFormatter
    p.epilog = "runtimes (`edgetl runtimes` says which run here):\n" + describe_runtimes()
    p.add_argument(
        "paths",
        type=Path,
        nargs="+",
        metavar="BUNDLE_DIR | FILE",
        help="a bundle made by edgetl export, or with --reference / --probes your own artifact "
        "files in any mix, found by content: ONNX, TFLite (any quantization), TF.js model.json "
        "(Layers or graph)",
    )
    p.add_argument(
        "--reference",
        type=Path,
        metavar="MODEL",
        help="the Keras model (.keras or .h5) the FILEs were converted from: the probes, golden "
        "outputs and noise floors are made from it, as export makes them",
    )
    p.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="with --reference: images to pick real probes from (a class folder or a flat one; "
        "default: --data if given, else synthetic probes only)",
    )
    p.add_argument(
        "--labels", help="with --reference: labels file (.json list or one per line) or a,b,c"
    )
    p.add_argument(
        "--input-range",
        help="with --reference: value range the model input expects, e.g. -1,1 (default: "
        "contract.json beside the model, else 0,255)",
    )
    p.add_argument(
        "--save-probes",
        type=Path,
        metavar="DIR",
        help="with --reference: also write the probes, golden outputs and noise floors (hashed) "
        "to DIR, for --probes in a later run or on a machine without TensorFlow",
    )
    p.add_argument(
        "--force", action="store_true", help="replace an existing --save-probes folder"
    )
    p.add_argument(
        "--probes",
        type=Path,
        metavar="DIR",
        help="use probes saved by --save-probes (hashes checked; --reference optional, and if "
        "given its input size must match)",
    )
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
        "accuracy beside Keras' on every image (streamed in batches; TF.js and browser runtimes "
        "a stated sample); quantized artifacts fail on too large a drop",
    )
    add_number(
        p,
        "--data-limit",
        kind=int,
        lo=1,
        metavar="N",
        help="check a stratified sample of N --data images, round-robin across classes "
        "(default: every image)",
    )
    p.add_argument(
        "--cluster",
        metavar="SETTING",
        help="the --data images of onnxruntime, LiteRT and Keras on Ray workers: 'ray' (a local "
        "Ray, or the cluster at $RAY_ADDRESS) or 'ray://HOST:PORT'; the bundle and the folder "
        "must be readable on every node (default: $EDGETL_CLUSTER, unset: this process)",
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
    """--json / --junit / --html: refuse, before any work, a path that cannot be written, or
    one inside the bundle or the --data folder (`--json BUNDLE/manifest.json` destroyed the
    bundle), symbolic links followed."""
    seen: dict[Path, str] = {}
    bundle = getattr(args, "bundle", None)
    inputs = {"bundle": Path(bundle)} if bundle is not None else {}
    if bundle is None:  # --reference / --probes: the user's files and folders are inputs too
        inputs.update({f"artifact {p}": Path(p) for p in getattr(args, "paths", None) or []})
        for flag in ("reference", "probes", "images"):
            if getattr(args, flag, None) is not None:
                inputs[f"--{flag}"] = Path(getattr(args, flag))
    if getattr(args, "data", None) is not None:
        inputs["--data folder"] = Path(args.data)
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
        key = Path(os.path.realpath(path))  # through symbolic links: what gets written
        if key in seen:
            raise UserError(f"{where}: the same file as --{seen[key]}")
        seen[key] = flag
        for label, src in inputs.items():
            src = Path(os.path.realpath(src))
            if key == src or key.is_relative_to(src):
                raise UserError(
                    f"{where} is inside the {label} ({src}): writing the report there would "
                    "change what verify reads; choose a path outside it"
                )


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
        model = rt.load(source_model_path(bundle))
        check_model_fits(bundle, model)
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


def check_model_fits(bundle: Path, model) -> None:
    """The source model against the manifest: its input is the contract's [H, W, 3] and it
    has one output per label (a bundle error, not an artifact failure)."""
    from edgetl.manifest import BundleError

    manifest = Manifest.load(bundle)
    c = manifest.input
    shape_in = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
    shape_out = (
        model.output_shape[0] if isinstance(model.output_shape, list) else model.output_shape
    )
    want = [c.height, c.width, c.channels]  # Keras models here are channels-last
    if list(shape_in[1:]) != want:
        raise BundleError(
            f"{bundle}: the source model takes {list(shape_in[1:])}, but the manifest's input "
            f"contract says {want}; refused"
        )
    if shape_out[-1] != len(manifest.labels):
        raise BundleError(
            f"{bundle}: the source model has {shape_out[-1]} outputs but the bundle has "
            f"{len(manifest.labels)} labels; refused"
        )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The runtime list in the epilog keeps its lines; option defaults as the other commands."""

    def _get_help_string(self, action):
        from edgetl.cli import _Formatter

        return _Formatter._get_help_string(self, action)


FILE_MODE_FLAGS = ("images", "labels", "input_range", "save_probes")  # --reference only


def run(args: argparse.Namespace) -> int:
    if args.reference is not None or args.probes is not None:
        return _run_files(args)
    used = [f"--{f.replace('_', '-')}" for f in FILE_MODE_FLAGS if getattr(args, f) is not None]
    if used:
        raise UserError(f"{used[0]} applies with --reference MODEL (verifying your own files)")
    if len(args.paths) != 1:
        raise UserError(
            "several paths given: verify one BUNDLE_DIR, or your own files with "
            "--reference MODEL.keras FILE..."
        )
    args.bundle = args.paths[0]
    return _run_bundle(args)


def _check_common(args: argparse.Namespace) -> None:
    check_output_files(args)
    if args.data is not None and not Path(args.data).is_dir():
        raise UserError(f"--data {args.data}: not a folder")


def _report(result: VerifyResult, args: argparse.Namespace) -> int:
    from edgetl import report

    print(report.format_table(result))
    if args.json:
        report.write_json(result, args.json)
    if args.junit:
        report.write_junit(result, args.junit)
    if args.html:
        report.write_html(result, args.html)
    print(("OK: " if result.ok else "FAIL: ") + result.summary())
    return 0 if result.ok else 1


def _run_files(args: argparse.Namespace) -> int:
    """--reference / --probes: the user's own files, no bundle."""
    from edgetl.modelio import parse_labels, parse_range

    _check_common(args)
    if args.artifacts:
        raise UserError("--artifacts picks ids of a bundle; with --reference name the files")
    for flag in ("images", "probes"):
        folder = getattr(args, flag)
        if folder is not None and not folder.is_dir():
            raise UserError(f"--{flag} {folder}: not a folder")
    if args.save_probes is not None and args.probes is not None:
        raise UserError("--save-probes makes new probes; it does not go with --probes")
    if args.save_probes is not None and args.reference is None:
        raise UserError("--save-probes needs --reference MODEL to make the probes from")
    result = verify_files(
        args.paths,
        args.reference,
        runtimes=args.runtimes,
        data=args.data,
        probes=args.probes,
        images=args.images,
        labels=parse_labels(args.labels) if args.labels else None,
        input_range=parse_range(args.input_range) if args.input_range else None,
        save_probes=args.save_probes,
        force=args.force,
        data_limit=args.data_limit,
        cluster=args.cluster,
        require=args.require,
        tolerances=args.tolerance,
        localize_failures=not args.no_localize,
        strict_probes=args.strict_probes,
        log=lambda m: print(m, file=sys.stderr),
    )
    return _report(result, args)


def _run_bundle(args: argparse.Namespace) -> int:
    from edgetl.manifest import Manifest

    if not args.bundle.is_dir():
        hint = (
            "; to verify your own files, add --reference MODEL.keras"
            if args.bundle.is_file()
            else ""
        )
        raise UserError(f"{args.bundle}: no such bundle directory{hint}")
    _check_common(args)
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
        data_limit=args.data_limit,
        cluster=args.cluster,
        artifacts=args.artifacts,
        require=args.require,
        tolerances=args.tolerance,
        localize_failures=not args.no_localize,
        strict_probes=args.strict_probes,
        log=lambda m: print(m, file=sys.stderr),
    )
    return _report(result, args)
