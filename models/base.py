"""What a backbone is, and how a (name, alpha, size, weights) request is checked and built."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.registry import Registry


class BackboneConfigError(ValueError):
    """An unsupported backbone/alpha/size/weights combination, refused before anything is built."""


@dataclass(frozen=True)
class Backbone:
    name: str
    alphas: tuple[float, ...]
    sizes: tuple[int, ...]
    # build(name=, alpha=, size=, weights=) makes the headless base for a 0..255 RGB input and
    # returns the keras Model of features (N, h, w, C); `weights` is "imagenet", None or a path
    # to a weights file. models._common.application() makes one for a keras application.
    build: Callable[..., Any]
    # (alpha, size) of the smallest model keras offers: what the tests and the parity bench
    # build for this backbone (seconds, not minutes, on 2 cores)
    small: tuple[float, int]
    # Human description of the scaling the model applies inside (recorded in the contract).
    internal_preprocessing: str = "x / 127.5 - 1"
    default_alpha: float = 1.0
    default_size: int = 224

    def check(self, alpha: float, size: int) -> None:
        if alpha not in self.alphas:
            raise BackboneConfigError(
                f"{self.name} does not support alpha={alpha}; valid alphas: "
                f"{', '.join(str(a) for a in self.alphas)}"
            )
        if size not in self.sizes:
            raise BackboneConfigError(
                f"{self.name} does not support input size {size}; valid sizes: "
                f"{', '.join(str(s) for s in self.sizes)}"
            )


BACKBONES: Registry[Backbone] = Registry("backbone")


def resolve(
    name: str, alpha: float | None = None, size: int | None = None
) -> tuple[Backbone, float, int]:
    """Check a request and fill in defaults; raises BackboneConfigError listing valid values."""
    try:
        bb = BACKBONES.get(name)
    except ValueError as e:
        raise BackboneConfigError(str(e)) from None
    alpha = bb.default_alpha if alpha is None else float(alpha)
    size = bb.default_size if size is None else int(size)
    bb.check(alpha, size)
    return bb, alpha, size


def check_weights(weights: str | Path | None) -> str | None:
    """Return the keras `weights` argument: 'imagenet', None, or an existing file path."""
    if weights is None or str(weights).lower() in ("none", ""):
        return None
    if str(weights) == "imagenet":
        return "imagenet"
    p = Path(weights).expanduser()
    if not p.is_file():
        raise BackboneConfigError(
            f"weights file {str(p)!r} does not exist; use 'imagenet', 'none' or a path to a "
            ".h5/.weights.h5 file"
        )
    return str(p)


def build_backbone(
    name: str,
    alpha: float | None = None,
    size: int | None = None,
    weights: str | Path | None = "imagenet",
):
    """Build the frozen-able base: input 0..255 RGB (N, size, size, 3) -> feature map."""
    bb, alpha, size = resolve(name, alpha, size)
    w = check_weights(weights)
    try:
        return bb.build(name=bb.name, alpha=alpha, size=size, weights=w)
    except Exception as e:
        if w != "imagenet" or not _looks_like_download_failure(e):
            raise
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
        raise BackboneConfigError(
            f"ImageNet weights for {name} (alpha {alpha}, size {size}) are not in the Keras "
            f"cache ({cache}) and could not be downloaded: {e}. On an offline machine copy the "
            "weights file keras names into that folder, or pass --weights PATH (a local weights "
            "file) or --weights none (random init)."
        ) from None


def imagenet_or_local(
    name: str,
    alpha: float,
    size: int,
    path: str | Path,
    make: Callable[[Path], object],
    notify: Callable[[str], None] | None = None,
) -> str:
    """ "imagenet" when Keras has (or can download) the weights; otherwise `path`, made first
    by make(path) unless it exists, after notify(why ImageNet is unavailable). The demo and the
    benchmarks fall back this way and say so; nothing pretends to be ImageNet."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # keras' "Downloading data from ..."
            build_backbone(name, alpha, size, "imagenet")
        return "imagenet"
    except BackboneConfigError as e:
        if notify is not None:
            notify(str(e))
        path = Path(path)
        if not path.is_file():
            make(path)
        return str(path)


def _looks_like_download_failure(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(
        s in text
        for s in (
            "url fetch failure",
            "urlopen",
            "http",
            "name resolution",
            "connection",
            "network",
        )
    )


def make_local_weights(
    name: str,
    alpha: float | None,
    size: int | None,
    images,
    path: str | Path,
    seed: int = 0,
    labels=None,
    epochs: int = 20,
) -> Path:
    """Write a weights file for the backbone without any download (offline demo, tests).

    Random init leaves the BatchNormalization statistics at 0/1 and the features of a deep
    MobileNet vanish (~1e-12); one forward pass in training mode with momentum 0 sets every BN
    layer's statistics from `images` (0..255, N x size x size x 3), which gives non-vanishing
    but weak features (measured: nearest-centroid 38% on 3 texture classes). With `labels`,
    the whole network is first trained for `epochs` on (images, labels), a proxy pretraining
    task (measured: 76% nearest-centroid on held-out textures), then BN is recalibrated.
    ImageNet weights are far better; this only makes an offline run meaningful."""
    import keras
    import numpy as np

    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise BackboneConfigError(f"local weights file must end with .weights.h5: {path}")
    bb, alpha, size = resolve(name, alpha, size)
    keras.utils.set_random_seed(seed)
    features = bb.build(name=bb.name, alpha=alpha, size=size, weights=None)
    base = max(
        (layer for layer in features.layers if isinstance(layer, keras.Model)),
        key=lambda m: len(m.layers),
    )
    x = np.asarray(images, dtype=np.float32)
    if labels is not None:
        labels = np.asarray(labels)
        pooled = keras.layers.GlobalAveragePooling2D()(features.output)
        out = keras.layers.Dense(int(labels.max()) + 1, activation="softmax")(pooled)
        proxy = keras.Model(features.input, out)
        proxy.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        proxy.fit(x, labels, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    features(x[:256], training=True)  # one batch (of up to 256) sets the statistics
    for bn, m in zip(bns, saved, strict=True):
        bn.momentum = m
    path.parent.mkdir(parents=True, exist_ok=True)
    base.save_weights(path)
    return path
