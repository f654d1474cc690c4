"""TF.js in real headless Chromium: runtimes "tfjs-browser-webgl", "-wasm" and "-cpu".

Python drives web/harness/browser.html through Playwright (the python package, with Debian's
/usr/bin/chromium or $EDGETL_CHROMIUM; Playwright never downloads a browser here). One Chromium
(with its edgetl.serve server) is a resource of the RunContext: started on the first open() of
a run, shared by the three runtimes, closed with the context (verify closes it at the end of
its run). Chromiums open at the same time in one thread share Playwright's driver. Start-up costs about a second, a model load a fraction of that. Each backend gets one
harness page per Chromium; a session with Options.threads gets a page of its own.

A session's info holds what really ran: the backend, WebGL's precision ("webgl_precision":
"float32" or "float16", and the renderer, SwiftShader under --disable-gpu), wasm SIMD/threads,
and timings. benchmark() times inside the page (has_own_timing).

Playwright's sync API is bound to the thread that started it: call these runtimes from one thread.
"""

from __future__ import annotations

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

from edgetl.runtimes.base import (
    RUN_LIMIT_ENV,
    RUNTIMES,
    Artifact,
    Options,
    RunContext,
    RuntimeTimeout,
    RuntimeUnavailable,
    Session,
    run_limit_s,
)
from edgetl.runtimes.tfjs_common import TfjsRuntime, decode_outputs, float32_array
from edgetl.webdir import web_dir

DEFAULT_CHROMIUM = "/usr/bin/chromium"
# WebGPU on every machine: without --disable-gpu, and with --enable-unsafe-webgpu (headless
# Linux Chromium exposes no WebGPU otherwise), a machine with a GPU gives its real adapter; one
# without falls back to SwiftShader (--use-webgpu-adapter=swiftshader: vendor "google",
# architecture "swiftshader"), so the WebGPU code of every browser engine runs in CI.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--enable-unsafe-webgpu",
    "--use-webgpu-adapter=swiftshader",
]
BACKENDS = ("webgl", "wasm", "cpu", "webgpu")
CHROMIUM = "chromium"  # RunContext key of the shared browser
# Software WebGL compiles a shader per op on first use; MobileNet 1.0/224 takes tens of seconds.
PAGE_TIMEOUT_MS = 300_000
HARNESS_PAGE = "harness/browser.html"
# What each harness page runs, for messages.
ENGINES = {
    HARNESS_PAGE: "TF.js",
    "harness/ort.html": "onnxruntime-web",
    "harness/litert.html": "LiteRT.js",
}
TIMED_OUT = "ran past its limit of"
# A harness call raced against a timer: [call, options, limit in ms].
EVALUATE_WITHIN = (
    "([call, o, ms]) => Promise.race([window.edgetlHarness[call](o), new Promise((_, no) => "
    f"setTimeout(() => no(new Error(`{TIMED_OUT} ${{ms / 1000}} s`)), ms))])"
)


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


class Chromium:
    """One server + one headless Chromium, shared by every browser runtime of a run. A context
    manager: leaving the block (or close()) stops the browser, the server and their files."""

    def __init__(self) -> None:
        from edgetl.serve import start_server

        self._scratch = Path(tempfile.mkdtemp(prefix="edgetl-browser-"))
        self.server, self.url = start_server(None)
        self.server.roots.mount("/scratch/", self._scratch)
        self._bundles: dict[Path, str] = {}
        self._pages: dict[str, tuple | Exception] = {}
        self._closed = False
        pw = _acquire_driver()
        try:
            self.browser = pw.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True
            )
        except Exception:
            _release_driver()
            raise

    @classmethod
    def launch(cls) -> Chromium:
        """A started Chromium, or RuntimeUnavailable saying why it cannot start here."""
        reason = browser_unavailable_reason()
        if reason:
            raise RuntimeUnavailable(reason)
        return cls()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def backend_page(self, backend: str, page_path: str = HARNESS_PAGE):
        """The harness page `page_path` with `backend` (made once per Chromium; a backend that
        failed to start fails again without retrying): (page, backend info, console log)."""
        key = f"{page_path}#{backend}"
        if key not in self._pages:
            try:
                self._pages[key] = self.harness_page(backend, page_path=page_path)
            except RuntimeUnavailable as e:
                self._pages[key] = e
        got = self._pages[key]
        if isinstance(got, Exception):
            raise got
        return got

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
                engine = ENGINES.get(page_path, "TF.js")
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

        if self._closed:
            return
        self._closed = True
        for got in self._pages.values():
            if not isinstance(got, Exception):
                with contextlib.suppress(Exception):
                    got[0].context.close()
        self._pages.clear()
        for step in (self.browser.close, _release_driver, lambda: stop_server(self.server)):
            with contextlib.suppress(Exception):
                step()
        shutil.rmtree(self._scratch, ignore_errors=True)


# Playwright's sync driver: a second sync_playwright() in a thread that runs one fails ("Sync
# API inside the asyncio loop"), so the Chromiums open in a thread (a test's, verify's) share
# one driver, started by the first and stopped with the last.
_drivers: dict[int, list] = {}  # thread id -> [Playwright, number of Chromiums using it]
_drivers_lock = threading.Lock()


