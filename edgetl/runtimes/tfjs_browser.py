"""TF.js in real headless Chromium: runtimes "tfjs-browser-webgl", "-wasm" and "-cpu".

Python drives web/harness/browser.html through Playwright (the python package, with Debian's
/usr/bin/chromium or $EDGETL_CHROMIUM; Playwright never downloads a browser here). One server
(edgetl.serve) and one Chromium are started lazily per process and shared by the three runtimes,
then closed at exit: start-up costs about a second, a model load a fraction of that.

After each run the runtime's `last_info` holds, per artifact id, what really ran: the backend,
WebGL's precision ("webgl_precision": "float32" or "float16", and the renderer, SwiftShader under
--disable-gpu), wasm SIMD/threads, and timings. Outputs keep the key "probabilities".

Playwright's sync API is bound to the thread that started it: call these runtimes from one thread.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from edgetl.runtimes.base import RUNTIMES, Artifact, Runtime, RuntimeUnavailable, web_dir

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
BACKENDS = ("webgl", "wasm", "cpu")
OUTPUT_NAME = "probabilities"
# Software WebGL compiles a shader per op on first use; MobileNet 1.0/224 takes tens of seconds.
PAGE_TIMEOUT_MS = 300_000
HARNESS_PAGE = "harness/browser.html"


def chromium_path() -> str:
    return os.environ.get("EDGETL_CHROMIUM") or DEFAULT_CHROMIUM


def browser_unavailable_reason() -> str | None:
    """Why a browser runtime cannot run here (None if it can); cheap: starts nothing."""
    exe = chromium_path()
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        return f"Chromium not found at {exe} (install Debian's chromium or set EDGETL_CHROMIUM)"
    if importlib.util.find_spec("playwright") is None:
        return "the python package playwright is not installed"
    tfjs = web_dir() / "node_modules" / "@tensorflow" / "tfjs" / "dist" / "tf.min.js"
    if not tfjs.is_file():
        return f"{tfjs} is missing (run `npm ci` in {web_dir()})"
    return None


class BrowserSession:
    """One server + one headless Chromium, shared by every browser runtime of this process."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        from edgetl.serve import start_server

        self._scratch = Path(tempfile.mkdtemp(prefix="edgetl-browser-"))
        self.server, self.url = start_server(None)
        self.server.roots.mount("/scratch/", self._scratch)
        self._bundles: dict[Path, str] = {}
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True
            )
        except Exception:
            self._pw.stop()
            raise

    def mount_bundle(self, bundle_dir: Path) -> str:
        """URL prefix under which `bundle_dir`'s files are served."""
        bundle_dir = Path(bundle_dir).resolve()
        if bundle_dir not in self._bundles:
            prefix = f"/bundles/{len(self._bundles)}/"
            self.server.roots.mount(prefix, bundle_dir)
            self._bundles[bundle_dir] = prefix
        return self.url.rstrip("/") + self._bundles[bundle_dir]

    def publish_inputs(self, inputs: np.ndarray) -> str:
        """Serve a batch as raw little-endian float32 (the probes' own format); returns its URL."""
        data = np.ascontiguousarray(inputs, dtype="<f4").tobytes()
        name = f"inputs-{hashlib.sha256(data).hexdigest()[:16]}.bin"
        path = self._scratch / name
        if not path.exists():
            path.write_bytes(data)
        return f"{self.url}scratch/{name}"

    def harness_page(
        self, backend: str, num_threads: int | None = None, page_path: str = HARNESS_PAGE
    ):
        """A fresh harness page with `backend` initialized; returns (page, backend info, log).
        Close it with page.context.close(): each harness page has its own browser context.
        `page_path` is the harness (TF.js by default; onnxruntime-web's has the same calls).

        `num_threads` sets the wasm thread count. TF.js 4.22 caps its XNNPACK pool at
        navigator.hardwareConcurrency / 2 (measured: 1 thread on a 2-core machine whatever
        setThreadsCount says), so when more are asked for, the page is told there are
        2 * num_threads cores; info["hardware_concurrency_override"] records it.
        Raises RuntimeUnavailable when the backend does not start (e.g. no WebGL)."""
        context = self.browser.new_context()
        override = None
        tfjs_wasm = backend == "wasm" and page_path == HARNESS_PAGE
        if num_threads and tfjs_wasm and 2 * num_threads > (os.cpu_count() or 1):
            override = 2 * int(num_threads)
            context.add_init_script(
                "Object.defineProperty(Navigator.prototype, 'hardwareConcurrency', "
                f"{{get: () => {override}}});"
            )
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        log: list[str] = []
        page.on("console", lambda m: log.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: log.append(f"pageerror: {e}"))
        try:
            page.goto(self.url + page_path)
            page.wait_for_function("window.edgetlHarnessReady === true")
            opts = {"backend": backend, **({"numThreads": num_threads} if num_threads else {})}
            try:
                info = page.evaluate("(o) => window.edgetlHarness.init(o)", opts)
            except Exception as e:
                engine = "TF.js" if page_path == HARNESS_PAGE else "onnxruntime-web"
                raise RuntimeUnavailable(
                    f"{engine} {backend} backend unavailable in Chromium: {_js_error(e)}"
                ) from None
        except BaseException:
            page.context.close()
            raise
        info["hardware_concurrency_override"] = override
        return page, info, log

    def close(self) -> None:
        from edgetl.serve import stop_server

        for step in (self.browser.close, self._pw.stop, lambda: stop_server(self.server)):
            with contextlib.suppress(Exception):
                step()
        shutil.rmtree(self._scratch, ignore_errors=True)


