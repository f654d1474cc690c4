"""Backbones, training (cached and plain), the run directory, bring-your-own models."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY, small_backbones

from edgetl.cli import main


def test_help_does_not_import_tensorflow():
    code = (
        "import sys, edgetl.cli as c; c.build_parser(None); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_lists_every_backbone_with_a_valid_test_size():
    from edgetl.models import BACKBONES

    assert {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"} <= set(BACKBONES.names())
    for bb in BACKBONES.values():
        bb.check(*bb.small)  # the tests' configuration is one the backbone accepts


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--backbone", "mobilenet_v2", "--alpha", "0.6"],
            "valid alphas: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4",
        ),
        (["--backbone", "mobilenet_v1", "--size", "96"], "valid sizes: 128, 160, 192, 224"),
        (["--backbone", "resnet50"], "valid: mobilenet_v1"),
        (["--weights", "/nonexistent/w.h5"], "does not exist"),
    ],
)
def test_unsupported_combinations_refused_before_building(
    tmp_path, sample_data, capsys, args, expected
):
    code = main(["train", str(sample_data), "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.keras").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(small_backbones()))
def test_each_backbone_builds_and_trains(tmp_path, sample_data, local_weights, cache_dir, name):
    from edgetl.train import TrainConfig, train

    alpha, size = small_backbones()[name]
    r = train(
        sample_data,
        tmp_path / "run",
        TrainConfig(
            backbone=name,
            alpha=alpha,
            size=size,
            weights=str(local_weights(name)),
            epochs=2,
            cache_dir=str(cache_dir),
        ),
        progress=False,
    )
    assert len(r.history["stage1_loss"]) == 2
    assert np.isfinite(r.history["stage1_loss"]).all()
    for f in [
        "model.keras",
        "labels.json",
        "contract.json",
        "metrics.json",
        "train.json",
        "training_curves.png",
        "confusion_matrix.png",
    ]:
        assert (tmp_path / "run" / f).is_file(), f


@pytest.mark.slow
def test_run_directory_contents(tiny_run):
    from edgetl.contract import InputContract, load_labels

    labels = load_labels(tiny_run / "labels.json")
    assert labels == ["checks", "dots", "stripes"]
    c = InputContract.load(tiny_run / "contract.json")
    assert (c.height, c.width, c.value_range, c.layout, c.channel_order) == (
        96,
        96,
        (0, 255),
        "NHWC",
        "RGB",
    )
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert set(m["per_class"]) == set(labels)
    assert np.asarray(m["confusion_matrix"]).sum() == m["count"] > 0
    # Locally made (random, BN-calibrated) weights give weak features: val accuracy is not
    # asserted; the head must still fit its training data.
    assert 0.0 <= m["accuracy"] <= 1.0
    assert min(m["history"]["stage1_loss"][1:]) < m["history"]["stage1_loss"][0]
    assert (tiny_run / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_embedding_cache_gives_the_same_head_as_plain_training(
    tmp_path, sample_data, local_weights, cache_dir
):
    """Same seed, same batches: the head trained on cached onnxruntime embeddings equals the
    head trained by model.fit through the frozen Keras base every epoch (up to float noise)."""
    import keras

    from edgetl.classifier import HEAD_DENSE, HEAD_OUTPUT
    from edgetl.train import TrainConfig, train

    name, alpha, size = TINY
    common = dict(
        backbone=name,
        alpha=alpha,
        size=size,
        weights=str(local_weights(name)),
        epochs=3,
        patience=0,
        refit=False,  # the refit runs on cached embeddings only
        cache_dir=str(cache_dir),
    )
    cached = train(sample_data, tmp_path / "cached", TrainConfig(**common), progress=False)
    plain = train(
        sample_data, tmp_path / "plain", TrainConfig(**common, full_forward=True), progress=False
    )
    assert cached.embedding_stats["computed"] + cached.embedding_stats["from_cache"] == 48
    a = keras.models.load_model(tmp_path / "cached" / "model.keras", compile=False)
    b = keras.models.load_model(tmp_path / "plain" / "model.keras", compile=False)
    for layer in (HEAD_DENSE, HEAD_OUTPUT):
        for wa, wb in zip(
            a.get_layer(layer).get_weights(), b.get_layer(layer).get_weights(), strict=True
        ):
            assert np.abs(wa - wb).max() < 1e-4, layer
    np.testing.assert_allclose(
        cached.history["stage1_loss"], plain.history["stage1_loss"], atol=1e-4
    )


@pytest.mark.slow
def test_second_run_reuses_cached_embeddings(
    tmp_path, sample_data, local_weights, cache_dir, tiny_run
):
    from edgetl.train import TrainConfig, train

    name, alpha, size = TINY
    r = train(
        sample_data,
        tmp_path / "again",
        TrainConfig(
            backbone=name,
            alpha=alpha,
            size=size,
            weights=str(local_weights(name)),
            epochs=1,
            hidden_units=32,
            cache_dir=str(cache_dir),
        ),
        progress=False,
    )
    assert r.embedding_stats["computed"] == 0
    assert r.embedding_stats["from_cache"] == 48


@pytest.mark.slow
def test_fine_tune_stage_unfreezes_top_layers_and_keeps_bn_frozen(
    tmp_path, sample_data, local_weights, cache_dir
):
    import keras

    from edgetl.classifier import find_base
    from edgetl.train import TrainConfig, set_fine_tune, train

    name, alpha, size = TINY
    r = train(
        sample_data,
        tmp_path / "ft",
        TrainConfig(
            backbone=name,
            alpha=alpha,
            size=size,
            weights=str(local_weights(name)),
            epochs=1,
            fine_tune_layers=10,
            fine_tune_epochs=1,
            augment=True,
            label_smoothing=0.1,
            cache_dir=str(cache_dir),
        ),
        progress=False,
    )
    assert len(r.history["stage2_loss"]) == 1
    # --augment: stage 1 runs through the backbone (no cache, so no refit); both stages train
    # on the training split only and the model they give is the one scored on validation.
    from test_train_leak import _check_scored_weights_never_saw_validation, _split_files

    cfg = TrainConfig(epochs=1)  # the default seed and split fraction of the run above
    _check_scored_weights_never_saw_validation(r, *_split_files(sample_data, cfg))
    assert set(r.trained_on) == {"stage1", "stage2"}
    assert r.metrics["written_model_scored"] is True
    model = keras.models.load_model(tmp_path / "ft" / "model.keras", compile=False)
    base = find_base(model)
    k = set_fine_tune(base, 0.25)
    trainable = [layer for layer in base.layers if layer.trainable]
    assert trainable and all(
        not isinstance(layer, keras.layers.BatchNormalization) for layer in trainable
    )
    assert all(i >= len(base.layers) - k for i, layer in enumerate(base.layers) if layer.trainable)


@pytest.mark.slow
def test_h5_model_with_nested_mobilenet_is_accepted(tmp_path):
    """A user's classifier saved as legacy .h5, MobileNet nested as a sub-model under a head."""
    import keras

    from edgetl.bundle import export_bundle
    from edgetl.modelio import load_model_source

    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None
    )
    inp = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax")(x)
    user = keras.Model(inp, out)
    user.save(tmp_path / "user.h5")
    loaded = load_model_source(tmp_path / "user.h5", labels=["cat", "dog"])
    assert loaded.contract.height == 96 and loaded.labels == ["cat", "dog"]
    manifest = export_bundle(
        loaded.model,
        tmp_path / "bundle",
        labels=loaded.labels,
        contract=loaded.contract,
        formats=["onnx"],
        source_path=loaded.source_path,
        log=lambda *_: None,
    )
    assert [a.id for a in manifest.artifacts] == ["onnx"]
    x = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype(np.float32)
    np.testing.assert_allclose(
        loaded.model.predict(x, verbose=0), user.predict(x, verbose=0), atol=1e-6
    )


