"""Issue 19: no reported metric and no model selection may use images the weights trained on.

The check runs on labels that carry no information (textures dealt into classes at random):
any held-out accuracy is chance, so a reported validation accuracy far above it can only come
from weights that trained on the validation images (memorized). The stage-1 epoch count is
fixed (patience 0) so a refit on train + val trains long enough to memorize them. Each stage's
training batches are recorded where fit makes them (TrainResult.trained_on)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY

CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def noise_labels(tmp_path_factory):
    """(training folder of 60, held-out folder of 60): textures in random class folders."""
    from edgetl.sample_data import SAMPLE_CLASSES, draw_texture

    rng = np.random.default_rng(19)
    root = tmp_path_factory.mktemp("noise")
    for split in ("train", "heldout"):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
        for i in range(60):
            img = draw_texture(SAMPLE_CLASSES[i % 3], 96, rng)
            img.save(root / split / CLASSES[rng.integers(3)] / f"{i:03d}.png")
    return root / "train", root / "heldout"


def _config(local_weights, cache_dir, **changes):
    from edgetl.train import TrainConfig

    name, alpha, size = TINY
    base = dict(
        backbone=name,
        alpha=alpha,
        size=size,
        weights=str(local_weights(name)),
        epochs=40,
        patience=0,
        val_split=0.3,
        cache_dir=str(cache_dir),
    )
    return TrainConfig(**{**base, **changes})


def _split_files(data, config) -> tuple[set, set]:
    from edgetl.data import scan_image_folder, stratified_split

    folder = scan_image_folder(data)
    train_idx, val_idx = stratified_split(folder.labels, config.val_split, config.seed)
    return {folder.files[i] for i in train_idx}, {folder.files[i] for i in val_idx}


def _heldout_accuracy(run_dir, heldout) -> float:
    import keras

    from edgetl.data import load_images, scan_image_folder

    folder = scan_image_folder(heldout)
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    p = model.predict(load_images(folder.files, 96, 96), verbose=0)
    return float((p.argmax(1) == folder.labels).mean())


def _check_scored_weights_never_saw_validation(r, train_files, val_files):
    m = r.metrics
    assert m["split"] == "validation" and m["count"] == len(val_files)
    assert m["seen_by_weights"] is False and m["seen_count"] == 0
    assert m["scored_stages"], "the scored model carries no recorded training"
    for stage in m["scored_stages"]:
        trained = set(r.trained_on[stage])
        assert trained, stage
        assert not trained & val_files, f"{stage} trained on validation images"
        assert trained <= train_files, stage


@pytest.mark.slow
def test_stage2_with_refit_reports_what_held_out_images_score(
    tmp_path, noise_labels, local_weights, cache_dir
):
    """The defaults (refit on) plus stage 2: the reported validation accuracy agrees with the
    held-out accuracy, and no stage whose weights were scored trained on a validation image.
    Before the fix stage 2 started from the head refit on train + val and was scored on val:
    measured 1.000 reported against 0.35 held out here."""
    from edgetl.train import train

    data, heldout = noise_labels
    cfg = _config(local_weights, cache_dir, fine_tune_layers=10, fine_tune_epochs=1)
    r = train(data, tmp_path / "run", cfg, progress=False)
    reported, held = r.metrics["accuracy"], _heldout_accuracy(tmp_path / "run", heldout)
    # Chance is 1/3; 18 validation and 60 held-out images: the difference of two chance-level
    # accuracies has a standard deviation of ~0.13, the leak gave +0.65.
    assert abs(reported - held) < 0.4, (reported, held)
    train_files, val_files = _split_files(data, cfg)
    _check_scored_weights_never_saw_validation(r, train_files, val_files)
    assert "stage2" in r.metrics["scored_stages"]
    # The refit comes last, on every image, and the metrics say the written model is not the
    # scored one.
    assert set(r.trained_on["refit"]) == train_files | val_files
    assert r.metrics["written_model_scored"] is False
    assert r.metrics["written_model_stages"][0] == "refit"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["seen_by_weights"] is False
