"""Issue 21, themes 5-7: outputs lost or success claimed for what did not happen, the training
data and its embedding cache, and messages. Same style as test_bad_inputs.py: the real CLI,
exit code, no traceback, a message that says what to do, the file tree before and after."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import A, cli, refused, snapshot

from edgetl.errors import UserError
from edgetl.outdir import OutputClaim, Staging


def _classes(root: Path, counts: dict[str, int]) -> Path:
    """A class folder of random 24x24 PNGs: class name -> image count."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png"
            )
    return root


@pytest.fixture
def good(tmp_path) -> Path:
    return _classes(tmp_path / "good", {"cats": 3, "dogs": 3, "fish": 3})


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run folder that must survive (the checks come before the model is read)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"not read")
    return run


# ------------------------------------------------------------ 5. one writer per output

HOLD_CLAIM = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edgetl.outdir import OutputClaim
    with OutputClaim(Path(sys.argv[1]), replace=False):
        print("held", flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture
def claimed(tmp_path):
    """tmp/RC claimed by another live process (as a first `edgetl train --out RC` holds it)."""
    out = tmp_path / "RC"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_CLAIM, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    yield out, proc.pid
    proc.stdin.close()
    proc.wait(timeout=30)
    assert not (tmp_path / ".RC.lock").exists()  # released and removed by its holder


def test_second_train_into_the_same_out_is_refused(tmp_path, capsys, good, claimed):
    """Two `train --out RC` at once both said "run written to RC" while RC held one of them.
    The second is now refused before it trains, and nothing of RC is touched."""
    out, pid = claimed
    text = refused(
        capsys,
        ["train", good, "--out", out, *A],
        "being written by another edgetl run",
        f"process {pid}",
        "choose another --out",
        watch=[tmp_path],
    )
    assert "run written" not in text and len(text.strip().splitlines()[-1]) < 300
    assert not out.exists()


def test_second_export_into_the_same_out_is_refused(tmp_path, claimed):
    out, pid = claimed
    with pytest.raises(UserError, match=f"another edgetl run \\(process {pid}"):
        Staging(out, replace=True).__enter__()
    assert not out.exists() and not list(tmp_path.glob(".RC.partial-*"))


def test_claim_refuses_an_output_that_appeared_since_the_check(tmp_path):
    """A run that checked --out, then waited for the claim while another run finished into it,
    must not replace that output without --force."""
    out = tmp_path / "RC"
    out.mkdir()
    (out / "model.keras").write_bytes(b"the first run's model")
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="written by another run after this one started"):
        OutputClaim(out, replace=False).__enter__()
    assert snapshot(tmp_path) == before
    with OutputClaim(out, replace=True):  # --force: allowed, and re-entrant in one process
        with OutputClaim(out, replace=True):
            pass
        assert (tmp_path / ".RC.lock").exists()
    assert snapshot(tmp_path) == before


def test_staged_output_never_replaces_one_that_appeared_without_force(tmp_path):
    out = tmp_path / "nested" / "RC"
    staging = Staging(out, replace=False)
    with (
        pytest.raises(UserError, match="appeared while this run was writing it"),
        staging as tmp,
    ):
        (tmp / "model.keras").write_bytes(b"second")
        out.mkdir()
        (out / "model.keras").write_bytes(b"someone else's")
        staging.commit()
    assert (out / "model.keras").read_bytes() == b"someone else's"
    assert sorted(p.name for p in out.parent.iterdir()) == ["RC"]  # no partial, no lock left


def test_failed_claim_leaves_no_parent_folders(tmp_path):
    out = tmp_path / "a" / "b" / "RC"
    with OutputClaim(out, replace=False):
        assert (out.parent / ".RC.lock").is_file()
    assert not (tmp_path / "a").exists()


def test_demo_does_not_replace_the_users_run(tmp_path, capsys):
    """`demo --out DIR` once replaced DIR/run (the user's model) without a word."""
    out = tmp_path / "mine"
    (out / "run").mkdir(parents=True)
    (out / "run" / "model.keras").write_bytes(b"the user's model")
    refused(
        capsys,
        ["demo", "--out", out, "--epochs", "1", "--no-verify"],
        f"{out / 'run'} already exists",
        "--force",
        watch=[tmp_path],
    )
    assert not (out / "data").exists()  # refused before any work


# ------------------------------------------------------------ 6. data and embedding cache


def _keras_embedder():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inp)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))


