"""MobileNet V2 (keras.applications.MobileNetV2)."""

from edgetl.models._common import application
from edgetl.models.base import BACKBONES, Backbone

BACKBONES.register(
    Backbone(
        name="mobilenet_v2",
        alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
        sizes=(96, 128, 160, 192, 224),
        build=application("MobileNetV2", scale_inside=True),
        small=(0.35, 96),
    ),
)