def test_export_cli_refuses_bad_input(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.keras"), "--out", str(tmp_path / "b")]) == 2
    assert "model not found" in capsys.readouterr().err
    (tmp_path / "m.txt").write_text("x")
    assert main(["export", str(tmp_path / "m.txt"), "--out", str(tmp_path / "b")]) == 2
    assert "not a Keras model file" in capsys.readouterr().err
    assert (
        main(
            [
                "export",
                str(tmp_path / "m.txt"),
                "--out",
                str(tmp_path / "b"),
                "--formats",
                "onnx,tflight",
            ]
        )
        == 2
    )
    assert "valid: tfjs, onnx, tflite" in capsys.readouterr().err
    assert (
        main(
            ["export", str(tmp_path / "m.txt"), "--out", str(tmp_path / "b"), "--quantize", "int4"]
        )
        == 2
    )
    assert "valid: float16, dynamic, int8" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_keras2_h5_with_nested_mobilenet_is_accepted(tmp_path):
    """A legacy .h5 written by tf_keras (Keras 2), which Keras 3 alone refuses to load."""
    code = (
        "import os, sys; os.environ['TF_USE_LEGACY_KERAS'] = '1'; import numpy as np, tf_keras as k; "
        "b = k.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None); "
        "i = k.Input((96, 96, 3)); x = b(k.layers.Rescaling(1 / 127.5, offset=-1)(i)); "
        "m = k.Model(i, k.layers.Dense(2, activation='softmax')(k.layers.GlobalAveragePooling2D()(x))); "
        "m.save(sys.argv[1] + '/tfk.h5'); x = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype('float32'); "
        "np.save(sys.argv[1] + '/x.npy', x); np.save(sys.argv[1] + '/y.npy', m.predict(x, verbose=0))"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    from edgetl.modelio import load_model_source

    loaded = load_model_source(tmp_path / "tfk.h5", labels=["a", "b"])
    y = loaded.model.predict(np.load(tmp_path / "x.npy"), verbose=0)
    # tf_keras and Keras 3 run other kernels: float32 noise, far below a wrong translation
    np.testing.assert_allclose(y, np.load(tmp_path / "y.npy"), atol=1e-5)


@pytest.mark.slow
def test_train_warns_when_outputs_do_not_depend_on_the_input(
    tmp_path, sample_data, cache_dir, monkeypatch, capsys
):
    """`--weights none` gives a dead backbone: the run finishes but says verify cannot prove
    parity on such a model."""
    import json

    from edgetl.cli import main

    monkeypatch.setenv("EDGETL_CACHE", str(cache_dir))
    out = tmp_path / "dead"
    args = ["train", str(sample_data), "--out", str(out), "--backbone", "mobilenet_v2"]
    args += ["--alpha", "0.35", "--size", "96", "--weights", "none", "--epochs", "1"]
    assert main(args) == 0
    assert "outputs barely depend on its input" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["output_spread"] < 1e-3


def _toy_problem(seed: int = 0):
    """An overlapping 3-class problem on 16-d 'embeddings' and a linear softmax model."""
    import keras

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 16)).astype(np.float32) * 0.5  # overlapping classes
    labels = rng.integers(0, 3, size=120)
    x = centers[labels] + rng.normal(size=(120, 16)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[labels]
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16,))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    return model, x, y


