"""MobileNet V3 Small and Large (keras.applications.MobileNetV3Small/Large).

Keras puts the x/127.5 - 1 scaling inside V3 itself (include_preprocessing=True).
"""

from edgetl.models._common import build_scaled_base
from edgetl.models.base import BACKBONES, Backbone

_ALPHAS = (0.75, 1.0)
# Keras ships V3 ImageNet weights trained at 224; the convolutional base accepts these sizes.
_SIZES = (96, 128, 160, 192, 224)


def _builder(app_name: str, name: str):
    def _build(alpha: float, size: int, weights: str | None):
        import keras

        app = getattr(keras.applications, app_name)
        return build_scaled_base(
            app,
            size=size,
            weights=weights,
            scale_inside=False,
            name=name,
            alpha=alpha,
            include_preprocessing=True,
        )

    return _build


for _name, _app in (
    ("mobilenet_v3_small", "MobileNetV3Small"),
    ("mobilenet_v3_large", "MobileNetV3Large"),
):
    BACKBONES.register(
        _name,
        Backbone(
            name=_name,
            keras_name=_app,
            alphas=_ALPHAS,
            sizes=_SIZES,
            build=_builder(_app, _name),
            internal_preprocessing="x / 127.5 - 1 (inside the keras application)",
        ),
    )
