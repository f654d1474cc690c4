"""onnxruntime-web in real headless Chromium: runtimes "ort-web-wasm" and "ort-web-webgpu".

The ONNX artifact runs in web/harness/ort.html (onnxruntime-web from the project's
node_modules, served by edgetl.serve; wasm with SIMD and, the page being cross-origin isolated,
one thread per core). Everything else is the TF.js browser runtime's machinery: the same shared
server and Chromium session, the same harness calls and output decoding, the same comparator.

"ort-web-webgpu" needs a WebGPU adapter. Headless Chromium with --disable-gpu has none; the page
finds that out (navigator.gpu / requestAdapter()) and the runtime is reported unavailable with
that reason, never as a pass.
"""

from __future__ import annotations

from edgetl.runtimes.base import RUNTIMES
from edgetl.runtimes.tfjs_browser import TfjsBrowserRuntime, browser_unavailable_reason
from edgetl.webdir import web_dir

ORT_BACKENDS = ("wasm", "webgpu")
ORT_PAGE = "harness/ort.html"


class OrtWebRuntime(TfjsBrowserRuntime):
    """The TF.js browser runtime's sessions (BrowserSession) on onnxruntime-web's page."""

    formats = frozenset({"onnx"})
    backends = ORT_BACKENDS
    page_path = ORT_PAGE

    def __init__(self, backend: str) -> None:
        if backend not in ORT_BACKENDS:
            raise ValueError(f"unknown onnxruntime-web backend {backend!r}")
        self.backend = backend
        self.name = f"ort-web-{backend}"
        self.description = f"ONNX in onnxruntime-web in headless Chromium, {backend}"
        self.gpu = backend == "webgpu"  # judged by the GPU float32 tolerance
        self.data_sample = 200  # as TF.js wasm: a stated stratified sample with --data

    def unavailable_reason(self) -> str | None:
        reason = browser_unavailable_reason()
        if reason:
            return reason
        ort = web_dir() / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs"
        if not ort.is_file():
            return f"{ort} is missing (run `npm ci` in {web_dir()})"
        return None  # WebGPU's adapter is looked for in the page (RuntimeUnavailable)


for _backend in ORT_BACKENDS:
    RUNTIMES.register(OrtWebRuntime(_backend))
