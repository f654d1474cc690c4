"""Hostile bundles and report paths (issue 21, themes 1, 2 and 4), and a fuzz test of the
manifest.

An attacker controls every byte of a bundle, manifest.json and model.json included, and
"rehashes": rewrites every sha256 and size, so the hash check cannot help. Every case runs the
real CLI (or, for the fuzz test's many mutations, the same validation the CLI runs first) and
checks the exit code, that no traceback is printed, a message a user can act on, the file tree
before and after, and that nothing outside the bundle was opened: the files the attacks point
at are FIFOs watched by a thread (Canary), which sees any open for reading.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import cli, make_bundle, refused, rehash

from edgetl.manifest import BundleError, Manifest, check_integrity, sha256_file

REPO = Path(__file__).resolve().parents[1]
ORT = ["--runtimes", "onnxruntime-cpu", "--no-localize"]
NODE = ["--runtimes", "tfjs-node-cpu,tfjs-node-wasm", "--no-localize"]


class Canary:
    """A FIFO the attacks point at. A thread keeps opening it for writing, which blocks until
    someone opens it for reading: then `opened` is set and the reader gets a few bytes and EOF
    (so a reader never hangs). close() releases the thread and says whether it was opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        self.opened = threading.Event()
        self.closing = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.closing:
            fd = os.open(self.path, os.O_WRONLY)  # returns once a reader opens it
            if not self.closing:
                self.opened.set()
            with contextlib.suppress(OSError):  # the reader may have gone
                os.write(fd, b"\0" * 64)
            os.close(fd)

    def close(self) -> bool:
        self.closing = True
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # releases a pending open
        self.thread.join(timeout=5)
        os.close(fd)
        return self.opened.is_set()


@pytest.fixture
def canaries(tmp_path):
    """Canary FIFOs outside the bundle; the test fails if any was opened."""
    made: dict[str, Canary] = {}

    def make(name: str) -> Path:
        made[name] = Canary(tmp_path / "outside" / name)
        return made[name].path

    yield make
    opened = [name for name, c in made.items() if c.close()]
    assert not opened, f"read outside the bundle: {opened}"


