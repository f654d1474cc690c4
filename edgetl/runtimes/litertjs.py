"""LiteRT.js in real headless Chromium: runtimes "litertjs-wasm" and "litertjs-webgpu".

Every TFLite artifact (float32, float16, dynamic-range, int8) runs in web/harness/litert.html
through @litertjs/core (served from the project's node_modules by edgetl.serve): XNNPACK in
wasm with relaxed SIMD and threads (the page is cross-origin isolated), or LiteRT.js' WebGPU
accelerator. Everything else is the TF.js browser runtime's machinery: the same shared server
and Chromium, the same harness calls, output decoding and comparator.

LiteRT.js refuses a dynamic batch dimension, so edgetl writes every TFLite file with a fixed
batch-1 signature (converters/tflite.py fix_batch; the manifest says options.batch = 1) and the
page runs a batch image by image.

Layer outputs: none. LiteRT.js' CompiledModel exposes only its signature's outputs (no
intermediate tensors, no preserve-all-tensors option), so localization uses native LiteRT.

"litertjs-webgpu" needs a WebGPU adapter: a GPU, or SwiftShader on a machine without one (the
shared Chromium starts with --enable-unsafe-webgpu --use-webgpu-adapter=swiftshader). Its info
says which adapter ran (webgpu_adapter: vendor, architecture).
"""

from __future__ import annotations

from edgetl.runtimes.base import RUNTIMES
from edgetl.runtimes.tfjs_browser import TfjsBrowserRuntime, browser_unavailable_reason
from edgetl.webdir import web_dir

LITERTJS_BACKENDS = ("wasm", "webgpu")
LITERTJS_PAGE = "harness/litert.html"


class LiteRtJsRuntime(TfjsBrowserRuntime):
    """The TF.js browser runtime's sessions (BrowserSession) on LiteRT.js' page."""

    formats = frozenset({"tflite"})
    backends = LITERTJS_BACKENDS
    page_path = LITERTJS_PAGE
    engine = "LiteRT.js"

    def __init__(self, backend: str) -> None:
        if backend not in LITERTJS_BACKENDS:
            raise ValueError(f"unknown LiteRT.js accelerator {backend!r}")
        self.backend = backend
        self.name = f"litertjs-{backend}"
        self.gpu = backend == "webgpu"  # judged by the GPU float32 tolerance
        # --data: a stated sample, as the other browser runtimes (WebGPU on SwiftShader is slow)
        self.data_sample = 200 if backend == "wasm" else 32

    def unavailable_reason(self) -> str | None:
        reason = browser_unavailable_reason()
        if reason:
            return reason
        core = web_dir() / "node_modules" / "@litertjs" / "core" / "dist" / "index.js"
        if not core.is_file():
            return f"{core} is missing (run `npm ci` in {web_dir()})"
        return None  # WebGPU's adapter is looked for in the page (RuntimeUnavailable)


for _backend in LITERTJS_BACKENDS:
    RUNTIMES.register(LiteRtJsRuntime(_backend))
