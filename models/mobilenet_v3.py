"""MobileNet V3 Small and Large (keras.applications.MobileNetV3Small/Large).

Keras puts the x/127.5 - 1 scaling inside V3 itself (include_preprocessing=True).
"""

from edgetl.models._common import application
from edgetl.models.base import BACKBONES, Backbone

_ALPHAS = (0.75, 1.0)
# Keras ships V3 ImageNet weights trained at 224; the convolutional base accepts these sizes.
_SIZES = (96, 128, 160, 192, 224)


for _name, _app in (
    ("mobilenet_v3_small", "MobileNetV3Small"),
    ("mobilenet_v3_large", "MobileNetV3Large"),
):
    BACKBONES.register(
        Backbone(
            name=_name,
            alphas=_ALPHAS,
            sizes=_SIZES,
            build=application(_app, scale_inside=False, include_preprocessing=True),
            small=(0.75, 96),
            internal_preprocessing="x / 127.5 - 1 (inside the keras application)",
        ),
    )