@pytest.fixture
def bundle(tmp_path, tiny_bundle) -> Path:
    """A private copy of the session's tiny bundle (every format), to attack."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "b", symlinks=True))


def model_json(bundle: Path) -> tuple[Path, dict]:
    p = bundle / Manifest.load(bundle).artifact("tfjs_layers").path
    return p, json.loads(p.read_text())


def retarget_shards(bundle: Path, paths: list[str], files: list[str] | None = None) -> None:
    """model.json's shard paths set to `paths` (and, if given, the artifact's listed files to
    `files`), everything rehashed."""
    p, spec = model_json(bundle)
    spec["weightsManifest"][0]["paths"] = paths
    p.write_text(json.dumps(spec))
    if files is not None:
        m = json.loads((bundle / "manifest.json").read_text())
        art = next(a for a in m["artifacts"] if a["id"] == "tfjs_layers")
        art["files"] = [{"path": f, "size": 0, "sha256": "0" * 64} for f in files]
        (bundle / "manifest.json").write_text(json.dumps(m))
    rehash(bundle)


def stat_snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (mode, size, mtime_ns) of everything under root, links not followed: cheap
    enough for a 1 GB sparse file, and it still sees any file replaced or written."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.join(dirpath, n)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def refused_bundle(capsys, bundle, args, *words, watch=None) -> str:
    """`verify BUNDLE ARGS` exits 2 with one line naming `words`; nothing under the bundle
    (or `watch`) changed."""
    if watch is None:
        text = refused(capsys, ["verify", bundle, *args], *words, watch=[bundle])
    else:
        before = stat_snapshot(bundle)
        text = refused(capsys, ["verify", bundle, *args], *words, watch=watch)
        assert stat_snapshot(bundle) == before
    lines = [ln for ln in text.strip().splitlines() if "error" in ln]
    assert len(lines) == 1, text
    return text


# ------------------------------------------------------------ 1. reads outside the bundle


@pytest.mark.node
@pytest.mark.parametrize(
    "shard",
    ["../../outside/shard.bin", "CANARY", "%2e%2e/%2e%2e/outside/shard.bin", "http:/x/shard.bin"],
    ids=["dotdot", "absolute", "url-encoded", "url"],
)
def test_tfjs_shard_outside_the_bundle(tmp_path, capsys, bundle, canaries, shard):
    canary = canaries("shard.bin")
    shard = str(canary) if shard == "CANARY" else shard
    shutil.copyfile(bundle / "tfjs" / "group1-shard1of1.bin", tmp_path / "real.bin")
    retarget_shards(bundle, [shard])
    text = refused_bundle(capsys, bundle, NODE, "tfjs_layers", "refused", watch=[tmp_path])
    assert "outside the bundle" in text or "forbidden character" in text


@pytest.mark.parametrize("kind", ["symlink-out", "fifo-inside", "device-inside"])
def test_tfjs_shard_that_is_no_regular_file(tmp_path, capsys, bundle, canaries, kind):
    shard = bundle / "tfjs" / "group1-shard1of1.bin"
    shard.unlink()
    if kind == "symlink-out":
        shard.symlink_to(canaries("shard.bin"))
        words = ["symbolic link", "outside the bundle"]
    elif kind == "fifo-inside":
        os.mkfifo(shard)
        words = ["not a regular file", "FIFO"]
    else:
        shard.symlink_to("/dev/zero")  # a link out that would read forever
        words = ["symbolic link"]
    t = time.perf_counter()
    refused_bundle(capsys, bundle, NODE, *words)
    assert time.perf_counter() - t < 30  # refused, not hung


def test_appended_sparse_shard_is_refused_before_it_is_read(tmp_path, capsys, bundle):
    """A 1 GB sparse file appended as a second shard, rehashed: the weight specs imply the
    first shard's bytes only, so it is refused by size, before any hashing or loading."""
    big = bundle / "tfjs" / "group1-shard2of2.bin"
    with open(big, "wb") as f:
        f.truncate(1 << 30)
    p, spec = model_json(bundle)
    spec["weightsManifest"][0]["paths"].append(big.name)
    p.write_text(json.dumps(spec))
    m = json.loads((bundle / "manifest.json").read_text())
    art = next(a for a in m["artifacts"] if a["id"] == "tfjs_layers")
    art["files"].append({"path": "tfjs/" + big.name, "size": 1 << 30, "sha256": "0" * 64})
    (bundle / "manifest.json").write_text(json.dumps(m))
    rehash_cheaply(bundle, skip={"tfjs/" + big.name})
    t = time.perf_counter()
    text = refused_bundle(capsys, bundle, NODE, "weight specs", "imply", watch=[])
    assert "shards hold" in text
    assert time.perf_counter() - t < 20  # not hashed: 1 GB would take seconds


def rehash_cheaply(bundle: Path, skip: set[str]) -> None:
    """rehash(), leaving the files in `skip` as recorded (their sha256 would cost seconds)."""
    m = json.loads((bundle / "manifest.json").read_text())
    for a in m["artifacts"]:
        for f in a["files"]:
            if f["path"] not in skip:
                p = bundle / f["path"]
                f["size"], f["sha256"] = p.stat().st_size, sha256_file(p)
        a["size"] = sum(f["size"] for f in a["files"])
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_truncated_shard_rehashed(capsys, bundle):
    shard = bundle / "tfjs" / "group1-shard1of1.bin"
    shard.write_bytes(shard.read_bytes()[:-4096])
    rehash(bundle)
    refused_bundle(capsys, bundle, NODE, "tfjs_layers", "weight specs", "imply")


def test_shard_inside_the_bundle_but_not_listed(capsys, bundle):
    """model.json names a file the manifest does not list and hash (here: the ONNX model's
    bytes as weights, sizes made to fit)."""
    shard = bundle / "tfjs" / "group1-shard1of1.bin"
    (bundle / "tfjs" / "extra.bin").write_bytes(shard.read_bytes())
    retarget_shards(bundle, ["extra.bin"])
    refused_bundle(capsys, bundle, NODE, "tfjs/extra.bin", "does not list and hash")


