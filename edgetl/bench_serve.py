"""`python -m edgetl.bench serve`: `edgetl serve` as a desktop sees it (issue 21).

The real CLI runs in a subprocess under a lowered file-descriptor limit (`ulimit -n 256` by
default). This process then opens many idle connections to it (half of them send half a
request and stop, the rest send nothing), checks that a new client still gets the page, and
downloads a large (sparse) bundle file on several connections at once. The server's peak RSS
(VmHWM) and thread count are read from /proc while that happens, and its stderr is measured.

`--python` runs another checkout's interpreter (e.g. main's venv) for a side-by-side run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SERVE_CODE = "import sys; from edgetl.cli import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class ServeFigures:
    idle: int
    idle_connected: int
    idle_open_at_end: int
    downloads: int
    file_mb: float
    fd_limit: int
    start_rss_mb: float
    peak_rss_mb: float
    peak_threads: int
    new_client_status: int
    new_client_s: float
    downloads_ok: int
    download_s: float
    stderr_bytes: int
    stderr_tail: str


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict ('' values when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def kb(value: str) -> float:
    return float(value.split()[0]) if value else 0.0


def raise_own_fd_limit(need: int) -> None:
    """The client side holds the idle sockets: give this process room for them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(hard, need)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def start_serve(
    bundle: Path, fd_limit: int, python: str = sys.executable, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str]:
    """`edgetl serve BUNDLE --port 0` under RLIMIT_NOFILE = fd_limit; (process, base URL)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    proc = subprocess.Popen(
        [python, "-c", SERVE_CODE, "serve", str(bundle), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=limit,
        cwd=bundle.parent,  # not a checkout: `python -c` would import edgetl from the cwd
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        m = re.match(r"open (http://\S+)", line)
        if m:
            return proc, m.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"edgetl serve did not start: {proc.stderr.read()[-2000:]}")


def split_url(url: str) -> tuple[str, int]:
    m = re.match(r"http://\[?([^\]/]+?)\]?:(\d+)/", url)
    assert m, url
    return m.group(1), int(m.group(2))


def open_idle(host: str, port: int, n: int) -> list[socket.socket]:
    """Up to n connections that never finish a request: odd ones send half a request line.
    Stops after 3 connects in a row time out (a server that stopped accepting)."""
    socks: list[socket.socket] = []
    failed = 0
    for i in range(n):
        try:
            s = socket.create_connection((host, port), timeout=2)
            if i % 2:
                s.sendall(b"GET /app/index.html HTTP/1.1\r\nHost: 127")
        except OSError:
            failed += 1
            if failed == 3:
                break
            continue
        failed = 0
        socks.append(s)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many of the idle sockets the server has not closed."""
    import select

    alive = 0
    for s in socks:
        try:
            r, _, _ = select.select([s], [], [], 0)
            if not r or s.recv(1, socket.MSG_PEEK):
                alive += 1
        except OSError:
            pass
    return alive