def _acquire_driver():
    from playwright.sync_api import sync_playwright

    with _drivers_lock:
        entry = _drivers.get(threading.get_ident())
        if entry is None:
            entry = _drivers[threading.get_ident()] = [sync_playwright().start(), 0]
        entry[1] += 1
        return entry[0]


def _release_driver() -> None:
    with _drivers_lock:
        entry = _drivers.get(threading.get_ident())
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _drivers[threading.get_ident()]
            entry[0].stop()


# onnxruntime-web's WebGPU error for a float16 model on an adapter without shader-f16
# (SwiftShader has none): "Program Transpose requires f16 but the device does not support it"
NO_SHADER_F16 = "requires f16 but the device does not support it"


def _js_error(e: Exception) -> str:
    text = str(e)
    # Playwright prefixes "Page.evaluate: Error: ..." and appends a call log; keep the message.
    text = text.split("\nCall log:")[0].split("\n    at ")[0].strip()
    for prefix in ("Page.evaluate: ", "Error: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text


def _decode(output: dict) -> np.ndarray:
    return float32_array(base64.b64decode(output["data"]), output["shape"])


class BrowserSession(Session):
    """One artifact on one backend's page of the run's Chromium."""

    runtime: TfjsBrowserRuntime

    def __init__(self, runtime, artifact: Artifact, chromium: Chromium, options: Options):
        super().__init__(runtime, artifact)
        self.chromium = chromium
        self.own_page = bool(options.threads)
        page_path = runtime.page_path
        if self.own_page:
            self.page, self.page_info, self.log = chromium.harness_page(
                runtime.backend, options.threads, page_path
            )
        else:
            self.page, self.page_info, self.log = chromium.backend_page(runtime.backend, page_path)
        self.base = chromium.mount_bundle(artifact.bundle_dir)

    def _evaluate(self, call: str, options: dict):
        """A harness call, bounded by run_limit_s() (page.evaluate itself has no timeout: a
        fetch that never ends would hold verify), as RuntimeTimeout when it runs past it."""
        limit_ms = int(run_limit_s() * 1000)
        try:
            return self.page.evaluate(EVALUATE_WITHIN, [call, options, limit_ms])
        except Exception as e:
            message = _js_error(e)
            if TIMED_OUT in message:
                raise RuntimeTimeout(
                    f"{self.runtime.name} on {self.artifact.id}: the page call {message} "
                    f"(${RUN_LIMIT_ENV} sets the limit)"
                ) from None
            if NO_SHADER_F16 in message:  # the adapter, not the artifact: not run here
                raise RuntimeUnavailable(
                    f"the WebGPU adapter has no shader-f16, which {self.artifact.id}'s float16 "
                    "kernels need (a GPU adapter with shader-f16 runs it)"
                ) from None
            tail = "\n".join(self.log[-5:])
            raise RuntimeError(
                f"{self.runtime.name} failed on {self.artifact.id}: {message}"
                + (f"\nbrowser console:\n{tail}" if tail else "")
            ) from None

    def infer(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        x = np.asarray(x, dtype=np.float32)
        reply = self._evaluate(
            "run",
            {
                "modelUrl": self.base + self.artifact.record.path,
                "format": self.artifact.format,
                "inputsUrl": self.chromium.publish_inputs(x),
                "inputShape": list(x.shape),
                "layout": self.artifact.record.layout,
            },
        )
        info = {**reply["info"], "timings": reply["timings"]}
        return decode_outputs(reply["outputs"], _decode), info

    def benchmark(self, x: np.ndarray | None = None, runs: int = 30, warmup: int = 5) -> dict:
        """Batch-1 latency timed inside the page on the harness' own image (warm-up first):
        {"median_ms", "mean_ms", "min_ms", "p90_ms", "first_ms", "times_ms", "info": {backend,
        wasm_simd, wasm_threads, ...}}."""
        from edgetl.manifest import Manifest

        contract = Manifest.load(self.artifact.bundle_dir).input.to_dict()
        return self._evaluate(
            "benchmark",
            {
                "modelUrl": self.base + self.artifact.record.path,
                "format": self.artifact.format,
                "contract": contract,
                "layout": self.artifact.record.layout,
                "runs": runs,
                "warmup": warmup,
            },
        )

    def close(self) -> None:
        if self.own_page:
            with contextlib.suppress(Exception):
                self.page.context.close()


class TfjsBrowserRuntime(TfjsRuntime):
    host = "browser"
    backends = BACKENDS
    page_path = HARNESS_PAGE  # the harness page (edgetl.runtimes.ortweb has its own)
    # WebGL is judged by its reported precision (tolerances.default_tolerance); WebGPU by the GPU
    # float32 tolerance, on a real adapter or SwiftShader's (the info says which ran).
    gpu = False
    same_thread = True  # Playwright's sync API is bound to its thread
    has_own_timing = True

    def __init__(self, backend: str) -> None:
        super().__init__(backend)
        self.gpu = backend == "webgpu"

    def unavailable_reason(self) -> str | None:
        return browser_unavailable_reason()

    def start(self, artifact: Artifact, context: RunContext, options: Options) -> BrowserSession:
        chromium = context.get(CHROMIUM, Chromium.launch)
        return BrowserSession(self, artifact, chromium, options)


for _backend in BACKENDS:
    RUNTIMES.register(TfjsBrowserRuntime(_backend))
