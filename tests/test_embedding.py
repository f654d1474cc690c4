"""The coverage "embedding" (issue 20, defect 8): the input of the head's first Dense layer,
found whatever the backbone and however the classifier is nested (tiny models, no export)."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.probes import coverage, embedding_model

FEATURES = 6


def _backbone(name: str):
    import keras

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(FEATURES, 3, activation="relu")(inp)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x), name=name)


def _flat():
    import keras

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(FEATURES, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


def _sequential():
    import keras

    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(FEATURES, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def _whole_classifier_nested():
    """The classifier called inside a wrapper (a preprocessing front added to an old model)."""
    import keras

    inner = _flat()
    inp = keras.Input((16, 16, 3))
    return keras.Model(inp, inner(keras.layers.Rescaling(1.0)(inp)))


def _head_nested():
    """Backbone and head each their own model (Xception/MobileNet + a Sequential head)."""
    import keras

    head = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(3, activation="softmax")])
    inp = keras.Input((16, 16, 3))
    return keras.Model(inp, head(_backbone("base")(inp)))


@pytest.mark.parametrize("build", [_flat, _sequential, _whole_classifier_nested, _head_nested])
def test_embedding_found_whatever_the_nesting(build):
    import keras

    keras.utils.set_random_seed(0)
    model = build()
    embed = embedding_model(model)
    assert embed is not None and embed.output.shape[-1] == FEATURES
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    cov = coverage(model, x, model.predict(x, verbose=0), embed)
    assert cov["features"] == FEATURES
