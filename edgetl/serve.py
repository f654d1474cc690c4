"""`edgetl serve BUNDLE_DIR`: the web app and one bundle on localhost, and nothing else.

The server is also what the browser runtime and the browser tests use (`start_server`). It maps a
few fixed URL prefixes to fixed directories (or single files) and refuses any request that does
not resolve, after percent-decoding and symlink resolution, to a regular file inside one of them.
Every response carries COOP/COEP so the page is cross-origin isolated: the TF.js and
onnxruntime-web wasm backends need SharedArrayBuffer for their threads.

Like a static host: text, JSON, wasm and weight files are sent gzip-compressed when the client
accepts it (compressed once per file version, kept in a small in-memory cache), and every file
carries an ETag and Last-Modified with `Cache-Control: no-cache`, so a browser revalidates and
gets 304 Not Modified instead of the bytes again (a re-exported bundle is seen at once).
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import http.server
import threading
import urllib.parse
from collections import OrderedDict
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

# LiteRT.js: its ES module, the helper it imports by bare name (an import map in the page points
# it here) and every wasm build (it picks compat / plain / threaded / JSPI by the browser's
# features).
LITERTJS = "@litertjs/"
VENDOR_FILES["litertjs/index.js"] = LITERTJS + "core/dist/index.js"
VENDOR_FILES["litertjs/wasm-utils.js"] = LITERTJS + "wasm-utils/dist/index.js"
VENDOR_FILES.update(
    {
        f"litertjs/wasm/litert_wasm_{build}internal.{ext}": f"{LITERTJS}core/wasm/"
        f"litert_wasm_{build}internal.{ext}"
        for build in ("", "compat_", "threaded_", "jspi_")
        for ext in ("js", "wasm")
    }
)
# TF.js' WebGPU backend (a script beside tf.min.js; it registers the "webgpu" backend).
VENDOR_FILES["tf-backend-webgpu.min.js"] = (
    "@tensorflow/tfjs-backend-webgpu/dist/tf-backend-webgpu.min.js"
)

# Content types from the standard table (mimetypes), with the few that must be exact for the
# browser whatever the host's /etc/mime.types says: ES modules, wasm (streaming compilation
# refuses another type) and JSON; text types are served as UTF-8.
MIME_OVERRIDES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".map": "application/json",
}


def content_type(path: Path) -> str:
    import mimetypes

    suffix = path.suffix.lower()
    ctype = MIME_OVERRIDES.get(suffix) or mimetypes.guess_type(f"x{suffix}", strict=False)[0]
    ctype = ctype or "application/octet-stream"
    return f"{ctype}; charset=utf-8" if ctype.startswith("text/") else ctype


ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
# Revalidate every time (ETag / Last-Modified): cheap 304s, never a stale bundle.
CACHE_CONTROL = "no-cache"
ERROR_CACHE_CONTROL = "no-store"
# Worth gzipping: text, wasm (14 MB -> ~4 MB) and weights (uint8/float16 shards, ONNX, TFLite).
COMPRESSIBLE = frozenset(
    {".html", ".js", ".mjs", ".css", ".json", ".map", ".svg", ".txt", ".wasm", ".bin", ".onnx"}
)
MIN_COMPRESS_BYTES = 1024
GZIP_LEVEL = 6  # 14 MB of wasm in ~0.6 s once, then served from the cache
COMPRESSED_CACHE_BYTES = 256 * 1024 * 1024


class _CompressedCache:
    """gzip bodies keyed by (path, size, mtime): compressed once per file version."""

    def __init__(self, limit: int = COMPRESSED_CACHE_BYTES) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple, data: bytes) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        body = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
        with self._lock:
            self._items[key] = body
            self._bytes += len(body)
            while self._bytes > self.limit and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)
        return body


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header allows gzip (q > 0), "*" included."""
    allowed = {}
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if name:
            allowed[name.strip().lower()] = q
    return allowed.get("gzip", allowed.get("*", 0.0)) > 0


def web_root() -> Path:
    from edgetl.webdir import web_dir

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
    compressed: _CompressedCache  # set on the per-server subclass
    quiet: bool = True

    def _send_error(self, code: int, message: str) -> None:
        body = f"{code} {message}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", ERROR_CACHE_CONTROL)
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
            st = target.stat()
            etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
            if self._not_modified(etag, st.st_mtime):
                self._send_headers(304, etag, st.st_mtime)
                self.end_headers()
                return
            data = target.read_bytes()
        except OSError:
            self._send_error(404, "Not Found")
            return
        suffix = target.suffix.lower()
        encoding = None
        if (
            suffix in COMPRESSIBLE
            and len(data) >= MIN_COMPRESS_BYTES
            and accepts_gzip(self.headers.get("Accept-Encoding"))
        ):
            data = self.compressed.get((str(target), st.st_size, st.st_mtime_ns), data)
            encoding = "gzip"
        self._send_headers(200, etag, st.st_mtime)
        self.send_header("Content-Type", content_type(target))
        self.send_header("Content-Length", str(len(data)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_headers(self, code: int, etag: str, mtime: float) -> None:
        self.send_response(code)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(mtime, usegmt=True))
        self.send_header("Cache-Control", CACHE_CONTROL)
        self.send_header("Vary", "Accept-Encoding")
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)

    def _not_modified(self, etag: str, mtime: float) -> bool:
        """Conditional GET: If-None-Match wins over If-Modified-Since (RFC 9110)."""
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
            return "*" in tags or etag in tags
        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                return False
            return int(mtime) <= since
        return False

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
    handler = type(
        "EdgetlHandler",
        (_Handler,),
        {"roots": roots, "quiet": quiet, "compressed": _CompressedCache()},
    )
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
