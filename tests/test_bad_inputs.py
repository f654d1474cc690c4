"""Every bad input gets a clear answer and loses nothing (issue 10).

One case per row of the issue, plus a few more. Each runs the real CLI (in-process where it can,
a subprocess where a real signal or a real stderr matters) and checks the exit code, that no
traceback is printed, that the message says what to do, and that no file was lost or left over.
Most cases are refused before TensorFlow is imported, so the file is fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgetl.cli import main

REPO = Path(__file__).resolve().parents[1]
A = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--size", "96", "--weights", "none"]
A += ["--epochs", "1"]


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under roots (links not followed) -> (size, sha256 prefix)."""
    out: dict[str, tuple[int, str]] = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = (-1, "dir")
            for f in filenames:
                p = os.path.join(dirpath, f)
                if os.path.islink(p) or not os.path.isfile(p):
                    out[p] = (-2, "special")
                    continue
                data = Path(p).read_bytes()
                out[p] = (len(data), hashlib.sha256(data).hexdigest()[:16])
    return out


def cli(capsys, *args) -> tuple[int, str]:
    """Run `edgetl ARGS` in-process; (exit code, stdout + stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse usage errors
        code = e.code if isinstance(e.code, int) else 2
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert "Traceback" not in text, text
    return code, text


def refused(capsys, args, *words, watch=(), code=2) -> str:
    """Assert `edgetl ARGS` exits `code` with every word in its message, changing no file
    under `watch`."""
    before = snapshot(*watch)
    got, text = cli(capsys, *args)
    assert got == code, text
    for w in words:
        assert w.lower() in text.lower(), f"{w!r} not in: {text}"
    assert snapshot(*watch) == before, "files changed"
    return text


@pytest.fixture
def good(tmp_path) -> Path:
    """A small 3-class folder of PNGs (3 per class), own to each test."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "good"
    for c in ("cats", "dogs", "fish"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            px = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run folder whose files must survive (the checks come before the model is read)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"not read")
    (run / "metrics.json").write_text("{}")
    (run / "training_curves.png").write_bytes(b"png")
    return run


# ------------------------------------------------------------ security: verify stays inside