def http_get(host: str, port: int, target: str, timeout: float = 30) -> tuple[int, int, bool]:
    """(status, body bytes, gzipped) of one GET, the body read and thrown away in 1 MB
    pieces."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        request = (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept-Encoding: gzip, deflate, br\r\nConnection: close\r\n\r\n"
        )
        s.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return 0, 0, False
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        gzipped = b"\r\ncontent-encoding: gzip" in head.lower()
        size = len(rest)
        while chunk := s.recv(1 << 20):
            size += len(chunk)
    return status, size, gzipped


def measure(
    work: Path,
    *,
    idle: int = 1000,
    downloads: int = 10,
    file_mb: int = 150,
    fd_limit: int = 256,
    python: str = sys.executable,
) -> ServeFigures:
    """The figures for one server: see the module docstring."""
    bundle = work / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "manifest.json").write_text("{}")
    big = bundle / "big.bin"
    with open(big, "wb") as f:
        f.truncate(file_mb * 1024 * 1024)  # sparse: no disk space, real bytes on the wire
    raise_own_fd_limit(idle + 256)
    proc, url = start_serve(bundle, fd_limit, python)
    host, port = split_url(url)
    start_rss = kb(proc_status(proc.pid).get("VmRSS", "")) / 1024
    peak = {"rss": 0.0, "threads": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            st = proc_status(proc.pid)
            if not st:
                return
            peak["rss"] = max(peak["rss"], kb(st.get("VmHWM", "")) / 1024)
            peak["threads"] = max(peak["threads"], int(kb(st.get("Threads", ""))))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    socks: list[socket.socket] = []
    try:
        socks = open_idle(host, port, idle)
        time.sleep(0.5)
        t = time.perf_counter()
        try:
            status, _, _ = http_get(host, port, "/", timeout=20)
        except OSError:
            status = 0
        new_client_s = time.perf_counter() - t
        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(downloads) as pool:
            results = list(
                pool.map(lambda _: _safe_get(host, port, "/bundle/big.bin"), range(downloads))
            )
        download_s = time.perf_counter() - t
        ok = sum(
            1
            for code, size, gzipped in results
            if code == 200 and (gzipped or size == big.stat().st_size)
        )
        idle_left = still_open(socks)
        time.sleep(0.2)
    finally:
        stop.set()
        watcher.join()
        idle_connected = len(socks)
        for s in socks:
            s.close()
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    return ServeFigures(
        idle=idle,
        idle_connected=idle_connected,
        idle_open_at_end=idle_left,
        downloads=downloads,
        file_mb=file_mb,
        fd_limit=fd_limit,
        start_rss_mb=start_rss,
        peak_rss_mb=peak["rss"],
        peak_threads=peak["threads"],
        new_client_status=status,
        new_client_s=new_client_s,
        downloads_ok=ok,
        download_s=download_s,
        stderr_bytes=len(err.encode()),
        stderr_tail=err[-4000:],
    )


def _safe_get(host: str, port: int, target: str) -> tuple[int, int, bool]:
    try:
        return http_get(host, port, target, timeout=120)
    except OSError:
        return 0, 0, False


def table(rows: list[tuple[str, ServeFigures]]) -> str:
    f0 = rows[0][1]
    lines = [
        f"edgetl serve under `ulimit -n {f0.fd_limit}`: {f0.idle} idle connections, then "
        f"{f0.downloads} parallel GETs of a {f0.file_mb:.0f} MB file",
        f"{'server':<10} {'peak RSS':>9} {'threads':>8} {'new client':>14} "
        f"{'downloads ok':>13} {'download s':>11} {'connected':>10} {'idle open':>10} {'stderr':>9}",
    ]
    for name, f in rows:
        lines.append(
            f"{name:<10} {f.peak_rss_mb:>6.0f} MB {f.peak_threads:>8} "
            f"{f.new_client_status:>5} {f.new_client_s:>6.2f} s "
            f"{f.downloads_ok:>6}/{f.downloads:<6} {f.download_s:>11.1f} "
            f"{f.idle_connected:>10} {f.idle_open_at_end:>10} {f.stderr_bytes:>7} B"
        )
    return "\n".join(lines)


def bench_serve(work: Path, quick: bool = False, python: str | None = None) -> str:
    """This checkout's server, and `python`'s beside it when given: under `ulimit -n 256` with
    1,000 idle connections, then the downloads alone (no idle flood, `ulimit -n 1024`)."""
    size = 32 if quick else 150
    servers = [("this", sys.executable)] + ([("other", python)] if python else [])
    tables = []
    for idle, limit in ((1000, 256), (0, 1024)):
        rows = [
            (
                name,
                measure(
                    work / f"{name}-{idle}", idle=idle, fd_limit=limit, file_mb=size, python=py
                ),
            )
            for name, py in servers
        ]
        tables.append(table(rows))
    return "\n\n".join(tables)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgetl.bench_serve", description=__doc__)
    p.add_argument("--python", help="also measure the server of this interpreter (another venv)")
    p.add_argument("--quick", action="store_true", help="a 32 MB file instead of 150 MB")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-serve-") as tmp:
        print(bench_serve(Path(tmp), args.quick, args.python))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
