"""One interface for every backend (Polygraphy-style): open an artifact once, infer many times.

    with runtime.open(artifact, context) as session:
        outputs, info = session.infer(x)    # {name: float32 array}, what really ran

A Runtime is registered once in RUNTIMES and says whether it can run on this machine (and why
not); verify never counts an unavailable runtime as a pass. `open()` loads the artifact (an
onnxruntime session, a LiteRT interpreter, a Chromium page) and closes it on leaving the block.
Costly resources shared across artifacts and runtimes (the headless Chromium and its server)
live in a RunContext: verify opens one for the whole run and closes it at the end; without one,
open() makes a private context that lives as long as the session.

Capabilities are flags on the Runtime, never guessed from its name (see Runtime's docstring);
optional powers are Session methods that the flags announce (layer_outputs, benchmark).

How to add a runtime (one file plus one name):

1. Write edgetl/runtimes/<backend>.py with a Runtime subclass (name, formats, flags,
   unavailable_reason(), start()) and a Session subclass (infer(); layer_outputs() if you set
   layer_formats; benchmark() if it times inside the backend, has_own_timing); end it with
   RUNTIMES.register(MyRuntime(...)). Shared costly resources come from
   context.get(key, factory), which opens them once per run and closes them with the context;
   a runtime that can only batch by running several models at once may override run_many().
2. Add the module's dotted name to RUNTIME_MODULES below. The tests iterate RUNTIMES, so the
   new runtime is tested by the parity and verify tests without editing a test.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.manifest import ArtifactRecord
from edgetl.registry import Registry

OUTPUT_NAME = "probabilities"  # the key of a single-output model's array
# Every runtime call has a time limit (issue 21: a weight shard pointing at a FIFO hung verify
# forever). The slowest measured call: TF.js's pure-JS cpu backend in Node, seconds per image
# at 224 px, ~0.8 s an image at 160 px (155-178 s for a 216-image sample, 2 cores): a verify's
# 7 artifacts x (probes + its 32-image --data sample) stays near 300-600 s. $EDGETL_RUNTIME_TIMEOUT
# (seconds) changes it.
RUN_LIMIT_S = 1800.0
RUN_LIMIT_ENV = "EDGETL_RUNTIME_TIMEOUT"


def run_limit_s() -> float:
    """Seconds one runtime may take for one call (its probes, or one --data chunk)."""
    text = os.environ.get(RUN_LIMIT_ENV, "")
    try:
        value = float(text) if text else RUN_LIMIT_S
    except ValueError:
        value = RUN_LIMIT_S
    return value if value > 0 and value == value else RUN_LIMIT_S


class RuntimeTimeout(RuntimeError):
    """A runtime call ran past run_limit_s(); the pair is reported as an ERROR."""


@dataclass(frozen=True)
class Artifact:
    """An artifact of a bundle, resolved to an absolute path."""

    record: ArtifactRecord
    bundle_dir: Path

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def format(self) -> str:
        return self.record.format

    @property
    def path(self) -> Path:
        return (self.bundle_dir / self.record.path).resolve()


@dataclass(frozen=True)
class Options:
    """Knobs a session may honour (the bench varies them; verify uses the defaults)."""

    threads: int | None = None  # None: the runtime's default (all cores)
    optimize: bool = True  # False: onnxruntime graph optimizations off, LiteRT without XNNPACK


class RuntimeUnavailable(RuntimeError):
    """Raised by open()/infer() when the runtime turns out not to work here (e.g. a silent CPU
    fallback, a browser backend that does not start)."""


class RunContext:
    """Costly resources shared by the sessions of one run, opened on first use and closed, in
    reverse order, by close() (or leaving the `with` block). A resource whose start failed is
    not retried: every later get() raises the same error."""

    def __init__(self) -> None:
        self._open: dict[str, object] = {}
        self._failed: dict[str, Exception] = {}

    def get(self, key: str, factory: Callable[[], object]):
        """The resource named `key`, made by factory() on first use; it must have close()."""
        if key in self._failed:
            raise self._failed[key]
        if key not in self._open:
            try:
                self._open[key] = factory()
            except Exception as e:
                self._failed[key] = e
                raise
        return self._open[key]

    def close(self) -> None:
        while self._open:
            _, resource = self._open.popitem()
            with contextlib.suppress(Exception):
                resource.close()
        self._failed.clear()

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Session(ABC):
    """One artifact loaded on one runtime."""

    def __init__(self, runtime: Runtime, artifact: Artifact) -> None:
        self.runtime = runtime
        self.artifact = artifact

    @abstractmethod
    def infer(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        """Run a float32 NHWC batch in the model's input range; returns ({output_name: array}
        (float32, dequantized; "probabilities" for a single output), info: what really ran,
        e.g. {"backend", "webgl_precision", "timings": {...}})."""

    def layer_outputs(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """Named Keras layers' outputs for `x`, for localization (runtime.layer_formats)."""
        raise NotImplementedError(f"{self.runtime.name} gives no per-layer outputs")

    def benchmark(self, x: np.ndarray, runs: int = 30, warmup: int = 5) -> dict:
        """Latency of infer(x), timed from Python: {"median_ms", "mean_ms", "min_ms", "p90_ms",
        "first_ms", "times_ms", "info"}. Runtimes with has_own_timing time inside the backend."""
        times, info = [], {}
        for i in range(warmup + runs):
            t = time.perf_counter()
            _, info = self.infer(x)
            if i == 0 or i >= warmup:
                times.append((time.perf_counter() - t) * 1e3)
        return latency_summary(times[0], times[1:] if warmup else times, info)

    def close(self) -> None:  # noqa: B027 (optional hook: most sessions hold nothing to free)
        """Release what start() loaded (nothing by default: the garbage collector does)."""


