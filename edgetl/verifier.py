"""`edgetl verify`: prove every artifact of a bundle agrees with the model it came from.

Order of work: the manifest, then the sha256 of every file (a tampered file is refused before
anything runs), then the golden probes. The reference is the Keras model's outputs recorded at
export (probes/expected.bin); where TensorFlow is installed the bundle's source model is run
again and checked against them too. Each available runtime then runs all of its artifacts on
the probe batch (one start per runtime: Node and Chromium are costly to start), and every
(artifact, runtime) pair goes through the one comparator in edgetl.parity. Runtimes that cannot
run here are listed with their reason and never count as a pass; --require turns a missing one
into a failure. Exit 0 only if every pair that ran passed.
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

from edgetl.errors import ParityError, UserError
from edgetl.manifest import Manifest, check_integrity, read_probes
from edgetl.parity import (
    FAIL,
    FLOAT32_CPU,
    PairResult,
    ToleranceOverride,
    apply_overrides,
    compare,
    default_tolerance,
    judge_accuracy,
    localize,
    parse_override,
)

ERROR = "error"  # a pair whose runtime raised instead of giving outputs (counts as a failure)
KERAS = "keras"
SOURCE_ARTIFACT = "source_model"  # pseudo-artifact id of the Keras re-run vs the golden probes
DATA_LIMIT = 1000
# Runtimes run concurrently (measured: MobileNetV2 1.0/224, every format, all CPU runtimes
# incl. Chromium: 64 s one after another on 2 shared cores); these stay on the calling thread.
PARALLEL_RUNTIMES = 3
SAME_THREAD_PREFIXES = ("tfjs-browser",)  # --data images used at most (interleaved across classes)


@dataclass
class RuntimeStatus:
    name: str
    available: bool
    reason: str | None = None  # why not available
    gpu: bool = False
    artifacts: list[str] = field(default_factory=list)  # what it ran
    seconds: float = 0.0
    required: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class VerifyResult:
    bundle_dir: Path
    name: str
    pairs: list[PairResult]
    runtimes: list[RuntimeStatus]
    probes: int
    data: dict | None = None  # {"dir", "images", "classes"} with --data
    seconds: float = 0.0

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
        return bool(ran) and not self.failed and not self.missing_required

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
    from edgetl.bundle import sample_images

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


def verify(
    bundle_dir: str | Path,
    runtimes: Sequence[str] | str | None = None,
    data: str | Path | None = None,
    *,
    artifacts: Sequence[str] | str | None = None,
    require: Sequence[str] | str | None = None,
    tolerances: Sequence[str | ToleranceOverride] | None = None,
    localize_failures: bool = True,
    log: Callable[[str], None] | None = None,
) -> VerifyResult:
    """Verify a bundle; returns the result (call .raise_for_status() or check .ok).

    runtimes: names (default: every registered one, "keras" as the reference); artifacts: ids
    (default all); require: runtimes that must be available; tolerances: overrides such as
    "max_abs=1e-4" or "tflite_float16:max_abs=1e-2" (selector: artifact, runtime or a@r)."""
    from edgetl.runtimes.base import RUNTIMES, Artifact, RuntimeUnavailable

    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    root = Path(bundle_dir)
    manifest = Manifest.load(root)
    wanted_artifacts = _split(artifacts)
    if wanted_artifacts is not None:
        for a in wanted_artifacts:
            manifest.artifact(a)  # BundleError listing the bundle's ids
    records = [
        a for a in manifest.artifacts if wanted_artifacts is None or a.id in wanted_artifacts
    ]
    check_integrity(root, manifest, [a.id for a in records])
    probes = read_probes(root, manifest)
    overrides = [
        o if isinstance(o, ToleranceOverride) else parse_override(o) for o in tolerances or []
    ]

    broken = _load_runtime_modules()
    if runtimes is not None:  # asked-for names must exist; a broken module is then no excuse
        broken = {}
    names = _split(runtimes) or RUNTIMES.names()
    required = _split(require) or []
    for n in [*names, *required]:
        RUNTIMES.check(n)
    names = list(dict.fromkeys([*names, *required]))

    inputs = probes.inputs
    data_labels = None
    data_info = None
    if data is not None:
        images, data_labels = load_labelled_data(Path(data), manifest)
        inputs = np.concatenate([probes.inputs, images]).astype(np.float32)
        data_info = {"dir": str(data), "images": len(images)}
        say(f"--data: {len(images)} labelled images")
    k = len(probes.inputs)

    pairs: list[PairResult] = []
    statuses: list[RuntimeStatus] = []
    keras_out: np.ndarray | None = None

    # Phase 1: every runtime runs its artifacts. Runtimes are independent processes or thread-safe
    # libraries, so they overlap (Node and Chromium wait on their own processes); the browser
    # runtimes stay on this thread, which Playwright's sync API is bound to.
    jobs: list[tuple[RuntimeStatus, object, list[Artifact]]] = []
    for name in names:
        rt = RUNTIMES.get(name)
        arts = [a for a in (Artifact(r, root) for r in records) if rt.accepts(a)]
        st = RuntimeStatus(
            name, False, rt.unavailable_reason(), gpu=rt.gpu, required=name in required
        )
        statuses.append(st)
        if st.reason is None:
            jobs.append((st, rt, arts))

    def execute(job) -> tuple[dict, dict]:
        st, rt, arts = job
        t = time.perf_counter()
        try:
            if st.name == KERAS:
                outputs: dict = {SOURCE_ARTIFACT: rt.run_source(root, inputs)}
            else:
                outputs = rt.run_many(arts, inputs) if arts else {}
        except Exception as e:  # run_many reports per artifact; this is a runtime-wide failure
            outputs = {
                a: e for a in ([SOURCE_ARTIFACT] if st.name == KERAS else [x.id for x in arts])
            }
        st.seconds = time.perf_counter() - t
        if outputs:
            say(f"{st.name}: {len(outputs)} model(s) in {st.seconds:.1f} s")
        return outputs, dict(getattr(rt, "last_info", {}) or {})

    here = [j for j in jobs if j[0].name.startswith(SAME_THREAD_PREFIXES)]
    pooled = [j for j in jobs if j not in here]
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNTIMES) as pool:
        futures = [pool.submit(execute, j) for j in pooled]
        done_here = [execute(j) for j in here]
        results = dict(zip([id(j) for j in pooled], [f.result() for f in futures], strict=True))
        results.update(zip([id(j) for j in here], done_here, strict=True))

    # Phase 2: compare every pair (and localize failures) in a fixed order, Keras first (its
    # outputs are the reference accuracy for --data).
    for job in sorted(jobs, key=lambda j: j[0].name != KERAS):
        st, rt, arts = job
        outputs, infos = results[id(job)]
        unavailable = [o for o in outputs.values() if isinstance(o, RuntimeUnavailable)]
        if unavailable and len(unavailable) == len(outputs):
            st.reason = str(unavailable[0])
            continue
        st.available = True
        if st.name == KERAS:
            keras_out = outputs[SOURCE_ARTIFACT]["probabilities"]
            st.artifacts = [SOURCE_ARTIFACT]
            tol = apply_overrides(FLOAT32_CPU, overrides, SOURCE_ARTIFACT, KERAS)
            pr = compare(
                probes.expected, keras_out[:k], tol, artifact=SOURCE_ARTIFACT, runtime=KERAS
            )
            if not pr.passed:
                pr.reasons.insert(0, "the source model no longer reproduces the golden probes")
            pr.seconds = st.seconds
            pairs.append(pr)
            continue
        for a in arts:
            out = outputs.get(a.id, RuntimeError("the runtime returned nothing for it"))
            st.artifacts.append(a.id)
            info = dict(infos.get(a.id, {}))
            tol = default_tolerance(a.format, a.record.precision, st.name, gpu=rt.gpu, info=info)
            tol = apply_overrides(tol, overrides, a.id, st.name)
            share = st.seconds / len(arts)  # the artifact's share of its runtime's time
            if isinstance(out, Exception):
                reason = f"{type(out).__name__}: {out}"
                pairs.append(
                    PairResult(
                        a.id, st.name, "golden", ERROR, [reason], tol, info=info, seconds=share
                    )
                )
                continue
            y = np.asarray(out.get("probabilities", next(iter(out.values()))), np.float32)
            pr = compare(probes.expected, y[:k], tol, artifact=a.id, runtime=st.name)
            pr.info, pr.seconds = info, share
            pairs.append(pr)
            if data_labels is not None and len(y) == len(inputs):
                acc = float((y[k:].argmax(1) == data_labels).mean())
                if keras_out is None:
                    pr.accuracy = acc
                else:
                    judge_accuracy(pr, acc, float((keras_out[k:].argmax(1) == data_labels).mean()))
            if pr.status == FAIL and localize_failures:
                say(f"{a.id}@{st.name} failed; localizing ...")
                pr.localization = localize(root, a.record, rt, probes.inputs)

    for mod, why in broken.items():
        short = mod.rsplit(".", 1)[-1]
        statuses.append(RuntimeStatus(short, False, f"module {mod} failed to import ({why})"))
    if data_info is not None and keras_out is not None:
        data_info["keras_accuracy"] = float((keras_out[k:].argmax(1) == data_labels).mean())
    return VerifyResult(
        root, manifest.name, pairs, statuses, k, data_info, time.perf_counter() - t0
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