def test_fit_keeps_the_starting_weights_when_every_epoch_is_worse():
    """Stage 2's rule: the weights it started from count as epoch 0, so a fine-tune that only
    makes validation worse (here: a learning rate far too high) leaves the model unchanged."""
    from edgetl.train import fit

    model, x, y = _toy_problem()
    good = dict(epochs=30, batch_size=32, seed=0, patience=5, sample_weights=np.ones(120))
    fit(model, (x[:90], y[:90]), (x[90:], y[90:]), learning_rate=0.05, **good)
    start = [w.copy() for w in model.get_weights()]
    bad = dict(good, epochs=3, patience=3)
    history, best = fit(
        model, (x[:90], y[:90]), (x[90:], y[90:]), learning_rate=50.0, from_start=True, **bad
    )
    assert best == 0 and len(history["val_loss"]) == 3
    for a, b in zip(model.get_weights(), start, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_restores_the_best_epoch_and_reports_it():
    from edgetl.train import fit

    model, x, y = _toy_problem(1)
    common = dict(batch_size=32, seed=0, sample_weights=np.ones(120), learning_rate=0.05)
    history, best = fit(model, (x[:90], y[:90]), (x[90:], y[90:]), epochs=40, patience=40, **common)
    vl = history["val_loss"]
    assert best == int(np.argmin(vl)) + 1
    p = model.predict(x[90:], verbose=0)
    import keras

    restored = float(keras.losses.CategoricalCrossentropy()(y[90:], p))
    assert abs(restored - min(vl)) < 1e-5


def test_fit_mixup_and_cosine_change_training_but_not_the_batches():
    from edgetl.train import fit

    runs = {}
    for name, kw in {
        "plain": {},
        "mixup": {"mixup": 0.2},
        "cosine": {"schedule": "cosine"},
    }.items():
        model, x, y = _toy_problem(2)
        h, _ = fit(
            model,
            (x, y),
            None,
            epochs=5,
            batch_size=32,
            seed=0,
            patience=0,
            sample_weights=np.ones(120),
            learning_rate=0.05,
            **kw,
        )
        runs[name] = h["loss"]
    assert runs["mixup"] != runs["plain"] and runs["cosine"] != runs["plain"]
    assert runs["cosine"][0] == pytest.approx(runs["plain"][0], rel=0.05)  # same start


@pytest.mark.slow
def test_refit_and_linear_head(tmp_path, sample_data, local_weights, cache_dir):
    """--hidden-units 0 gives dropout + softmax Dense only; --refit trains a new head on
    train + val for the epoch count early stopping chose, and metrics score the head chosen on
    validation before the refit saw those images."""
    import keras

    from edgetl.classifier import HEAD_DENSE, HEAD_OUTPUT
    from edgetl.train import TrainConfig, train

    name, alpha, size = TINY
    r = train(
        sample_data,
        tmp_path / "refit",
        TrainConfig(
            backbone=name,
            alpha=alpha,
            size=size,
            weights=str(local_weights(name)),
            epochs=8,
            patience=2,
            hidden_units=0,
            refit=True,
            cache_dir=str(cache_dir),
        ),
        progress=False,
    )
    chosen = int(np.argmin(r.history["stage1_val_loss"])) + 1
    assert len(r.history["refit_loss"]) == chosen
    assert r.metrics["split"] == "validation" and r.metrics["count"] == r.metrics["val_count"]
    assert r.metrics["scored_stages"] == ["stage1"] and r.metrics["seen_by_weights"] is False
    assert r.metrics["written_model_stages"] == ["refit"]
    assert r.metrics["trained_on"]["refit"] == 48
    model = keras.models.load_model(tmp_path / "refit" / "model.keras", compile=False)
    names = [layer.name for layer in model.layers]
    assert HEAD_DENSE not in names and HEAD_OUTPUT in names


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--mixup", "0.2"], ["--val-split", "0"]])
def test_printed_accuracy_says_which_images_and_whether_the_weights_saw_them(
    tmp_path, sample_data, local_weights, cache_dir, capsys, args
):
    """Cached stage 1 (mixup mixes training rows only): validation images no weight saw, or
    with --val-split 0 the training images, said as such rather than as a validation figure."""
    name, alpha, size = TINY
    out = tmp_path / "run"
    cli = ["train", str(sample_data), "--out", str(out), "--backbone", name, "--alpha"]
    cli += [str(alpha), "--size", str(size), "--weights", str(local_weights(name))]
    cli += ["--epochs", "3", "--cache-dir", str(cache_dir), *args]
    assert main(cli) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    if "--val-split" in args:
        assert m["split"] == "training images (no validation split)" and m["count"] == 48
        assert m["seen_by_weights"] is True and m["seen_count"] == 48
        assert "48 of them seen by the weights in training" in printed
        assert "not an estimate for new images" in printed
        assert "validation accuracy" not in printed
        assert m["written_model_scored"] is True and "refit" not in m["trained_on"]
    else:
        assert m["split"] == "validation" and m["seen_by_weights"] is False
        assert (
            f"validation accuracy: {m['accuracy']:.3f} on {m['count']} images, none seen" in printed
        )
        assert m["trained_on"]["stage1"] == m["train_count"]
        assert "written model is then refit on train + val (refit)" in printed
