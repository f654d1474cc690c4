"""The small interfaces the rest is built on, tested on plain objects (no model, seconds):
RunContext's lifetime, registries keyed by the entry's own name, the Runtime capability flags,
the server's content types and atomic single-file writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from edgetl.registry import Registry
from edgetl.runtimes.base import RunContext


class _Resource:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def close(self) -> None:
        self.log.append(f"close {self.name}")


def test_run_context_opens_once_closes_in_reverse_and_remembers_a_failed_start():
    log: list[str] = []
    starts = []

    def make(name):
        def factory():
            starts.append(name)
            return _Resource(log, name)

        return factory

    with RunContext() as ctx:
        a = ctx.get("a", make("a"))
        assert ctx.get("a", make("a")) is a  # made once per run
        ctx.get("b", make("b"))

        def broken():
            starts.append("broken")
            raise RuntimeError("no browser here")

        for _ in range(2):
            with pytest.raises(RuntimeError, match="no browser"):
                ctx.get("c", broken)
    assert starts == ["a", "b", "broken"]  # a failed start is not retried
    assert log == ["close b", "close a"]


def test_registry_takes_the_name_from_the_entry_and_refuses_it_twice():
    @dataclass(frozen=True)
    class Entry:
        name: str

    reg: Registry[Entry] = Registry("thing")
    reg.register(Entry("x"))
    assert reg.names() == ["x"] and reg.get("x") == Entry("x")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(Entry("x"))
    with pytest.raises(ValueError, match="valid: x"):
        reg.get("y")


def test_every_runtime_declares_its_capabilities_as_flags():
    from edgetl.runtimes.base import load_runtimes

    runtimes = load_runtimes()
    for name, rt in runtimes.items():
        assert rt.name == name and rt.formats, name
        assert rt.layer_formats <= rt.formats, name
    assert [n for n, rt in runtimes.items() if rt.reference] == ["keras"]
    from edgetl.runtimes.tfjs_browser import TfjsBrowserRuntime

    # Playwright's sync API binds every runtime that drives Chromium to one thread
    in_chromium = {n for n, rt in runtimes.items() if isinstance(rt, TfjsBrowserRuntime)}
    assert {"tfjs-browser-wasm", "ort-web-wasm", "litertjs-wasm"} <= in_chromium
    assert set(runtimes.select(same_thread=True)) == in_chromium
    assert set(runtimes.select(gpu=True)) == {
        "onnxruntime-cuda",
        "onnxruntime-tensorrt",
        "ort-web-webgpu",
        "litertjs-webgpu",
        "tfjs-browser-webgpu",
    }


def test_open_refuses_an_artifact_of_another_format():
    from edgetl.manifest import ArtifactRecord
    from edgetl.runtimes.base import RUNTIMES, Artifact, load_runtimes

    load_runtimes()
    onnx = Artifact(ArtifactRecord("onnx", "onnx", "float32", "model.onnx"), Path("."))
    with pytest.raises(ValueError, match="cannot run onnx"), RUNTIMES.get("litert").open(onnx):
        pass
    assert isinstance(RUNTIMES.get("litert").run_many([onnx], None)["onnx"], ValueError)


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("a.mjs", "text/javascript; charset=utf-8"),
        ("a.js", "text/javascript; charset=utf-8"),
        ("a.wasm", "application/wasm"),
        ("model.json", "application/json"),
        ("a.html", "text/html; charset=utf-8"),
        ("a.png", "image/png"),
        ("group1-shard1of1.bin", "application/octet-stream"),
        ("model.onnx", "application/octet-stream"),
    ],
)
def test_server_content_types(name, ctype):
    from edgetl.serve import content_type

    assert content_type(Path(name)) == ctype


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    from edgetl.outdir import atomic_write

    target = tmp_path / "report.json"
    atomic_write(target, b"old")

    def half(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
