"""Shared construction: 0..255 input, scaling inside, the keras application as a nested base."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def application(app_name: str, *, scale_inside: bool, **app_kwargs: Any) -> Callable:
    """A Backbone.build for keras.applications.<app_name> (scale_inside: add the x / 127.5 - 1
    Rescaling in front; False where the application scales by itself)."""

    def build(*, name: str, alpha: float, size: int, weights: str | None):
        import keras

        return build_scaled_base(
            getattr(keras.applications, app_name),
            size=size,
            weights=weights,
            scale_inside=scale_inside,
            name=name,
            alpha=alpha,
            **app_kwargs,
        )

    return build


def build_scaled_base(
    app_fn, *, size: int, weights: str | None, scale_inside: bool, name: str, **app_kwargs: Any
):
    """Wrap a keras.applications base so the returned model takes raw 0..255 RGB pixels.

    The application itself is a nested functional model (named `name`), which keeps "unfreeze
    the top N layers" simple and matches how users nest MobileNet under their own heads.
    `weights` may be "imagenet", None, or a local file (loaded by keras after building).
    """
    import keras

    local_file = weights not in (None, "imagenet")
    base = app_fn(
        input_shape=(size, size, 3),
        include_top=False,
        weights=None if local_file else weights,
        **app_kwargs,
    )
    if local_file:
        base.load_weights(weights)
    base.name = name  # type: ignore[misc]
    inputs = keras.Input(shape=(size, size, 3), name="image", dtype="float32")
    x = inputs
    if scale_inside:
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit")(x)
    features = base(x, training=False)
    return keras.Model(inputs, features, name=f"{name}_features")
