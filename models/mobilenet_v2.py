"""MobileNet V2 (keras.applications.MobileNetV2)."""

from edgetl.models._common import build_scaled_base
from edgetl.models.base import BACKBONES, Backbone


def _build(alpha: float, size: int, weights: str | None):
    import keras

    return build_scaled_base(
        keras.applications.MobileNetV2,
        size=size,
        weights=weights,
        scale_inside=True,
        name="mobilenet_v2",
        alpha=alpha,
    )


BACKBONES.register(
    "mobilenet_v2",
    Backbone(
        name="mobilenet_v2",
        keras_name="MobileNetV2",
        alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        sizes=(96, 128, 160, 192, 224),
        build=_build,
    ),
)
