"""`edgetl serve BUNDLE_DIR`: the web app and one bundle on localhost, and nothing else.

The server is also what the browser runtime and the browser tests use (`start_server`). It maps a
few fixed URL prefixes to fixed directories (or single files) and refuses any request that does
not resolve, after percent-decoding and symlink resolution, to a regular file inside one of them.
Every response carries COOP/COEP so the page is cross-origin isolated: the TF.js wasm backend
needs SharedArrayBuffer for its threads.
"""

from __future__ import annotations

import argparse
import http.server
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.errors import UserError

BUNDLE_PREFIX = "/bundle/"
INDEX_PAGE = "/app/index.html"

# The only files served from node_modules: URL name under /vendor/ -> path below web/node_modules.
VENDOR_FILES = {
    "tf.min.js": "@tensorflow/tfjs/dist/tf.min.js",
    "tf.min.js.map": "@tensorflow/tfjs/dist/tf.min.js.map",
    "tf-backend-wasm.min.js": "@tensorflow/tfjs-backend-wasm/dist/tf-backend-wasm.min.js",
    "tf-backend-wasm.min.js.map": "@tensorflow/tfjs-backend-wasm/dist/tf-backend-wasm.min.js.map",
    "tfjs-backend-wasm.wasm": "@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm",
    "tfjs-backend-wasm-simd.wasm": "@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm",
    "tfjs-backend-wasm-threaded-simd.wasm": "@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-threaded-simd.wasm",
}
# onnxruntime-web: the wasm-only and the WebGPU builds, and the wasm binaries each imports.
ORT_DIST = "onnxruntime-web/dist/"
VENDOR_FILES.update(
    {
        f"ort/{name}": ORT_DIST + name
        for name in (
            "ort.wasm.min.mjs",
            "ort.webgpu.min.mjs",
            "ort-wasm-simd-threaded.mjs",
            "ort-wasm-simd-threaded.wasm",
            "ort-wasm-simd-threaded.asyncify.mjs",
            "ort-wasm-simd-threaded.asyncify.wasm",
        )
    }
)

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".bin": "application/octet-stream",
    ".onnx": "application/octet-stream",
    ".tflite": "application/octet-stream",
    ".keras": "application/octet-stream",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def web_root() -> Path:
    from edgetl.runtimes.base import web_dir

    return web_dir()


@dataclass
class Roots:
    """URL prefix -> directory; vendor name -> file. Mutable so a running server can mount more
    bundles (the browser runtime serves artifacts of several bundles from one server)."""

    dirs: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mount(self, prefix: str, directory: Path) -> None:
        if not (prefix.startswith("/") and prefix.endswith("/")):
            raise ValueError(f"mount prefix must look like /name/, got {prefix!r}")
        with self.lock:
            self.dirs[prefix] = Path(directory).resolve()

    def resolve(self, raw_target: str) -> Path | None:
        """The file a request target names, or None when it names nothing servable."""
        path = urllib.parse.urlsplit(raw_target).path  # drops ?query and #fragment
        if not path.startswith("/") or path.startswith("//"):
            return None  # absolute-form or scheme-relative targets
        decoded = urllib.parse.unquote(path, errors="strict")
        if "\\" in decoded or "\x00" in decoded:
            return None
        if decoded == "/":
            decoded = INDEX_PAGE
        if decoded.startswith("/vendor/"):
            name = decoded[len("/vendor/") :]
            return self.files.get(name)
        with self.lock:
            mounts = sorted(self.dirs.items(), key=lambda kv: -len(kv[0]))
        for prefix, root in mounts:
            if not decoded.startswith(prefix):
                continue
            parts = decoded[len(prefix) :].split("/")
            # No "..", ".", empty segments or dotfiles, before any filesystem access.
            if not parts or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
                return None
            candidate = root.joinpath(*parts).resolve()  # follows symlinks
            if not candidate.is_relative_to(root) or not candidate.is_file():
                return None
            return candidate
        return None


def default_roots(bundle_dir: Path | None) -> Roots:
    web = web_root()
    roots = Roots()
    for name in ("app", "lib", "harness"):
        roots.mount(f"/{name}/", web / name)
    modules = web / "node_modules"
    roots.files = {
        name: (modules / rel).resolve()
        for name, rel in VENDOR_FILES.items()
        if (modules / rel).is_file()
    }
    if bundle_dir is not None:
        roots.mount(BUNDLE_PREFIX, bundle_dir)
    return roots


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "edgetl-serve"
    protocol_version = "HTTP/1.1"
    roots: Roots  # set on the per-server subclass
    quiet: bool = True

    def _send_error(self, code: int, message: str) -> None:
        body = f"{code} {message}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self) -> None:
        try:
            target = self.roots.resolve(self.path)
        except UnicodeDecodeError:
            target = None
        if target is None:
            # 403 for anything that tries to climb out; 404 for plain misses.
            lowered = self.path.lower()
            climbing = ".." in lowered or "%2e" in lowered or "%5c" in lowered or "\\" in lowered
            self._send_error(403 if climbing else 404, "Forbidden" if climbing else "Not Found")
            return
        try:
            data = target.read_bytes()
        except OSError:
            self._send_error(404, "Not Found")
            return
        self.send_response(200)
        ctype = MIME_TYPES.get(target.suffix.lower(), "application/octet-stream")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _refuse_method(self) -> None:
        self._send_error(405, "Method Not Allowed")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


class EdgetlServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    roots: Roots

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def start_server(
    bundle_dir: str | Path | None, host: str = "127.0.0.1", port: int = 0, quiet: bool = True
) -> tuple[EdgetlServer, str]:
    """Serve the web app (and the bundle under /bundle/) from a daemon thread.

    Returns (server, base_url); call server.shutdown() and server.server_close() to stop it.
    bundle_dir None serves the app and harness only (more bundles can be mounted later)."""
    if bundle_dir is not None:
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():
            raise UserError(
                f"{bundle_dir}: no such bundle directory (make one with "
                "`edgetl export MODEL --out DIR`)"
            )
    roots = default_roots(bundle_dir)
    handler = type("EdgetlHandler", (_Handler,), {"roots": roots, "quiet": quiet})
    try:
        server = EdgetlServer((host, port), handler)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    server.roots = roots
    thread = threading.Thread(target=server.serve_forever, name="edgetl-serve", daemon=True)
    thread.start()
    return server, server.url


def stop_server(server: EdgetlServer) -> None:
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle directory written by `edgetl export`")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    from edgetl.argtypes import add_number

    add_number(
        p, "--port", kind=int, lo=0, hi=65535, default=8000, help="port (0 picks a free one)"
    )
    p.add_argument("--verbose", action="store_true", help="log every request")


def run(args: argparse.Namespace) -> int:
    from edgetl.manifest import MANIFEST_FILE

    if not (args.bundle / MANIFEST_FILE).is_file():
        if not args.bundle.is_dir():
            raise UserError(f"{args.bundle}: no such bundle directory")
        print(f"warning: {args.bundle} has no {MANIFEST_FILE}; the page will say so")
    server, url = start_server(args.bundle, args.host, args.port, quiet=not args.verbose)
    print(f"serving {args.bundle.resolve()} and the edgetl web app")
    print(f"open {url}", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: bound to {args.host}: other machines on the network can reach it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping")
    finally:
        stop_server(server)
    return 0