def latency_summary(first_ms: float, times_ms: list[float], info: dict) -> dict:
    ordered = sorted(times_ms)
    return {
        "median_ms": statistics.median(ordered),
        "mean_ms": statistics.fmean(ordered),
        "min_ms": ordered[0],
        "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "first_ms": first_ms,
        "times_ms": times_ms,
        "info": info,
    }


class Runtime(ABC):
    """A backend. Capabilities are declared here as flags, never guessed from the name:

    gpu                runs on a GPU (judged by the GPU float32 tolerance)
    same_thread        must be called from the thread that created it (Playwright's sync API)
    data_sample        None: with --data it runs every image; N: a stated stratified sample of N
                       (slow runtimes: TF.js wasm, pure-JS cpu, software WebGL)
    layer_formats      formats whose per-layer values its sessions give (layer_outputs(), for
                       localization), described in reports as `layer_source`
    has_own_timing     its sessions' benchmark() times inside the backend (the browser page)
    reference          runs the bundle's source model (Keras), not an exported artifact
    """

    name: str = ""  # registry name, e.g. "onnxruntime-cpu", "tfjs-node-wasm"
    formats: frozenset[str] = frozenset()  # ArtifactRecord.format values it can run
    gpu: bool = False
    same_thread: bool = False
    data_sample: int | None = None
    layer_formats: frozenset[str] = frozenset()
    layer_source: str = ""  # e.g. "ONNX node outputs"; default "<name> layer outputs"
    has_own_timing: bool = False
    reference: bool = False

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when usable on this machine, else a one-line reason (cheap: no model loading)."""

    @abstractmethod
    def start(self, artifact: Artifact, context: RunContext, options: Options) -> Session:
        """Load `artifact` (called by open(), which closes the session)."""

    def accepts(self, artifact: Artifact) -> bool:
        return artifact.format in self.formats

    def gives_layer_outputs(self, artifact: Artifact) -> bool:
        return artifact.format in self.layer_formats

    @contextlib.contextmanager
    def open(
        self,
        artifact: Artifact,
        context: RunContext | None = None,
        options: Options | None = None,
    ) -> Iterator[Session]:
        """A session on `artifact`, closed on leaving the block; without a context, the costly
        shared resources it needs (Chromium) are opened for this session alone."""
        if not self.accepts(artifact):
            raise ValueError(f"{self.name} cannot run {artifact.format} artifacts")
        with contextlib.ExitStack() as stack:
            ctx = context if context is not None else stack.enter_context(RunContext())
            session = self.start(artifact, ctx, options or Options())
            stack.callback(session.close)
            yield session

    def run(self, artifact: Artifact, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """open() + infer() for one batch: the outputs only."""
        with self.open(artifact) as session:
            return session.infer(inputs)[0]

    def run_many(
        self, artifacts: list[Artifact], inputs: np.ndarray, context: RunContext | None = None
    ) -> dict[str, tuple[dict[str, np.ndarray], dict] | Exception]:
        """Every artifact on one batch, sharing one context: per id (outputs, info), or the
        exception that artifact raised (a failure of one never stops the others). What verify
        calls; open() + infer() per artifact, unless a runtime whose start is costly and not
        shareable through the context (a Node process) runs them together."""
        results: dict[str, tuple[dict[str, np.ndarray], dict] | Exception] = {}
        with contextlib.ExitStack() as stack:
            ctx = context if context is not None else stack.enter_context(RunContext())
            for a in artifacts:
                try:
                    with self.open(a, ctx) as session:
                        results[a.id] = session.infer(inputs)
                except Exception as e:  # reported per artifact by verify
                    results[a.id] = e
        return results


def single_output(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A single output is keyed "probabilities" whatever the converter named it."""
    if len(values) == 1:
        return {OUTPUT_NAME: np.asarray(next(iter(values.values())), dtype=np.float32)}
    return values


class RuntimeRegistry(Registry[Runtime]):
    """RUNTIMES, with the filters the tests and verify use."""

    def select(self, **flags) -> list[str]:
        """Names whose flags equal the given values, e.g. select(gpu=False)."""
        return [n for n, rt in self.items() if all(getattr(rt, k) == v for k, v in flags.items())]


RUNTIMES: RuntimeRegistry = RuntimeRegistry("runtime")

# Runtime modules, imported by load_runtimes() so each registers its instances.
RUNTIME_MODULES = [
    "edgetl.runtimes.keras_runtime",
    "edgetl.runtimes.onnxruntime_runtime",
    "edgetl.runtimes.litert_runtime",
    "edgetl.runtimes.tfjs_node",
    "edgetl.runtimes.tfjs_browser",
    "edgetl.runtimes.ortweb",
    "edgetl.runtimes.litertjs",
]


def load_runtimes() -> RuntimeRegistry:
    import importlib

    for mod in RUNTIME_MODULES:
        importlib.import_module(mod)
    return RUNTIMES
