"""`edgetl serve` on a desktop (issue 21): idle connections are closed and never stop a new
client, downloads stream with bounded memory, only this machine's Host names are answered, and
IPv6 loopback works. The fd-limit and memory cases run the real CLI in a subprocess (edgetl.
bench_serve) so the lowered RLIMIT_NOFILE and the RSS are the server's own."""

from __future__ import annotations

import gzip
import socket
import time
from pathlib import Path

import pytest

from edgetl import bench_serve
from edgetl.serve import GZIP_MAX_BYTES, host_allowed, start_server, stop_server


@pytest.fixture()
def bundle(tmp_path) -> Path:
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "manifest.json").write_text('{"name": "secret-model"}')
    return b


def request(
    addr: tuple[str, int],
    head: str,
    family: int = socket.AF_INET,
) -> tuple[int, dict[str, str], bytes]:
    """Send one raw request head; (status, headers, body) until the server closes."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(addr)
        s.sendall(head.encode("latin-1"))
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def get(addr, target: str, host: str | None = "127.0.0.1", extra: str = "", version="1.1"):
    host_line = f"Host: {host}\r\n" if host is not None else ""
    return request(
        addr, f"GET {target} HTTP/{version}\r\n{host_line}{extra}Connection: close\r\n\r\n"
    )


@pytest.fixture()
def served(bundle):
    server, _ = start_server(bundle, request_timeout=0.5, max_connections=8)
    yield server
    stop_server(server)


def test_idle_and_half_sent_connections_are_closed(served):
    """A connection that sends nothing, or half a request, is closed after the request timeout
    (the old server held each one, and a thread for it, forever)."""
    addr = served.server_address[:2]
    silent = socket.create_connection(addr, timeout=10)
    half = socket.create_connection(addr, timeout=10)
    half.sendall(b"GET /bundle/manifest.json HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    t = time.monotonic()
    assert silent.recv(100) == b"" and half.recv(100) == b""  # closed by the server
    assert time.monotonic() - t < 5
    silent.close()
    half.close()


def test_a_new_client_is_served_when_the_connection_limit_is_reached(served):
    """At max_connections the longest-idle connection makes room for the new client."""
    addr = served.server_address[:2]
    idle = [socket.create_connection(addr, timeout=10) for _ in range(12)]
    status, _, body = get(addr, "/bundle/manifest.json")
    assert status == 200 and b"secret-model" in body
    assert len(served.conns) <= served.max_connections and served.evicted >= 4
    for s in idle:
        s.close()


def test_300_idle_connections_under_a_low_fd_limit_leave_the_server_serving(tmp_path):
    """The real CLI under RLIMIT_NOFILE 128: 300 idle connections (the old server stopped
    accepting and printed 'Too many open files' tracebacks), then a new client and downloads;
    threads stay bounded (the old server had one per connection)."""
    f = bench_serve.measure(tmp_path, idle=300, downloads=2, file_mb=4, fd_limit=128)
    assert f.idle_connected == 300, f
    assert f.new_client_status == 200 and f.downloads_ok == 2, f
    assert f.peak_threads <= 8, f  # main, event loop, getaddrinfo, gzip pool (measured 4-5)
    assert "Traceback" not in f.stderr_tail and "Too many open files" not in f.stderr_tail


def test_parallel_large_downloads_keep_memory_bounded(tmp_path):
    """4 parallel GETs of a 64 MB file (sparse: it costs no disk) stream from disk: the
    server's peak RSS grows by far less than one file (the old server read each whole file,
    +256 MB here; measured growth with sendfile: a few MB)."""
    f = bench_serve.measure(tmp_path, idle=0, downloads=4, file_mb=64, fd_limit=1024)
    assert f.downloads_ok == 4, f
    assert f.peak_rss_mb - f.start_rss_mb < 32, f


def test_large_files_are_sent_as_they_are_small_ones_gzipped(bundle):
    """Above GZIP_MAX_BYTES a file goes by sendfile with its real Content-Length (even when the
    client accepts gzip); a small one is still gzipped, with ETag and COOP/COEP on both."""
    big = bundle / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(GZIP_MAX_BYTES + 1)
    small = bundle / "small.bin"
    small.write_bytes(b"\1\2\3\4" * 4096)
    server, _ = start_server(bundle)
    try:
        addr = server.server_address[:2]
        status, h, body = get(addr, "/bundle/big.bin", extra="Accept-Encoding: gzip\r\n")
        assert status == 200 and "content-encoding" not in h
        assert int(h["content-length"]) == len(body) == GZIP_MAX_BYTES + 1
        assert h["cross-origin-embedder-policy"] == "require-corp" and h["etag"]
        status, h, body = get(addr, "/bundle/small.bin", extra="Accept-Encoding: gzip\r\n")
        assert status == 200 and h["content-encoding"] == "gzip"
        assert gzip.decompress(body) == small.read_bytes()
        status, _, body = get(addr, "/bundle/small.bin", extra=f"If-None-Match: {h['etag']}\r\n")
        assert status == 304 and body == b""
    finally:
        stop_server(server)


@pytest.mark.parametrize(
    "host, ok",
    [
        ("127.0.0.1", True),
        ("127.0.0.1:8000", True),
        ("localhost", True),
        ("LOCALHOST:9000", True),
        ("localhost.", True),
        ("[::1]", True),
        ("[::1]:8000", True),
        ("192.168.1.20:8000", True),  # an address cannot be rebound to another server
        ("attacker.example", False),
        ("attacker.example:8000", False),
        ("localhost.attacker.example", False),
        ("127.0.0.1.nip.io", False),
        ("[::1", False),
        ("", False),
    ],
)
def test_host_allow_list(host, ok):
    assert host_allowed(host) is ok


def test_dns_rebinding_host_is_refused(bundle):
    """A page on attacker.example rebound to 127.0.0.1 sends its own name as Host: 421, and
    the bundle is not in the answer. --allow-host adds a name."""
    server, _ = start_server(bundle, allow_hosts=("mybox.lan",))
    try:
        addr = server.server_address[:2]
        for host in ("attacker.example", "attacker.example:8000"):
            status, h, body = get(addr, "/bundle/manifest.json", host=host)
            assert status == 421 and b"secret-model" not in body, body
            assert b"--allow-host" in body and h["cache-control"] == "no-store"
        for host in ("localhost:1234", "[::1]:80", "mybox.lan:8000"):
            status, _, body = get(addr, "/bundle/manifest.json", host=host)
            assert status == 200 and b"secret-model" in body, host
        status, _, _ = get(addr, "/bundle/manifest.json", host=None)  # HTTP/1.1 needs Host
        assert status == 400
        status, _, body = get(addr, "/bundle/manifest.json", host=None, version="1.0")
        assert status == 200 and b"secret-model" in body
    finally:
        stop_server(server)


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_ipv6_loopback(bundle):
    """`--host ::1` once failed with 'Address family for hostname not supported'."""
    server, url = start_server(bundle, host="::1")
    try:
        port = server.server_address[1]
        assert url == f"http://[::1]:{port}/"
        head = "GET /bundle/manifest.json HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n"
        status, _, body = request(("::1", port), head, socket.AF_INET6)
        assert status == 200 and b"secret-model" in body
    finally:
        stop_server(server)


def test_serve_cli_refuses_an_address_it_cannot_bind(bundle, capsys):
    from edgetl.cli import main

    assert main(["serve", str(bundle), "--host", "192.0.2.1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 192.0.2.1" in err and "Traceback" not in err
