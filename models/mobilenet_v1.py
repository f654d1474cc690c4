"""MobileNet V1 (keras.applications.MobileNet)."""

from edgetl.models._common import build_scaled_base
from edgetl.models.base import BACKBONES, Backbone


def _build(alpha: float, size: int, weights: str | None):
    import keras

    return build_scaled_base(
        keras.applications.MobileNet,
        size=size,
        weights=weights,
        scale_inside=True,
        name="mobilenet_v1",
        alpha=alpha,
    )


BACKBONES.register(
    "mobilenet_v1",
    Backbone(
        name="mobilenet_v1",
        keras_name="MobileNet",
        alphas=(0.25, 0.5, 0.75, 1.0),
        sizes=(128, 160, 192, 224),
        build=_build,
    ),
)