_session: BrowserSession | None = None
_session_lock = threading.Lock()


def get_session() -> BrowserSession:
    """The process's browser session, started on first use and closed at exit."""
    global _session
    with _session_lock:
        if _session is None:
            reason = browser_unavailable_reason()
            if reason:
                raise RuntimeUnavailable(reason)
            _session = BrowserSession()
            atexit.register(close_session)
        return _session


def close_session() -> None:
    global _session
    with _session_lock:
        if _session is not None:
            _session.close()
            _session = None


def _js_error(e: Exception) -> str:
    text = str(e)
    # Playwright prefixes "Page.evaluate: Error: ..." and appends a call log; keep the message.
    text = text.split("\nCall log:")[0].split("\n    at ")[0].strip()
    for prefix in ("Page.evaluate: ", "Error: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text


def _decode(output: dict) -> np.ndarray:
    raw = base64.b64decode(output["data"])
    return np.frombuffer(raw, dtype="<f4").reshape(output["shape"]).astype(np.float32)


class TfjsBrowserRuntime(Runtime):
    formats = frozenset({"tfjs_layers", "tfjs_graph"})
    page_path = HARNESS_PAGE  # the harness page (edgetl.runtimes.ortweb has its own)
    # Under --disable-gpu WebGL is SwiftShader (software): none of these needs a GPU.
    gpu = False

    def __init__(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown TF.js browser backend {backend!r}")
        self.backend = backend
        self.name = f"tfjs-browser-{backend}"
        self.same_thread = True  # Playwright's sync API is bound to its thread
        # --data sample (MobileNetV2 1.0/160, 2 cores, 216 images): wasm 8 s, software WebGL
        # (SwiftShader) 124 s, the pure-JS cpu backend 155 s
        self.data_sample = 200 if backend == "wasm" else 32
        # artifact id -> {"backend", "webgl_precision", "webgl_renderer", "wasm_simd",
        #                 "wasm_threads", "timings": {load_ms, fetch_ms, infer_ms}, ...}
        self.last_info: dict[str, dict] = {}

    def unavailable_reason(self) -> str | None:
        return browser_unavailable_reason()

    def run(self, artifact: Artifact, inputs: np.ndarray) -> dict[str, np.ndarray]:
        result = self.run_many([artifact], inputs)[artifact.id]
        if isinstance(result, Exception):
            raise result
        return result

    def run_many(
        self, artifacts: list[Artifact], inputs: np.ndarray
    ) -> dict[str, dict[str, np.ndarray] | Exception]:
        """All artifacts in one page of the shared Chromium, the batch fetched once per model."""
        results: dict[str, dict[str, np.ndarray] | Exception] = {}
        self.last_info = {}
        todo = []
        for a in artifacts:
            if self.accepts(a):
                todo.append(a)
            else:
                results[a.id] = ValueError(f"{self.name} cannot run {a.format} artifacts")
        if not todo:
            return results
        try:
            session = get_session()
            page, info, log = session.harness_page(self.backend, page_path=self.page_path)
        except RuntimeUnavailable as e:
            return {**results, **{a.id: e for a in todo}}
        try:
            inputs = np.asarray(inputs, dtype=np.float32)
            inputs_url = session.publish_inputs(inputs)
            for a in todo:
                results[a.id] = self._run_one(session, page, a, inputs, inputs_url, info, log)
        finally:
            page.context.close()
        return results

    def _run_one(
        self,
        session: BrowserSession,
        page,
        artifact: Artifact,
        inputs: np.ndarray,
        inputs_url: str,
        info: dict,
        log: list[str],
    ) -> dict[str, np.ndarray] | Exception:
        try:
            base = session.mount_bundle(artifact.bundle_dir)
            reply = page.evaluate(
                "(o) => window.edgetlHarness.run(o)",
                {
                    "modelUrl": base + artifact.record.path,
                    "format": artifact.format,
                    "inputsUrl": inputs_url,
                    "inputShape": list(inputs.shape),
                    "layout": artifact.record.layout,
                },
            )
        except Exception as e:
            tail = "\n".join(log[-5:])
            return RuntimeError(
                f"{self.name} failed on {artifact.id}: {_js_error(e)}"
                + (f"\nbrowser console:\n{tail}" if tail else "")
            )
        self.last_info[artifact.id] = {**reply["info"], "timings": reply["timings"]}
        outs = reply["outputs"]
        if len(outs) == 1:
            return {OUTPUT_NAME: _decode(outs[0])}
        return {o["name"]: _decode(o) for o in outs}

    @contextlib.contextmanager
    def benchmark_page(self, artifact: Artifact, num_threads: int | None = None):
        """A harness page with `artifact` on this backend, kept open for repeated timing: yields
        measure(runs, warmup) -> batch-1 latency statistics (see benchmark). The bench
        interleaves several such pages so every engine sees the same load on a shared machine.
        Raises RuntimeUnavailable when the backend does not start."""
        from edgetl.manifest import Manifest

        session = get_session()
        page, _, _log = session.harness_page(self.backend, num_threads, self.page_path)
        try:
            payload = {
                "modelUrl": session.mount_bundle(artifact.bundle_dir) + artifact.record.path,
                "format": artifact.format,
                "contract": Manifest.load(artifact.bundle_dir).input.to_dict(),
                "layout": artifact.record.layout,
            }

            def measure(runs: int = 30, warmup: int = 5) -> dict:
                try:
                    return page.evaluate(
                        "(o) => window.edgetlHarness.benchmark(o)",
                        {**payload, "runs": runs, "warmup": warmup},
                    )
                except Exception as e:
                    raise RuntimeError(f"{self.name} benchmark failed: {_js_error(e)}") from None

            yield measure
        finally:
            page.context.close()

    def benchmark(
        self, artifact: Artifact, runs: int = 30, warmup: int = 5, num_threads: int | None = None
    ) -> dict:
        """Batch-1 latency in Chromium (warm-up first): {"median_ms", "mean_ms", "min_ms",
        "p90_ms", "first_ms", "times_ms", "info": {backend, wasm_simd, wasm_threads, ...}}."""
        with self.benchmark_page(artifact, num_threads) as measure:
            return measure(runs, warmup)


for _backend in BACKENDS:
    RUNTIMES.register(f"tfjs-browser-{_backend}", TfjsBrowserRuntime(_backend))
