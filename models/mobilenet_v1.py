"""MobileNet V1 (keras.applications.MobileNet)."""

from edgetl.models._common import application
from edgetl.models.base import BACKBONES, Backbone

BACKBONES.register(
    Backbone(
        name="mobilenet_v1",
        alphas=(0.25, 0.5, 0.75, 1.0),
        sizes=(128, 160, 192, 224),
        build=application("MobileNet", scale_inside=True),
        small=(0.25, 128),
    ),
)