def test_corrupt_cache_entries_are_recomputed_with_one_line(tmp_path, good, capsys):
    """0-byte (a crash or a full disk), truncated, bit-flipped and foreign entries: each is
    recomputed (the old cache raised EOFError on the first), one line says so."""
    from edgetl.embeddings import EmbeddingCache, cache_file

    files = sorted(good.rglob("*.png"))
    cache_dir = tmp_path / "cache"
    model = _keras_embedder()
    first = EmbeddingCache(model, cache_dir, runtime="keras")
    want = first.embed_files(files, progress=False)
    entries = sorted((cache_dir / "embeddings").rglob("*"))
    entries = [p for p in entries if p.is_file()]
    assert len(entries) == len(files)
    entries[0].write_bytes(b"")
    entries[1].write_bytes(entries[1].read_bytes()[:-3])
    data = bytearray(entries[2].read_bytes())
    data[-1] ^= 0x40
    entries[2].write_bytes(bytes(data))
    np.save(open(entries[3], "wb"), np.zeros(4, np.float32))  # noqa: SIM115 (an old .npy)
    capsys.readouterr()
    again = EmbeddingCache(model, cache_dir, runtime="keras")
    got = again.embed_files(files, progress=False)
    err = capsys.readouterr().err
    assert again.stats.computed == 4 and again.stats.from_cache == len(files) - 4
    np.testing.assert_array_equal(got, want)
    assert "4 embedding-cache entries were empty or corrupt" in err and "recomputing" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # Stored again, good: a third pass reads everything.
    third = EmbeddingCache(model, cache_dir, runtime="keras")
    third.embed_files(files, progress=False)
    assert third.stats.from_cache == len(files)
    assert cache_file(cache_dir, third.key, "x").suffix == ".vec"


def test_cache_dir_that_cannot_be_written_is_found_first():
    """/sys refuses new entries even to root, like a read-only mount."""
    from edgetl.embeddings import check_cache_dir

    gone = check_cache_dir("/sys/edgetl-test-cache")
    assert gone.folder is None and "no cache this run" in gone.note
    assert "--cache-dir" in gone.note and not Path("/sys/edgetl-test-cache").exists()
    ro = check_cache_dir("/sys/kernel")  # exists and is readable: read, never written
    assert ro.folder == Path("/sys/kernel") and not ro.writable
    assert "cannot be written" in ro.note and "--cache-dir" in ro.note


def test_class_too_small_to_train_is_refused(tmp_path, capsys):
    """1 image beside many once trained silently to "validation accuracy 1.000", that class
    absent from validation."""
    data = _classes(tmp_path / "data", {"big": 12, "tiny": 1})
    refused(
        capsys,
        ["train", data, "--out", tmp_path / "run", *A],
        "tiny (1)",
        "fewer than 2 images",
        "add images",
        watch=[tmp_path],
    )


def test_small_validation_warns_and_unwritable_cache_falls_back(tmp_path, capsys):
    """2 images beside 24: trained, with one warning line naming the class; a --cache-dir that
    cannot be created gives one note and the run still completes (the cache only saves
    time)."""
    data = _classes(tmp_path / "data", {"big": 24, "small": 2})
    code, text = cli(
        capsys, "train", data, "--out", tmp_path / "run", "--cache-dir", "/sys/edgetl-c", *A
    )
    assert code == 0, text
    assert "fewer than 5 validation images in small (1)" in text
    assert "from 2 to 24 images" in text and "per-class recall" in text
    assert "embedding cache /sys/edgetl-c cannot be used" in text and "no cache this run" in text
    assert (tmp_path / "run" / "model.keras").is_file()


# ------------------------------------------------------------ 7. messages


@pytest.mark.parametrize("value", ["0,inf", "nan,1", "0,nan", "255,0", "1,1", "0,1e9"])
def test_input_range_that_is_not_a_range(tmp_path, capsys, fake_run, value):
    refused(
        capsys,
        ["export", fake_run, "--out", tmp_path / "b", f"--input-range={value}"],
        "--input-range",
        value,
        watch=[tmp_path],
    )


MAKE_CUSTOM = textwrap.dedent(
    """
    import sys, keras
    @keras.saving.register_keras_serializable(package="mine")
    class Scale2(keras.layers.Layer):
        def call(self, x):
            return x * 2.0
    i = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(Scale2()(i))
    keras.Model(i, keras.layers.Dense(2, activation="softmax")(x)).save(sys.argv[1])
    """
)


def test_unregistered_custom_layer_is_named_in_one_line(tmp_path, capsys):
    """Keras' message is 1.3 KB of config with the cause in the middle."""
    model = tmp_path / "custom.keras"
    subprocess.run([sys.executable, "-c", MAKE_CUSTOM, str(model)], check=True, cwd=tmp_path)
    text = refused(
        capsys,
        ["export", model, "--out", tmp_path / "b"],
        "custom layer class 'Scale2'",
        "register_keras_serializable(package='mine')",
        "custom_objects",
        watch=[tmp_path],
    )
    line = text.strip().splitlines()[-1]
    assert len(text.strip().splitlines()) == 1 and len(line) < 500, text
    assert "config=" not in text and "inbound_nodes" not in text
