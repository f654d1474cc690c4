"""`edgetl serve BUNDLE_DIR`: the web app and one bundle on localhost, and nothing else.

The server is also what the browser runtime and the browser tests use (`start_server`). It maps a
few fixed URL prefixes to fixed directories (or single files) and refuses any request that does
not resolve, after percent-decoding and symlink resolution, to a regular file inside one of them.
Every response carries COOP/COEP so the page is cross-origin isolated: the TF.js and
onnxruntime-web wasm backends need SharedArrayBuffer for their threads.

Like a static host: text, JSON, wasm and weight files up to GZIP_MAX_BYTES are sent
gzip-compressed when the client accepts it (compressed once per file version in a small worker
pool, kept in a bounded in-memory cache); larger files are streamed from disk with sendfile, so
memory does not grow with the file or the number of downloads. Every file carries an ETag and
Last-Modified with `Cache-Control: no-cache`, so a browser revalidates and gets 304 Not Modified
instead of the bytes again (a re-exported bundle is seen at once).

Built to sit on a desktop next to a browser (issue 21): one asyncio event loop holds every
connection (no thread per client); a request head must arrive within REQUEST_TIMEOUT_S and a
client that takes no bytes for SEND_STALL_S is dropped; the number of open connections is kept
below the file-descriptor limit, and when it is reached the longest-idle connection is closed
to let a new client in. Only Host names of this machine (127.0.0.1, localhost, [::1], any IP
address, or --allow-host) are answered, so a web page whose DNS name is rebound to 127.0.0.1
cannot read the model (421 Misdirected Request). IPv6 (`--host ::1`) works like IPv4.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import email.utils
import errno
import gzip
import io
import ipaddress
import os
import socket
import stat
import sys
import threading
import time
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
# Larger files are sent as they are, by sendfile: gzip would need the whole body compressed
# before its length is known (or chunked encoding, which loses Content-Length and so the
# browser's progress), and the files that size are float32 weights that shrink little
# (measured: 7% on a 14 MB float32 ONNX; onnxruntime-web's 14 MB wasm shrinks 74% and stays in).
GZIP_MAX_BYTES = 32 * 1024 * 1024
COMPRESS_WORKERS = 2  # threads that gzip (CPU-bound, outside the event loop)

# Connections (issue 21: 1,000 idle connections held 1,003 threads; 300 under `ulimit -n 256`
# stopped every new client).
REQUEST_TIMEOUT_S = 15.0  # a whole request head, first or next on a kept-alive connection
SEND_STALL_S = 30.0  # a client that takes none of a SEND_CHUNK for this long is dropped
SEND_CHUNK = 4 * 1024 * 1024  # bytes per sendfile call (each under SEND_STALL_S)
MAX_HEAD_BYTES = 64 * 1024  # request line + headers; more gets 431
WRITE_PIECE = 256 * 1024  # in-memory (gzip) bodies are written and drained this much at a time
MAX_CONNECTIONS = 1024
FD_RESERVE = 64  # descriptors kept free for files being sent, gzip reads, the rest of the process

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _gzip_file(path: Path) -> bytes:
    """The gzip body of one file, read in 1 MB pieces (runs in the worker pool)."""
    buf = io.BytesIO()
    with (
        open(path, "rb") as src,
        gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz,
    ):
        while piece := src.read(1 << 20):
            gz.write(piece)
    return buf.getvalue()


class _CompressedCache:
    """gzip bodies keyed by (path, size, mtime): compressed once per file version, by a small
    worker pool; concurrent requests for one file wait for the same compression. Used from the
    event loop thread only, so it needs no lock."""

    def __init__(self, executor, limit: int = COMPRESSED_CACHE_BYTES) -> None:
        self.limit = limit
        self.executor = executor
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._pending: dict[tuple, asyncio.Future] = {}
        self._bytes = 0

    async def get(self, key: tuple, path: Path) -> bytes:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(self._compress(key, path))
            self._pending[key] = task
        return await asyncio.shield(task)  # one client leaving does not cancel the others'

    async def _compress(self, key: tuple, path: Path) -> bytes:
        try:
            body = await asyncio.get_running_loop().run_in_executor(self.executor, _gzip_file, path)
        finally:
            self._pending.pop(key, None)
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


def host_allowed(value: str, extra: frozenset[str] = frozenset()) -> bool:
    """Whether a Host header names this machine: a loopback name, an IP address (a page cannot
    rebind a literal address to another server) or a name given with --allow-host; any port."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return False
    else:
        name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    name = name.rstrip(".")
    if not name:
        return False
    if name in LOOPBACK_NAMES or name in extra:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def connection_limit(reserve: int = FD_RESERVE) -> int:
    """How many client connections fit under this process's file-descriptor limit, keeping
    `reserve` free (files being sent, gzip reads) besides those already open."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        return MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 32
    return max(8, min(MAX_CONNECTIONS, soft - open_now - reserve))


def _not_modified(headers: dict[str, str], etag: str, mtime: float) -> bool:
    """Conditional GET: If-None-Match wins over If-Modified-Since (RFC 9110)."""
    inm = headers.get("if-none-match")
    if inm is not None:
        tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
        return "*" in tags or etag in tags
    ims = headers.get("if-modified-since")
    if ims:
        try:
            since = email.utils.parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError):
            return False
        return int(mtime) <= since
    return False


class _BadRequest(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    line: str

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    @property
    def has_body(self) -> bool:
        return "transfer-encoding" in self.headers or self.headers.get(
            "content-length", "0"
        ).strip() not in ("", "0")


def parse_head(head: bytes) -> _Request:
    """Request line and headers of one request (the bytes up to and with the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    while lines and lines[0] == "":  # RFC 9112: ignore empty lines before the request line
        lines.pop(0)
    if not lines:
        raise _BadRequest(400, "Bad Request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha():
        raise _BadRequest(400, "Bad Request")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(505, "HTTP Version Not Supported")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "Bad Request")
        name = name.lower()
        if name == "host" and name in headers:
            raise _BadRequest(400, "Bad Request: more than one Host header")
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    return _Request(method, target, version, headers, lines[0])


@dataclass(eq=False)
class _Conn:
    transport: asyncio.BaseTransport
    idle: bool = True


class EdgetlServer:
    """The server: one asyncio event loop in a daemon thread (see the module docstring).

    `roots` may be changed while it runs (Roots.mount). shutdown() then server_close() stop it,
    like http.server's servers."""

    def __init__(
        self,
        roots: Roots,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        quiet: bool = True,
        allow_hosts: tuple[str, ...] = (),
        request_timeout: float = REQUEST_TIMEOUT_S,
        send_stall: float = SEND_STALL_S,
        max_connections: int | None = None,
    ) -> None:
        self.roots = roots
        self.host = host
        self.quiet = quiet
        self.allow_hosts = frozenset(h.strip().lower().strip("[]") for h in allow_hosts)
        self.request_timeout = request_timeout
        self.send_stall = send_stall
        self.max_connections = max_connections or connection_limit()
        self.conns: OrderedDict[_Conn, None] = OrderedDict()  # oldest activity first
        self.evicted = 0
        self.fd_errors = 0
        self._last_fd_note = 0.0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            COMPRESS_WORKERS, thread_name_prefix="edgetl-gzip"
        )
        self.compressed = _CompressedCache(self._executor)
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task] = set()
        self._room = asyncio.Event()  # set when a connection ends (the limit may let one in)
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._loop_error)
        self._thread = threading.Thread(target=self.loop.run_forever, name="edgetl-serve")
        self._thread.daemon = True
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(port), self.loop).result()
        except BaseException:
            self._stop_loop()
            raise
        self.server_address = self._listeners[0].getsockname()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return f"http://{self.host}:{port}/"  # a name, as the user gave it (localhost)
        return f"http://[{host}]:{port}/" if ip.version == 6 else f"http://{host}:{port}/"

    # ------------------------------------------------------------ life cycle

    async def _listen(self, port: int) -> None:
        """Bind every address of `host` (localhost: 127.0.0.1 and ::1), on one port."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen = set()
        first_error: OSError | None = None
        for family, kind, proto, _, addr in infos:
            if (family, addr[0]) in seen:
                continue
            seen.add((family, addr[0]))
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((addr[0], port, *addr[2:]))
            except OSError as e:
                sock.close()
                first_error = first_error or e  # e.g. localhost's ::1 on a machine without IPv6
                continue
            port = port or sock.getsockname()[1]  # the others on the port the first one got
            sock.listen(512)
            sock.setblocking(False)
            self._listeners.append(sock)
            self._tasks.add(loop.create_task(self._accept_loop(sock)))
        if not self._listeners:
            raise first_error or OSError(errno.EADDRNOTAVAIL, "no address to bind")

    def shutdown(self) -> None:
        if self.loop.is_closed():
            return
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self._close_all(), self.loop).result(timeout=10)
        self._stop_loop()

    def server_close(self) -> None:
        """Kept for http.server compatibility: shutdown() already closed everything."""

    async def _close_all(self) -> None:
        tasks = [*self._tasks, *self.compressed._pending.values()]
        for task in tasks:
            task.cancel()
        for conn in list(self.conns):
            conn.transport.abort()
        self.conns.clear()
        await asyncio.gather(*tasks, return_exceptions=True)  # none left pending at loop close
        for sock in self._listeners:
            sock.close()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _loop_error(self, loop, context: dict) -> None:
        """Errors the loop itself meets (accept failing for lack of descriptors): one line,
        at most every 10 s, never a traceback per connection."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            self._fd_note()
            return
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        print(f"edgetl serve: {context.get('message', 'error')}: {exc!r}", file=sys.stderr)

    # ------------------------------------------------------------ connections

    def _evict_idle(self) -> bool:
        """Close the longest-idle connection (one waiting for a request); False if none is."""
        victim = next((c for c in self.conns if c.idle), None)
        if victim is None:
            return False
        victim.transport.abort()
        self.conns.pop(victim, None)
        self.evicted += 1
        return True

    def _fd_note(self) -> None:
        self.fd_errors += 1
        if time.monotonic() - self._last_fd_note > 10:
            self._last_fd_note = time.monotonic()
            print(
                "edgetl serve: out of file descriptors; new connections wait until some "
                "close (raise the limit with `ulimit -n`)",
                file=sys.stderr,
            )

    async def _accept_loop(self, listener: socket.socket) -> None:
        """Accept one connection at a time, never past max_connections: at the limit the
        longest-idle connection is closed to make room; when every one is busy sending, new
        clients wait in the kernel's queue (not refused) until one ends."""
        loop = asyncio.get_running_loop()
        while True:
            while len(self.conns) >= self.max_connections and not self._evict_idle():
                self._room.clear()
                await self._room.wait()
            try:
                sock, _ = await loop.sock_accept(listener)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._fd_note()
                    await asyncio.sleep(0.1)
                    continue
                return  # the listener was closed (shutdown)
            reader = asyncio.StreamReader(limit=MAX_HEAD_BYTES, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            try:
                transport, _ = await loop.connect_accepted_socket(lambda p=protocol: p, sock)
            except OSError:
                sock.close()
                continue
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            conn = _Conn(transport)
            self.conns[conn] = None
            task = loop.create_task(self._client(conn, reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _client(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        clean = False
        try:
            while conn in self.conns:
                conn.idle = True
                try:
                    head = await asyncio.wait_for(
                        reader.readuntil(b"\r\n\r\n"), self.request_timeout
                    )
                except asyncio.LimitOverrunError:
                    await self._send_error(writer, None, 431, "Request Header Fields Too Large")
                    clean = True
                    break
                except (TimeoutError, asyncio.IncompleteReadError):
                    break
                conn.idle = False
                self.conns.move_to_end(conn)
                if not await self._exchange(head, writer):
                    clean = True
                    break
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            self.conns.pop(conn, None)
            self._room.set()
            if clean and not writer.transport.is_closing():
                writer.close()  # flushes what is buffered (bounded: the last response)
                self.loop.call_later(self.send_stall, writer.transport.abort)
            else:
                writer.transport.abort()

    async def _exchange(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection may carry another."""
        try:
            req = parse_head(head)
        except _BadRequest as e:
            await self._send_error(writer, None, e.code, e.message)
            return False
        host = req.headers.get("host")
        if host is None and req.version == "HTTP/1.1":
            await self._send_error(writer, req, 400, "Bad Request: no Host header")
            return False
        if host is not None and not host_allowed(host, self.allow_hosts):
            await self._send_error(
                writer,
                req,
                421,
                f"Misdirected Request: this server answers only {self.url} (Host "
                f"{host[:100]!r} is not this machine; `edgetl serve --allow-host NAME` adds a "
                "name)",
            )
            return False
        if req.method not in ("GET", "HEAD"):
            await self._send_error(writer, req, 405, "Method Not Allowed", {"Allow": "GET, HEAD"})
            return False
        keep = await self._serve_file(writer, req)
        return keep and req.keep_alive and not req.has_body

    async def _serve_file(self, writer: asyncio.StreamWriter, req: _Request) -> bool:
        """One file, or 304/403/404; False when the connection must close after it."""
        try:
            target = self.roots.resolve(req.target)
        except UnicodeDecodeError:
            target = None
        if target is None:
            # 403 for anything that tries to climb out; 404 for plain misses.
            lowered = req.target.lower()
            climbing = ".." in lowered or "%2e" in lowered or "%5c" in lowered or "\\" in lowered
            code, text = (403, "Forbidden") if climbing else (404, "Not Found")
            await self._send_error(writer, req, code, text)
            return True
        try:
            # O_NONBLOCK: a file swapped for a FIFO after resolve() must not block the loop.
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise FileNotFoundError(errno.ENOENT, "not a regular file", str(target))
            f = os.fdopen(fd, "rb")
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                await self._send_error(writer, req, 503, "Service Unavailable: too many files open")
                return False
            else:
                await self._send_error(writer, req, 404, "Not Found")
            return True
        with f:
            st = os.fstat(f.fileno())
            etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
            headers = {
                "ETag": etag,
                "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                "Cache-Control": CACHE_CONTROL,
                "Vary": "Accept-Encoding",
            }
            if _not_modified(req.headers, etag, st.st_mtime):
                await self._send(writer, req, 304, headers)
                return True
            headers["Content-Type"] = content_type(target)
            if (
                target.suffix.lower() in COMPRESSIBLE
                and MIN_COMPRESS_BYTES <= st.st_size <= GZIP_MAX_BYTES
                and accepts_gzip(req.headers.get("accept-encoding"))
            ):
                key = (str(target), st.st_size, st.st_mtime_ns)
                body = await self.compressed.get(key, target)
                headers["Content-Encoding"] = "gzip"
                await self._send(writer, req, 200, headers, body)
                return True
            headers["Content-Length"] = str(st.st_size)
            await self._send(writer, req, 200, headers, None)
            if req.method == "HEAD" or st.st_size == 0:
                return True
            loop = asyncio.get_running_loop()
            sent = 0
            while sent < st.st_size:
                count = min(SEND_CHUNK, st.st_size - sent)
                n = await asyncio.wait_for(
                    loop.sendfile(writer.transport, f, sent, count), self.send_stall
                )
                if n <= 0:
                    raise ConnectionError("file shrank while being sent")
                sent += n
        return True

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        req: _Request | None,
        code: int,
        headers: dict[str, str],
        body: bytes | None = None,
    ) -> None:
        """Status line, headers (plus COOP/COEP) and an in-memory body (None: the caller
        streams it, or there is none)."""
        from http import HTTPStatus

        lines = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}", "Server: edgetl-serve"]
        lines.append(f"Date: {email.utils.formatdate(usegmt=True)}")
        if body is not None:
            headers = {**headers, "Content-Length": str(len(body))}
        lines += [f"{k}: {v}" for k, v in {**headers, **ISOLATION_HEADERS}.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if body and (req is None or req.method != "HEAD"):
            # In pieces: what the socket does not take at once is copied into the transport's
            # buffer, so one write of a cached body would cost a copy per slow client.
            view = memoryview(body)
            for start in range(0, len(view), WRITE_PIECE):
                writer.write(view[start : start + WRITE_PIECE])
                await asyncio.wait_for(writer.drain(), self.send_stall)
        await asyncio.wait_for(writer.drain(), self.send_stall)
        if not self.quiet:
            size = len(body) if body is not None else headers.get("Content-Length", "-")
            peer = writer.get_extra_info("peername") or ("-",)
            stamp = time.strftime("%d/%b/%Y %H:%M:%S")
            line = req.line if req is not None else "-"
            print(f'{peer[0]} - - [{stamp}] "{line}" {code} {size}', file=sys.stderr)

    async def _send_error(
        self,
        writer: asyncio.StreamWriter,
        req: _Request | None,
        code: int,
        message: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        body = f"{code} {message}\n".encode()
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "Cache-Control": ERROR_CACHE_CONTROL,
            # 403/404 leave the connection open (a page asks for more); the rest close it.
            "Connection": "keep-alive" if code in (403, 404) else "close",
            **(extra or {}),
        }
        await self._send(writer, req, code, headers, body)


def start_server(
    bundle_dir: str | Path | None,
    host: str = "127.0.0.1",
    port: int = 0,
    quiet: bool = True,
    **options,
) -> tuple[EdgetlServer, str]:
    """Serve the web app (and the bundle under /bundle/) from a daemon thread.

    Returns (server, base_url); call stop_server(server) to stop it. bundle_dir None serves the
    app and harness only (more bundles can be mounted later). `options` go to EdgetlServer
    (allow_hosts, request_timeout, send_stall, max_connections)."""
    if bundle_dir is not None:
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():
            raise UserError(
                f"{bundle_dir}: no such bundle directory (make one with "
                "`edgetl export MODEL --out DIR`)"
            )
    roots = default_roots(bundle_dir)
    try:
        server = EdgetlServer(roots, host, port, quiet=quiet, **options)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
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
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host is NAME (e.g. this machine's network name with "
        "--host 0.0.0.0); loopback names and IP addresses are always answered, any other name "
        "gets 421 so a rebound DNS name cannot read the bundle",
    )


def run(args: argparse.Namespace) -> int:
    from edgetl.manifest import MANIFEST_FILE

    if not (args.bundle / MANIFEST_FILE).is_file():
        if not args.bundle.is_dir():
            raise UserError(f"{args.bundle}: no such bundle directory")
        print(f"warning: {args.bundle} has no {MANIFEST_FILE}; the page will say so")
    server, url = start_server(
        args.bundle,
        args.host,
        args.port,
        quiet=not args.verbose,
        allow_hosts=tuple(args.allow_host),
    )
    print(f"serving {args.bundle.resolve()} and the edgetl web app")
    print(f"open {url}", flush=True)
    if args.host not in LOOPBACK_NAMES:
        print(f"note: bound to {args.host}: other machines on the network can reach it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping")
    finally:
        stop_server(server)
    return 0