def test_listed_file_the_model_never_reads(capsys, bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    (bundle / "tfjs" / "notes.bin").write_bytes(b"x" * 100)
    art = next(a for a in m["artifacts"] if a["id"] == "tfjs_layers")
    art["files"].append({"path": "tfjs/notes.bin", "size": 0, "sha256": "0" * 64})
    (bundle / "manifest.json").write_text(json.dumps(m))
    rehash(bundle)
    refused_bundle(capsys, bundle, NODE, "tfjs/notes.bin", "never reads")


@pytest.mark.parametrize("how", ["missing-layer", "renamed-in-config", "repeated-name"])
def test_tfjs_graph_that_would_never_load(capsys, bundle, how):
    """A Layers graph whose node refers to a layer it does not define: TF.js 4.22 loops
    forever in loadLayersModel (measured: a renamed layer, Node still loading after 60 s).
    Refused before Node starts."""
    p, spec = model_json(bundle)
    layers = spec["modelTopology"]["model_config"]["config"]["layers"]
    nested = next(la for la in layers if "layers" in la["config"])["config"]["layers"]
    if how == "missing-layer":
        nested[5]["name"] = nested[5]["config"]["name"] = "renamed"
    elif how == "renamed-in-config":
        nested[5]["config"]["name"] = "other"
    else:
        nested[6]["name"] = nested[6]["config"]["name"] = nested[5]["name"]
    p.write_text(json.dumps(spec))
    rehash(bundle)
    t = time.perf_counter()
    refused_bundle(capsys, bundle, NODE, "tfjs_layers", "refused")
    assert time.perf_counter() - t < 30


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float16"])
def test_quantized_weight_specs_imply_their_own_sizes(tmp_path, bundle, dtype):
    """Quantized TF.js weights take 1 or 2 bytes a value: a shard of exactly that size passes
    the side-file check; a float32-sized one is refused."""
    from edgetl.bundlecheck import TFJS_QUANT_BYTES, tfjs_shards

    p, spec = model_json(bundle)
    weights = spec["weightsManifest"][0]["weights"]
    values = sum(int(np.prod(w["shape"])) for w in weights)
    for w in weights:
        w["quantization"] = {"dtype": dtype, "min": 0.0, "scale": 1.0}
    p.write_text(json.dumps(spec))
    shard = bundle / "tfjs" / "group1-shard1of1.bin"
    with open(shard, "r+b") as f:
        f.truncate(values * TFJS_QUANT_BYTES[dtype])
    assert tfjs_shards(bundle, "tfjs/model.json", "t") == {
        "tfjs/group1-shard1of1.bin": values * TFJS_QUANT_BYTES[dtype]
    }
    with open(shard, "r+b") as f:
        f.truncate(values * 4)
    with pytest.raises(BundleError, match="imply"):
        tfjs_shards(bundle, "tfjs/model.json", "t")


def _onnx_external(bundle: Path, location: str, offset: int | None = None) -> None:
    """The hand-made bundle's ONNX weight moved to external data at `location` (rehashed)."""
    import onnx

    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    t = model.graph.initializer[0]
    t.ClearField("external_data")
    for key, value in [("location", location), ("offset", offset), ("length", 24)]:
        if value is not None:
            t.external_data.add(key=key, value=str(value))
    t.data_location = onnx.TensorProto.EXTERNAL
    t.ClearField("raw_data")
    t.ClearField("float_data")
    onnx.save(model, str(bundle / "model.onnx"))
    rehash(bundle)


def test_onnx_external_data_inside_and_listed_runs(tmp_path, capsys):
    """The positive control: external data listed and hashed is accepted and runs."""
    b = make_bundle(tmp_path / "b", external="weights.bin")
    code, text = cli(capsys, "verify", b, *ORT)
    assert code == 0, text
    assert "onnx" in text and "PASS" in text


@pytest.mark.parametrize(
    "location, words",
    [
        ("../outside/w.bin", ["outside the bundle"]),
        ("CANARY", ["outside the bundle"]),
        ("*/_ORT_MEM_ADDR_/*", ["forbidden character"]),
        ("unlisted.bin", ["does not list and hash"]),
        ("short.bin", ["do not hold the 24 bytes"]),
    ],
    ids=["dotdot", "absolute", "ort-memory-address", "unlisted", "too-short"],
)
def test_onnx_external_data_refused(tmp_path, capsys, canaries, location, words):
    b = make_bundle(tmp_path / "b")
    canary = canaries("w.bin")
    (tmp_path / "outside" / "real.bin").write_bytes(np.ones(6, "<f4").tobytes())
    location = str(canary) if location == "CANARY" else location
    (b / "unlisted.bin").write_bytes(np.ones(6, "<f4").tobytes())
    (b / "short.bin").write_bytes(np.ones(2, "<f4").tobytes())
    if location == "short.bin":  # listed and hashed, but too short for the tensor
        m = json.loads((b / "manifest.json").read_text())
        m["artifacts"][0]["files"].append({"path": "short.bin", "size": 0, "sha256": "0" * 64})
        (b / "manifest.json").write_text(json.dumps(m))
    _onnx_external(b, location)
    refused_bundle(capsys, b, ORT, "artifact onnx", *words, watch=[tmp_path / "outside"])


def test_probe_file_that_is_a_fifo(capsys, tmp_path):
    b = make_bundle(tmp_path / "b")
    (b / "probes" / "expected.bin").unlink()
    os.mkfifo(b / "probes" / "expected.bin")
    refused_bundle(capsys, b, ORT, "probes expected", "not a regular file")


# ------------------------------------------------------------ time limits


@pytest.mark.node
def test_a_hung_runtime_is_an_error_naming_the_pair(tmp_path, monkeypatch):
    """A runtime call that never returns (here TF.js in Node reading a model.json that is a
    FIFO, which the checks above refuse before this point; Node's own limit is set out of
    reach) is abandoned after $EDGETL_RUNTIME_TIMEOUT: its pairs are ERRORs naming the runtime
    and verify goes on with the others (onnxruntime passes)."""
    from edgetl.manifest import ArtifactRecord, read_probes
    from edgetl.results import ERROR, PASS
    from edgetl.runtimes import tfjs_node
    from edgetl.runtimes.base import RUN_LIMIT_ENV, RunContext, load_runtimes
    from edgetl.verifier import Batch, judge_jobs, plan_jobs, run_jobs

    load_runtimes()
    b = make_bundle(tmp_path / "b")
    manifest = Manifest.load(b)
    (b / "tfjs").mkdir()
    os.mkfifo(b / "tfjs" / "model.json")  # what a skipped check would let through
    records = [*manifest.artifacts, ArtifactRecord("tfjs_layers", "tfjs_layers", "float32",
                                                   "tfjs/model.json")]  # fmt: skip
    monkeypatch.setenv(RUN_LIMIT_ENV, "4")
    monkeypatch.setattr(tfjs_node, "run_limit_s", lambda: 120.0)  # Node's own limit: later
    batch = Batch(read_probes(b, manifest))
    names = ["onnxruntime-cpu", "tfjs-node-cpu"]
    jobs = plan_jobs(names, [], records, manifest, b, batch)
    t = time.perf_counter()
    try:
        with RunContext() as context:
            run_jobs(jobs, batch, context, lambda _m: None)
        elapsed = time.perf_counter() - t
        pairs, _ = judge_jobs(jobs, batch, manifest, [])
    finally:  # release the abandoned Node process: it reads EOF and exits
        fd = os.open(b / "tfjs" / "model.json", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    assert elapsed < 60
    got = {(p.artifact, p.runtime): p for p in pairs}
    hung = got[("tfjs_layers", "tfjs-node-cpu")]
    assert hung.status == ERROR and "RuntimeTimeout" in hung.reasons[0], hung.reasons
    assert "tfjs-node-cpu" in hung.reasons[0] and "4 s" in hung.reasons[0]
    assert got[("onnx", "onnxruntime-cpu")].status == PASS


@pytest.mark.node
def test_node_runner_is_stopped_at_its_time_limit(tmp_path):
    """A Node run past its limit is killed and reported as RuntimeTimeout (a model.json that
    is a FIFO never finishes loading)."""
    from edgetl.runtimes.base import RuntimeTimeout
    from edgetl.runtimes.tfjs_node import run_node

    os.mkfifo(tmp_path / "model.json")
    t = time.perf_counter()
    with pytest.raises(RuntimeTimeout, match="timed out after 3 s"):
        run_node("cpu", [("m", "tfjs_layers", tmp_path / "model.json")],
                 np.zeros((1, 8, 8, 3), np.float32), timeout=3)  # fmt: skip
    assert time.perf_counter() - t < 30


# ------------------------------------------------------------ 2. report paths


@pytest.fixture
def ort_bundle(tmp_path) -> Path:
    return make_bundle(tmp_path / "b")


def test_report_into_a_fifo_is_written_not_replaced(tmp_path, capsys, ort_bundle):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(Path(fifo).read_bytes()), daemon=True)
    reader.start()
    code, text = cli(capsys, "verify", ort_bundle, *ORT, "--json", fifo)
    reader.join(timeout=10)
    assert code == 0, text
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(got[0])["ok"] is True


def test_report_through_a_symlink_writes_its_target(tmp_path, capsys, ort_bundle):
    target = tmp_path / "reports" / "verify.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    code, text = cli(capsys, "verify", ort_bundle, *ORT, "--json", link, "--html", tmp_path / "h")
    assert code == 0, text
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["ok"] is True
    assert sorted(p.name for p in target.parent.iterdir()) == ["verify.json"]  # no temp left


def test_report_to_a_character_device_is_written_in_place(tmp_path, capsys, ort_bundle):
    """A character device node is opened and written, never renamed over. As root, a null
    device node of our own in tmp_path (the old code replaced it with a regular file);
    otherwise /dev/null itself, which this code only opens."""
    if os.geteuid() == 0:
        dev = tmp_path / "null"
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    else:
        dev = Path("/dev/null")
    for flag in ("--json", "--junit", "--html"):
        code, text = cli(capsys, "verify", ort_bundle, *ORT, flag, dev)
        assert code == 0, text
        assert stat.S_ISCHR(os.lstat(dev).st_mode), f"{flag} replaced the device"
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


@pytest.mark.parametrize("stdout", ["pipe", "file"])
def test_report_to_dev_stdout_keeps_the_link(tmp_path, ort_bundle, stdout):
    """`--json /dev/stdout` writes the JSON to stdout, between the table and the summary (also
    when stdout is redirected to a file); /dev/stdout stays what it was."""
    before = os.lstat("/dev/stdout")
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "edgetl.cli", "verify", str(ort_bundle), *ORT,
             "--json", "/dev/stdout"],
            stdout=f if stdout == "file" else subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=REPO, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = out.read_text() if stdout == "file" else proc.stdout
    head, body = text.split("{", 1)
    body, tail = ("{" + body).rsplit("}", 1)
    assert "onnxruntime-cpu  PASS" in head and tail.strip().startswith("OK: 1/1")
    assert json.loads(body + "}")["ok"] is True and "Traceback" not in proc.stderr
    after = os.lstat("/dev/stdout")
    assert (stat.S_IFMT(after.st_mode), after.st_ino) == (
        stat.S_IFMT(before.st_mode),
        before.st_ino,
    )