def tiny_onnx(path: Path, classes: int = 2, size: int = 8, external: str | None = None) -> Path:
    """A real ONNX classifier (mean over pixels -> MatMul -> Softmax) for [N, size, size, 3]
    float32 input, built with onnx.helper (no TensorFlow); `external`: its weight goes to that
    external data file beside it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.linspace(-1, 1, 3 * classes, dtype=np.float32).reshape(3, classes)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["z"]),
            helper.make_node("Softmax", ["z"], ["y"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location=external,
                  size_threshold=0)  # fmt: skip
    else:
        onnx.save(model, str(path))
    return path


def make_bundle(
    root: Path,
    *,
    onnx_path="model.onnx",
    onnx_file=None,
    probes_inputs=None,
    source=None,
    external: str | None = None,
) -> Path:
    """A hand-made bundle (no TensorFlow): a manifest, probes, a source model file and a real
    'onnx' artifact whose golden outputs onnxruntime reproduces (`external`: its weight in
    that external data file, listed and hashed)."""
    from edgetl.manifest import MANIFEST_VERSION, sha256_file

    root.mkdir(parents=True, exist_ok=True)
    (root / "probes").mkdir(exist_ok=True)
    (root / "source").mkdir(exist_ok=True)
    (root / "source" / "model.keras").write_bytes(b"a source model, not loaded here")
    x = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)).astype("<f4")
    (root / "probes" / "inputs.bin").write_bytes(x.tobytes())
    real = onnx_file or (root / "model.onnx")
    files = [onnx_path]
    if onnx_file is None:
        tiny_onnx(real, external=external)
        files += [external] if external else []
        import onnxruntime as ort

        y = ort.InferenceSession(str(real)).run(None, {"x": x})[0].astype("<f4")
    else:
        y = np.full((1, 2), 0.5, "<f4")
    (root / "probes" / "expected.bin").write_bytes(y.tobytes())

    def record(rel: str) -> dict:
        p = real if rel == onnx_path else root / rel
        return {"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)}

    src = root / "source" / "model.keras"
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "name": "crafted",
        "labels": ["a", "b"],
        "input": {"height": 8, "width": 8},
        "output": {"activation": "softmax"},
        "source_model": {
            "file": source or "source/model.keras",
            "size": src.stat().st_size,
            "sha256": sha256_file(src),
        },
        "tools": {},
        "artifacts": [
            {
                "id": "onnx",
                "format": "onnx",
                "precision": "float32",
                "path": onnx_path,
                "files": [record(f) for f in files],
            }
        ],
        "probes": {
            "count": 1,
            "names": ["synthetic:0"],
            "inputs": probes_inputs or "probes/inputs.bin",
            "expected": "probes/expected.bin",
            "input_shape": [1, 8, 8, 3],
            "output_shape": [1, 2],
            "sha256": {
                "inputs": sha256_file(
                    Path(probes_inputs) if probes_inputs else root / "probes/inputs.bin"
                ),
                "expected": sha256_file(root / "probes/expected.bin"),
            },
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_verify_refuses_artifact_path_climbing_out(tmp_path, capsys):
    passwd = Path("/etc/passwd")
    bundle = make_bundle(tmp_path / "b", onnx_path="../../../../../../etc/passwd", onnx_file=passwd)
    refused(
        capsys,
        ["verify", bundle, "--runtimes", "onnxruntime-cpu"],
        "outside the bundle",
        "refused",
        watch=[tmp_path],
    )


def test_verify_refuses_absolute_artifact_path(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "b", onnx_path="/etc/passwd", onnx_file=Path("/etc/passwd"))
    refused(capsys, ["verify", bundle], "outside the bundle", watch=[tmp_path])


def test_verify_refuses_model_outside_the_bundle_via_symlink(tmp_path, capsys):
    outside = tmp_path / "elsewhere" / "model.onnx"
    outside.parent.mkdir()
    outside.write_bytes(b"some onnx model")
    bundle = make_bundle(tmp_path / "b", onnx_file=outside)
    (bundle / "model.onnx").unlink(missing_ok=True)
    (bundle / "model.onnx").symlink_to(outside)
    refused(capsys, ["verify", bundle], "symbolic link", "outside the bundle", watch=[tmp_path])


def test_verify_refuses_probe_inputs_outside(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "b", probes_inputs="/etc/passwd")
    refused(capsys, ["verify", bundle], "probes inputs", "outside the bundle", watch=[tmp_path])


def test_verify_refuses_source_model_outside(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "b", source="../other/model.keras")
    refused(capsys, ["verify", bundle], "source model", "outside the bundle", watch=[tmp_path])


def test_verify_refuses_main_path_not_among_hashed_files(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "b")
    m = json.loads((bundle / "manifest.json").read_text())
    (bundle / "other.onnx").write_bytes(b"unhashed")
    m["artifacts"][0]["path"] = "other.onnx"
    (bundle / "manifest.json").write_text(json.dumps(m))
    refused(capsys, ["verify", bundle], "not among its hashed files", watch=[tmp_path])


def test_verify_refuses_lambda_source_model_with_a_message(tmp_path, capsys):
    import keras

    bundle = make_bundle(tmp_path / "b")
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inp, out).save(bundle / "source" / "model.keras")
    rehash(bundle)
    refused(
        capsys,
        ["verify", bundle, "--runtimes", "keras"],
        "source model",
        "lambda",
        watch=[tmp_path],
    )


def rehash(bundle: Path) -> dict:
    """Record every named file's current size and sha256 in the manifest, as an attacker
    would; returns the manifest."""
    from edgetl.manifest import sha256_file

    m = json.loads((bundle / "manifest.json").read_text())
    for a in m["artifacts"]:
        for f in a["files"]:
            p = bundle / f["path"]
            if p.is_file():
                f["size"], f["sha256"] = p.stat().st_size, sha256_file(p)
        a["size"] = sum(f["size"] for f in a["files"])
        a["sha256"] = next((f["sha256"] for f in a["files"] if f["path"] == a["path"]), "")
    src = bundle / m["source_model"]["file"]
    if src.is_file():
        m["source_model"]["size"], m["source_model"]["sha256"] = (
            src.stat().st_size,
            sha256_file(src),
        )
    for key in ("inputs", "expected"):
        p = bundle / m["probes"][key]
        if p.is_file():
            m["probes"]["sha256"][key] = sha256_file(p)
    (bundle / "manifest.json").write_text(json.dumps(m))
    return m


# ------------------------------------------------------------ tracebacks -> messages


def test_train_out_is_an_existing_file(tmp_path, capsys, good):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    refused(capsys, ["train", good, "--out", f, *A], "existing file", "--force", watch=[tmp_path])


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--batch-size", "0", ["--batch-size", "[1, 65536]"]),
        ("--dropout", "1.5", ["--dropout", "[0, 1)"]),
        ("--lr", "nan", ["--lr", "finite"]),
        ("--lr", "-1", ["--lr", "(0, 10]"]),
        ("--epochs", "0", ["--epochs", "[1, 100000]"]),
        ("--val-split", "1", ["--val-split", "[0, 1)"]),
        ("--label-smoothing", "inf", ["--label-smoothing", "finite"]),
        ("--seed", "-3", ["--seed"]),
        ("--hidden-units", "many", ["--hidden-units", "integer"]),
        ("--size", "0", ["--size", ">= 1"]),
    ],
)
def test_train_numeric_flags_checked_at_parse_time(tmp_path, capsys, good, flag, value, words):
    refused(
        capsys,
        ["train", good, "--out", tmp_path / "o", *A, f"{flag}={value}"],
        *words,
        watch=[tmp_path],
    )


def test_help_shows_ranges_and_defaults(capsys):
    code, text = cli(capsys, "train", "--help")
    assert code == 0
    flat = " ".join(text.split())
    assert "--batch-size BATCH_SIZE (range [1, 65536]; default: 32)" in flat
    assert "(range [0, 1); default: 0.2)" in flat  # dropout
    code, text = cli(capsys, "serve", "--help")
    assert "[0, 65535]" in text and "default: 8000" in " ".join(text.split())


def test_corrupt_weights_file(tmp_path, capsys, good):
    w = tmp_path / "broken.weights.h5"
    w.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2000))
    args = ["train", good, "--out", tmp_path / "o", *A[:-4], "--weights", w, "--epochs", "1"]
    refused(capsys, args, "not a readable keras weights file", watch=[tmp_path])


@pytest.mark.slow
@pytest.mark.parametrize(
    "backbone, alpha, size",
    [("mobilenet_v2", "0.5", "96"), ("mobilenet_v1", "0.25", "128")],
    ids=["other-alpha", "other-architecture"],
)
def test_weights_of_another_backbone(tmp_path, capsys, good, local_weights, backbone, alpha, size):
    w = local_weights("mobilenet_v2")  # made for mobilenet_v2 alpha 0.35
    args = [
        "train",
        good,
        "--out",
        tmp_path / "o",
        "--backbone",
        backbone,
        "--alpha",
        alpha,
        "--size",
        size,
        "--weights",
        w,
        "--epochs",
        "1",
        "--cache-dir",
        "",
    ]
    text = refused(
        capsys,
        args,
        "these weights are for mobilenet_v2 alpha 0.35",
        f"not {backbone} alpha {alpha}",
        watch=[tmp_path],
    )
    assert len(text) < 2000


def test_export_bad_tfjs_quantize_is_refused_before_any_work(tmp_path, capsys, fake_run):
    out = tmp_path / "bundle"
    before = snapshot(fake_run)
    code, text = cli(capsys, "export", fake_run, "--out", out, "--tfjs-quantize", "int4")
    assert code == 2 and "int4" in text and "float16" in text and "uint8" in text, text
    code, text = cli(
        capsys, "export", fake_run, "--out", out, "--formats", "onnx", "--tfjs-quantize", "uint8"
    )
    assert code == 2 and "--tfjs-quantize applies to TF.js" in text, text
    assert len(text.strip().splitlines()) == 1
    assert not out.exists() and snapshot(fake_run) == before


def test_export_out_under_immutable_folder(tmp_path, capsys, fake_run):
    # /sys refuses new entries even to root (EPERM), like an immutable (chattr +i) folder.
    refused(
        capsys,
        ["export", fake_run, "--out", "/sys/edgetl-test/bundle"],
        "cannot write",
        "/sys",
        watch=[tmp_path],
    )
    assert not Path("/sys/edgetl-test").exists()


def test_export_out_under_read_only_folder(tmp_path, capsys, fake_run, monkeypatch):
    import tempfile

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(tempfile, "mkdtemp", deny)
    refused(
        capsys,
        ["export", fake_run, "--out", tmp_path / "ro" / "b"],
        "permission denied",
        "choose another --out",
        watch=[tmp_path],
    )


@pytest.mark.parametrize("flag", ["--json", "--html", "--junit"])
def test_verify_report_into_missing_folder_checked_first(tmp_path, capsys, flag):
    bundle = make_bundle(tmp_path / "b")
    t = time.perf_counter()
    refused(
        capsys,
        ["verify", bundle, flag, tmp_path / "nope" / "r.out"],
        "does not exist",
        flag,
        watch=[tmp_path],
    )
    assert time.perf_counter() - t < 5  # refused before any runtime starts


def test_verify_report_paths_folder_or_same_file(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "b")
    refused(capsys, ["verify", bundle, "--json", tmp_path], "is a folder", watch=[tmp_path])
    f = tmp_path / "r.txt"
    refused(capsys, ["verify", bundle, "--json", f, "--html", f], "same file", watch=[tmp_path])


def test_serve_port_out_of_range(tmp_path, capsys):
    refused(capsys, ["serve", tmp_path, "--port", "99999"], "--port", "[0, 65535]")


# ------------------------------------------------------------ silent damage


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from edgetl.data import load_image, read_rgb

    a = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")  # mode I;16 -> 16-bit grayscale PNG
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    rgb = read_rgb(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    assert (rgb == 255).mean() < 0.01
    assert abs(float(rgb.mean()) - 127.5) < 2
    assert np.allclose(rgb[..., 0], np.rint(a / 257.0), atol=1)
    assert load_image(tmp_path / "deep.png", 8, 8).max() <= 255


def test_symlinks_out_of_and_back_into_the_tree_are_not_followed(tmp_path, good):
    from edgetl.data import scan_image_folder

    (good / "loop").symlink_to(good)  # back to the root: would be a 4th class of duplicates
    (good / "cats" / "again").symlink_to(good / "dogs")
    outside = tmp_path / "outside.png"
    (good / "cats" / "0.png").rename(outside)
    (good / "cats" / "0.png").symlink_to(outside)
    folder = scan_image_folder(good)
    assert folder.classes == ["cats", "dogs", "fish"]
    assert len(folder.files) == 8
    why = {p.name: w for p, w in folder.skipped}
    assert "symbolic link" in why["loop"] and "symbolic link" in why["again"]
    assert "symbolic link" in why["0.png"]


def test_fifo_in_class_folder_is_skipped_not_read(good):
    from edgetl.data import scan_image_folder

    os.mkfifo(good / "cats" / "pipe.png")
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("scan hung on a FIFO"))
    signal.alarm(20)
    try:
        folder = scan_image_folder(good)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert ("pipe.png", "not a regular file (FIFO, socket or device)") in [
        (p.name, w) for p, w in folder.skipped
    ]


def test_train_out_non_empty_folder_needs_force(tmp_path, capsys, good, fake_run):
    refused(
        capsys, ["train", good, "--out", fake_run, *A], "not empty", "--force", watch=[tmp_path]
    )


@pytest.mark.parametrize("where", ["inside", "equal", "parent"])
def test_train_out_inside_or_over_the_data_folder(tmp_path, capsys, good, where):
    out = {"inside": good / "cats" / "run", "equal": good, "parent": tmp_path}[where]
    refused(capsys, ["train", good, "--out", out, *A, "--force"], "data folder", watch=[tmp_path])


@pytest.mark.slow
def test_nan_loss_stops_and_writes_nothing(tmp_path, capsys, good):
    from edgetl.train import TrainConfig, TrainingDiverged, train

    cfg = TrainConfig(
        backbone="mobilenet_v2",
        alpha=0.35,
        size=96,
        weights=None,
        epochs=2,
        batch_size=2,
        learning_rate=float("nan"),
        cache_dir="",
    )
    before = snapshot(tmp_path)
    with pytest.raises(TrainingDiverged, match="lower learning rate"):
        train(good, tmp_path / "run", cfg, progress=False)
    assert snapshot(tmp_path) == before
    capsys.readouterr()


def _save_model(path: Path, units: int, activation: str | None) -> Path:
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(units, activation=activation)(x)
    keras.Model(inp, out).save(path)
    return path


@pytest.mark.parametrize(
    "units, activation, words",
    [
        (1, None, ["1 output unit", "regression"]),
        (3, None, ["'linear'", "not softmax", "--add-softmax"]),
        (3, "sigmoid", ["'sigmoid'", "not softmax"]),
    ],
    ids=["regression-dense1", "logits", "sigmoid"],
)
def test_model_without_softmax_is_refused_with_reason(tmp_path, capsys, units, activation, words):
    m = _save_model(tmp_path / "m.keras", units, activation)
    refused(
        capsys,
        ["export", m, "--out", tmp_path / "b", "--labels", "a,b,c"],
        *words,
        watch=[tmp_path],
    )


def test_labels_file_missing(tmp_path, capsys, fake_run):
    refused(
        capsys,
        [
            "export",
            fake_run / "model.keras",
            "--out",
            tmp_path / "b",
            "--labels",
            tmp_path / "nofile.json",
        ],
        "no such file",
        "nofile.json",
        watch=[tmp_path],
    )


def test_duplicate_labels_refused(tmp_path, capsys, fake_run):
    refused(
        capsys,
        ["export", fake_run / "model.keras", "--out", tmp_path / "b", "--labels", "a,a,a"],
        "duplicate",
        "'a'",
        watch=[tmp_path],
    )


@pytest.mark.parametrize("which", ["run", "parent", "model-parent"])
def test_export_out_equal_to_or_containing_the_source(tmp_path, capsys, fake_run, which):
    out = {"run": fake_run, "parent": tmp_path, "model-parent": fake_run}[which]
    src = fake_run / "model.keras" if which == "model-parent" else fake_run
    refused(
        capsys,
        ["export", src, "--out", out, "--force"],
        "source model",
        "choose another --out",
        watch=[tmp_path],
    )


def test_export_out_equal_to_calibration_folder(tmp_path, capsys, fake_run, good):
    refused(
        capsys,
        ["export", fake_run, "--out", good, "--force", "--calibration", good],
        "calibration folder",
        watch=[tmp_path],
    )


def test_stale_partials_of_dead_processes_are_swept(tmp_path):
    from edgetl.outdir import sweep_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".b.partial-{dead.pid}-abcd1234"
    (stale / ".tmp" / "edgetl-savedmodel-x").mkdir(parents=True)
    live = tmp_path / f".b.partial-{os.getpid()}-efgh5678"
    live.mkdir()
    old = tmp_path / f".b.old-{dead.pid}-ijkl9012"  # a replacement cut short: b is missing
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    sweep_stale(tmp_path / "b")
    assert not stale.exists() and live.exists()
    assert (tmp_path / "b" / "manifest.json").is_file()  # the old bundle came back


# ------------------------------------------------------------ bring-your-own


def test_input_range_negative_written_with_a_space():
    from edgetl.argtypes import join_negative_lists
    from edgetl.cli import build_parser

    argv = join_negative_lists(["export", "m.h5", "--out", "b", "--input-range", "-1,1"])
    args = build_parser("export").parse_args(argv)
    assert args.input_range == "-1,1"
    assert join_negative_lists(["--input-range", "-0.5, 2e3"]) == ["--input-range=-0.5, 2e3"]
    assert join_negative_lists(["--x", "-v"]) == ["--x", "-v"]


def test_calibration_labels_only_where_they_match():
    """A calibration folder is just images: a probe keeps its label where the folder name is one
    of the model's, and has none otherwise (this crashed make_probes with a TypeError)."""
    import keras

    from edgetl.contract import InputContract
    from edgetl.probes import make_probes

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    images = np.random.default_rng(0).uniform(0, 255, (5, 16, 16, 3)).astype(np.float32)
    probes, _, _ = make_probes(
        model, InputContract(16, 16), images, [None, 1, None, 0, 2], list("abcde")
    )
    real = {n: lab for n, lab in zip(probes.names, probes.labels, strict=True) if len(n) == 1}
    assert real == {"a": None, "b": 1, "c": None, "d": 0, "e": 2}


