"""Bad data gets a clear message, never a traceback; odd images are converted or skipped."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgetl.cli import main
from edgetl.data import load_image, read_rgb, resize_bilinear, scan_image_folder, stratified_split
from edgetl.errors import UserError


def _img(path, mode="RGB", size=(20, 16), color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def test_single_class_is_refused(tmp_path):
    _img(tmp_path / "only" / "a.png")
    with pytest.raises(UserError, match="at least 2 classes"):
        scan_image_folder(tmp_path)


def test_empty_class_folder_is_named(tmp_path):
    _img(tmp_path / "cats" / "a.png")
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="dogs"):
        scan_image_folder(tmp_path)


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")


def test_non_images_and_corrupt_files_are_skipped_and_listed(tmp_path):
    _img(tmp_path / "a" / "ok.jpg")
    _img(tmp_path / "b" / "ok.png")
    (tmp_path / "a" / "readme.txt").write_text("hello")
    (tmp_path / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = tmp_path / "b" / "truncated.png"
    _img(good, size=(64, 64))
    good.write_bytes(good.read_bytes()[:60])
    folder = scan_image_folder(tmp_path)
    assert [p.name for p in folder.files] == ["ok.jpg", "ok.png"]
    skipped = {p.name for p, _ in folder.skipped}
    assert {"corrupt.jpg", "truncated.png"} <= skipped


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16"])
def test_grayscale_rgba_palette_become_rgb(tmp_path, mode):
    p = _img(tmp_path / f"x_{mode.replace(';', '')}.png", mode=mode)
    rgb = read_rgb(p)
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    assert load_image(p, 8, 8).shape == (8, 8, 3)


def test_names_with_spaces_and_non_ascii(tmp_path):
    _img(tmp_path / "chat noir" / "photo 1.jpg")
    _img(tmp_path / "Ünïcödé 猫" / "ça va.png")
    folder = scan_image_folder(tmp_path)
    assert folder.classes == sorted(["chat noir", "Ünïcödé 猫"])
    assert len(folder.files) == 2


def test_class_order_is_deterministic(tmp_path):
    for c in ["zebra", "Apple", "mango"]:
        _img(tmp_path / c / "1.png")
    assert scan_image_folder(tmp_path).classes == sorted(["zebra", "Apple", "mango"])


def test_resize_matches_tensorflow_bilinear():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (37, 53, 3)).astype(np.float32)
    for h, w in [(16, 24), (96, 96)]:
        ours = resize_bilinear(img, h, w)
        ref = tf.image.resize(img, (h, w), method="bilinear", antialias=False).numpy()
        tol = 1e-3 if h < 37 else 2e-3  # float32 rounding of the interpolation weights
        assert np.abs(ours - ref).max() < tol


def test_stratified_split_is_seeded_and_keeps_every_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 2)
    a = stratified_split(labels, 0.2, seed=1)
    b = stratified_split(labels, 0.2, seed=1)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    train, val = a
    assert set(labels[val]) == {0, 1, 2} and set(labels[train]) == {0, 1, 2}
    assert len(set(train) & set(val)) == 0


def test_cli_reports_bad_data_without_traceback(tmp_path, capsys):
    _img(tmp_path / "data" / "only" / "a.png")
    data, out = str(tmp_path / "data"), str(tmp_path / "run")  # --out inside data is refused
    code = main(["train", data, "--out", out, "--weights", "none"])
    err = capsys.readouterr().err
    assert code == 2
    assert "at least 2 classes" in err and "Traceback" not in err