@pytest.mark.parametrize("where", ["manifest", "new-file-inside", "link-into-bundle", "data"])
def test_report_inside_the_bundle_or_data_is_refused(tmp_path, capsys, ort_bundle, where):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    link = tmp_path / "r.json"
    link.symlink_to(ort_bundle / "manifest.json")
    path = {
        "manifest": ort_bundle / "manifest.json",
        "new-file-inside": ort_bundle / "probes" / "report.json",
        "link-into-bundle": link,
        "data": data / "a" / "report.json",
    }[where]
    args = ["verify", ort_bundle, *ORT, "--json", path]
    args += ["--data", data] if where == "data" else []
    t = time.perf_counter()
    text = refused(capsys, args, "--json", "inside the", "choose a path", watch=[tmp_path])
    assert len(text.strip().splitlines()) == 1
    assert time.perf_counter() - t < 10  # before anything runs
    code, _ = cli(capsys, "verify", ort_bundle, *ORT)
    assert code == 0  # the bundle is intact


# ------------------------------------------------------------ 4. manifest contents


def edit_manifest(bundle: Path, change) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    change(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_duplicate_artifact_ids(capsys, ort_bundle):
    edit_manifest(ort_bundle, lambda m: m["artifacts"].append(dict(m["artifacts"][0])))
    refused_bundle(capsys, ort_bundle, ORT, "artifact id 'onnx' appears twice")


def test_export_formats_named_twice_are_one():
    from edgetl.converters import FORMATS

    from edgetl.bundle import check_request

    class Model:  # what check_request reads of a Keras model: its output width
        def __init__(self) -> None:
            self.outputs = [type("T", (), {"shape": (None, 2)})()]

    assert FORMATS.parse_list("onnx,onnx,tflite") == ["onnx", "tflite"]
    formats, quant, _ = check_request(Model(), ["a", "b"], ["onnx", "onnx", "tflite"],
                                      ["float16", "float16"], None)  # fmt: skip
    assert (formats, quant) == (["onnx", "tflite"], ["float16"])


@pytest.mark.parametrize(
    "version, words", [(99, ["newer", "upgrade"]), (1, ["older", "re-export"])]
)
def test_unknown_manifest_version(capsys, ort_bundle, version, words):
    edit_manifest(ort_bundle, lambda m: m.update(manifest_version=version))
    refused_bundle(capsys, ort_bundle, ORT, f"manifest_version {version}", *words)


@pytest.mark.parametrize("which", ["manifest", "model.json"])
def test_deeply_nested_json(tmp_path, capsys, bundle, which):
    deep = "[" * 200_000 + "]" * 200_000
    if which == "manifest":
        text = (bundle / "manifest.json").read_text()
        (bundle / "manifest.json").write_text(text[:-2] + f', "tools": {deep}}}')
    else:
        p, spec = model_json(bundle)
        p.write_text(json.dumps(spec)[:-1] + f', "deep": {deep}}}')
        rehash(bundle)
    text = refused_bundle(capsys, bundle, NODE, "nested deeper than")
    assert "RecursionError" not in text


@pytest.mark.parametrize("labels", [["a"], ["a", "b", "c"]])
def test_labels_that_do_not_fit_the_model(capsys, ort_bundle, labels):
    edit_manifest(ort_bundle, lambda m: m.update(labels=labels))
    refused_bundle(capsys, ort_bundle, ORT, "output_shape", "labels")


def test_labels_and_probes_changed_together_still_disagree_with_the_model(capsys, tmp_path):
    """Three labels and a 3-class probe file, rehashed: the ONNX model itself has 2 outputs."""
    b = make_bundle(tmp_path / "b")
    (b / "probes" / "expected.bin").write_bytes(np.full((1, 3), 1 / 3, "<f4").tobytes())

    def three(m):
        m["labels"] = ["a", "b", "c"]
        m["probes"]["output_shape"] = [1, 3]

    edit_manifest(b, three)
    rehash(b)
    refused_bundle(capsys, b, ORT, "the ONNX model has 2 outputs", "3 labels")


@pytest.mark.parametrize("what", ["probes-only", "contract-and-probes"])
def test_probe_shapes_that_disagree_with_the_model(capsys, tmp_path, what):
    """Probes of 6x6 images for an 8x8 model are a bundle error (exit 2), not an artifact
    failure: alone they disagree with the contract; with the contract changed too, with the
    ONNX model's own input."""
    b = make_bundle(tmp_path / "b")
    (b / "probes" / "inputs.bin").write_bytes(np.zeros((1, 6, 6, 3), "<f4").tobytes())

    def smaller(m):
        m["probes"]["input_shape"] = [1, 6, 6, 3]
        if what == "contract-and-probes":
            m["input"].update(height=6, width=6)

    edit_manifest(b, smaller)
    rehash(b)
    words = ["input_shape", "does not match"] if what == "probes-only" else ["takes [8, 8, 3]"]
    refused_bundle(capsys, b, ORT, *words)


def test_labels_that_do_not_fit_the_source_model(capsys, bundle):
    """Four labels, 4-class golden outputs, rehashed, verifying only a TFLite artifact (so no
    ONNX graph is read): the Keras source model itself has 3 outputs."""
    k = Manifest.load(bundle).probes["count"]
    (bundle / "probes" / "expected.bin").write_bytes(np.full((k, 4), 0.25, "<f4").tobytes())

    def four(m):
        m["labels"] = [*m["labels"], "extra"]
        m["probes"]["output_shape"] = [k, 4]
        m["output"]["shape"] = [None, 4]

    edit_manifest(bundle, four)
    rehash(bundle)
    args = ["--runtimes", "keras,litert", "--artifacts", "tflite_float32", "--no-localize"]
    refused_bundle(capsys, bundle, args, "source model has 3 outputs", "4 labels")


def test_source_model_replaced_is_refused_by_its_hash(capsys, bundle, tmp_path):
    """Another model in source/model.keras (not rehashed): the hash check refuses it."""
    other = make_bundle(tmp_path / "other")
    shutil.copyfile(other / "model.onnx", bundle / "source" / "model.keras")
    t = time.perf_counter()
    refused_bundle(capsys, bundle, ["--runtimes", "keras", "--no-localize"],
                   "source model", "source/model.keras")  # fmt: skip
    assert time.perf_counter() - t < 30  # refused before Keras loads anything


def test_source_model_missing_is_one_line(capsys, bundle):
    (bundle / "source" / "model.keras").unlink()
    text = refused_bundle(capsys, bundle, ["--runtimes", "keras", "--no-localize"],
                          "source model", "missing")  # fmt: skip
    assert "RuntimeUnavailable" not in text
    assert len(text.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["external-link", "external-storage", "extra-member"])
def test_source_model_pointing_outside(capsys, bundle, canaries, kind):
    """The Keras archive's HDF5 weights name a file outside the bundle (an external link, or
    a dataset stored in an external raw file), or the archive holds a member Keras archives
    never hold; rehashed. Refused before Keras opens it; the canary is never read."""
    import io
    import zipfile

    import h5py

    canary = str(canaries("weights.h5"))
    src = bundle / "source" / "model.keras"
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    buf = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buf, "r+") as f:
        if kind == "external-link":
            f["layers/evil"] = h5py.ExternalLink(canary, "/vars")
        elif kind == "external-storage":
            f.create_dataset("layers/evil", shape=(16,), dtype="<f4", external=[(canary, 0, 64)])
    members["model.weights.h5"] = buf.getvalue()
    if kind == "extra-member":
        members["model.weights.npz"] = b"PK"
    with zipfile.ZipFile(src, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    rehash(bundle)
    words = {"external-link": "ExternalLink", "external-storage": "another file",
             "extra-member": "model.weights.npz"}[kind]  # fmt: skip
    refused_bundle(capsys, bundle, ["--runtimes", "keras", "--no-localize"], "source model", words)


def test_real_bundle_passes_every_check(tiny_bundle):
    """The exported bundle itself: every file of every artifact is named, hashed, regular and
    of its implied size (a check that refused real bundles would be worthless)."""
    m = Manifest.load(tiny_bundle)
    check_integrity(tiny_bundle, m)
    assert m.source_model["sha256"] == sha256_file(tiny_bundle / m.source_model["file"])


# ------------------------------------------------------------ 5. fuzz


HOSTILE_STRINGS = [
    "../outside/CANARY", "CANARY_ABS", "tfjs/../../outside/CANARY", "%2e%2e/outside/CANARY",
    "outside/CANARY", "", ".", "/", "//x", "tfjs/group1-shard1of1.bin", "model.onnx",
    "probes/inputs.bin", "manifest.json", "a" * 300, "\u00e9\u0301", "x\\..\\y", "~/x",
    "tfjs/pipe.bin", "tfjs", "http://example.com/x", "\x00",
]  # fmt: skip
# Fields that name a file, a size or a shape: where an attack would aim.
POINTED = {"path", "file", "inputs", "expected", "paths", "size", "shape", "dtype", "count",
           "input_shape", "output_shape", "manifest_version", "labels", "id", "format",
           "height", "width", "layout", "quantization"}  # fmt: skip
HOSTILE_VALUES = [None, True, -1, 0, 1, 2**63, 1e308, -0.0, [], {}, [[[[1]]]], {"a": {"b": 1}}]


def _locations(node) -> list[tuple[object, object]]:
    """Every (container, key) in a JSON tree, walked without recursion."""
    out, stack = [], [node]
    while stack:
        cur = stack.pop()
        keys = list(cur) if isinstance(cur, dict) else range(len(cur))
        for k in keys:
            out.append((cur, k))
            if isinstance(cur[k], dict | list):
                stack.append(cur[k])
    return out


def mutate(tree: dict, rng: np.random.Generator, canary: str) -> str:
    """One random change to a JSON tree in place; returns what it did."""
    spots = _locations(tree)
    shard_lists = {id(c[k]) for c, k in spots if k == "paths"}
    pointed = [(c, k) for c, k in spots if k in POINTED or id(c) in shard_lists]
    if pointed and rng.random() < 0.5:  # half the time: a field that names a file or a size
        spots = pointed
    container, key = spots[int(rng.integers(len(spots)))]
    old = container[key]
    op = rng.choice(["string", "value", "delete", "duplicate", "number"])
    if op == "delete":
        del container[key]
        return f"delete {key!r}"
    if op == "duplicate" and isinstance(old, list) and old:
        old.append(json.loads(json.dumps(old[int(rng.integers(len(old)))])))
        return f"duplicate an item of {key!r}"
    if op == "number" and isinstance(old, int | float) and not isinstance(old, bool):
        container[key] = old + int(rng.choice([-1, 1, 4, -4, 1 << 20]))
        return f"{key!r}: {old} -> {container[key]}"
    if op in ("string", "duplicate", "number"):
        new = str(rng.choice(HOSTILE_STRINGS)).replace("CANARY_ABS", canary)
    else:
        new = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
    new = new.replace("CANARY", "shard.bin") if isinstance(new, str) else new
    container[key] = new
    return f"{key!r}: {str(old)[:40]!r} -> {str(new)[:40]!r}"


_HASHES: dict[tuple, str] = {}


def _sha(p: Path, st: os.stat_result) -> str:
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(p)
    return _HASHES[key]


def attacker_rehash(bundle: Path) -> None:
    """Rewrite every sha256 and size the (mutated) manifest names, as far as its shape allows;
    opens only regular files inside the bundle (never the canaries)."""
    try:
        m = json.loads((bundle / "manifest.json").read_text())
        records = [f for a in m["artifacts"] for f in a["files"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return
    for f in records:
        try:
            p = bundle / f["path"]
            st = os.stat(p)
            if p.resolve().is_relative_to(bundle.resolve()) and stat.S_ISREG(st.st_mode):
                f["size"], f["sha256"] = st.st_size, _sha(p, st)
        except (TypeError, KeyError, OSError, ValueError):
            continue
    for a in m["artifacts"]:
        try:
            a["size"] = sum(f["size"] for f in a["files"])
        except (TypeError, KeyError):
            continue
    (bundle / "manifest.json").write_text(json.dumps(m))


FUZZ_SECONDS = 4.0


def test_fuzz_manifest_and_model_json(tmp_path, capsys, bundle, canaries):
    """Seeded random mutations of manifest.json and model.json, rehashed, for FUZZ_SECONDS:
    the validation verify runs first either accepts the bundle or raises BundleError (never
    another exception), and never opens a canary outside the bundle. A few mutated bundles go
    through the whole CLI too: exit 0, 1 or 2, no traceback."""
    canary = str(canaries("shard.bin"))
    os.mkfifo(bundle / "tfjs" / "pipe.bin")  # a FIFO inside, which must not be opened either
    pristine = {n: (bundle / n).read_bytes() for n in ("manifest.json", "tfjs/model.json")}
    rng = np.random.default_rng(21)
    seen: dict[str, int] = {"accepted": 0, "refused": 0}
    accepted: list[str] = []
    t0, i = time.perf_counter(), 0
    while time.perf_counter() - t0 < FUZZ_SECONDS or i < 20:
        i += 1
        for name, data in pristine.items():
            (bundle / name).write_bytes(data)
        done = []
        for _ in range(int(rng.integers(1, 4))):
            name = str(rng.choice(list(pristine)))
            tree = json.loads((bundle / name).read_text())
            done.append(f"{name}: {mutate(tree, rng, canary)}")
            (bundle / name).write_text(json.dumps(tree))
        attacker_rehash(bundle)
        try:
            check_integrity(bundle, Manifest.load(bundle))
            seen["accepted"] += 1
            accepted.append("; ".join(done))
        except BundleError as e:
            seen["refused"] += 1
            assert "\n" not in str(e).split("failed:")[-1].strip() or "integrity" in str(e)
        except Exception as e:  # the point: nothing else may escape
            pytest.fail(f"mutation {i} ({'; '.join(done)}) raised {type(e).__name__}: {e}")
        if i in (10, 20):  # a few through the real CLI: onnxruntime, then TF.js in Node
            runtimes = ORT if i == 10 else ["--runtimes", "tfjs-node-wasm", "--no-localize"]
            code, text = cli(capsys, "verify", bundle, *runtimes)
            assert code in (0, 1, 2), text
            assert code != 2 or len(text.strip().splitlines()) <= 3, text
    assert seen["refused"] > 10, seen  # the mutations did reach the checks
    print(f"fuzz: {i} mutations in {time.perf_counter() - t0:.1f} s: {seen}")
    print("accepted:\n  " + "\n  ".join(accepted[:10]))