# ------------------------------------------------------------ real exports, real signals


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A small softmax classifier file (not a MobileNet: the export machinery is the same)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    path = tmp_path_factory.mktemp("small") / "small.keras"
    keras.Model(inp, out).save(path)
    return path


def _export_proc(args, env):
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "edgetl.cli", "export", *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(proc, text: str, timeout: float = 120) -> None:
    t = time.time()
    while time.time() - t < timeout:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"export never printed {text!r}: {proc.stderr.read()}")


@pytest.mark.slow
def test_killed_exports_leave_nothing_and_next_export_sweeps(tmp_path, small_model, good):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    out = tmp_path / "bundles" / "b"
    out.parent.mkdir()
    # Several TFLite variants keep the process busy converting long enough to be killed in it.
    args = [small_model, "--out", out, "--labels", "a,b,c", "--formats", "onnx,tflite"]
    busy = ["--quantize", "float16,dynamic"]

    # SIGTERM while converting: handled like Ctrl-C, everything removed at once.
    p = _export_proc([*args, *busy], env)
    _wait_for(p, "exporting tflite")
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "SIGTERM" in err
    assert not out.exists() and list(out.parent.iterdir()) == []
    assert list(tmpdir.iterdir()) == []

    # kill -9 at two points: the partial folder stays (nothing can run), the next run sweeps it.
    for point, delay in (("exporting onnx", 0.0), ("exporting tflite", 0.3)):
        p = _export_proc([*args, *busy], env)
        _wait_for(p, point)
        time.sleep(delay)
        p.kill()
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL, "the export ended before it could be killed"
        left = [e.name for e in out.parent.iterdir()]
        # and the empty .b.lock (its flock died with the process; the next run reuses it)
        assert all(n.startswith(f".b.partial-{p.pid}-") or n == ".b.lock" for n in left), left
        assert list(tmpdir.iterdir()) == []  # temp SavedModels live inside the partial folder

    # The next export: sweeps the stale partials, a calibration folder whose names match no
    # label is just images, --input-range written with a space, quiet stderr.
    other = tmp_path / "calib"
    (good).rename(other)
    p = _export_proc(
        [*args, "--quantize", "int8", "--calibration", other, "--input-range", "-1,1"], env
    )
    stdout, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert sorted(e.name for e in out.parent.iterdir()) == ["b"]
    assert list(tmpdir.iterdir()) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["value_range"] == [-1.0, 1.0]
    assert {a["id"] for a in manifest["artifacts"]} >= {"onnx", "tflite_int8"}
    for noise in ("I0000", "W0000", "E0000", "computation_placer", "cuInit", "absl", "\r"):
        assert noise not in err, err
    assert "removed" in stdout + err  # the sweep says what it removed


def test_stderr_filter_drops_a_noise_line_written_in_pieces():
    """TFLite writes "INFO: ", the message and the newline as separate writes to an unbuffered
    stderr; the filter must still recognise the line (one reached the demo's stderr when a pipe
    read ended after "INFO: "), and pass our own words, whole, in order."""
    import threading

    from edgetl.cli import StderrFilter

    r, w = os.pipe()
    out_r, out_w = os.pipe()
    pump = threading.Thread(target=StderrFilter._pump, args=(r, out_w))
    pump.start()
    pieces = [b"INFO: ", b"Created TensorFlow Lite XNNPACK delegate for CPU.", b"\n"]
    pieces += [b"I", b"0000 00:00:1796158512.242996   28386 x.cc:365] Ignored output_format.\n"]
    pieces += [b"edgetl: ", b"3 images\n", b"W", b"ARNING: a real warning\n"]
    for piece in pieces:
        os.write(w, piece)
        time.sleep(0.05)  # each piece its own read
    os.close(w)
    pump.join(timeout=5)
    os.close(out_w)
    got = b""
    while chunk := os.read(out_r, 65536):
        got += chunk
    os.close(out_r)
    assert got == b"edgetl: 3 images\nWARNING: a real warning\n"
