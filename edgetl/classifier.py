"""The transfer-learning classifier: 0..255 RGB -> [scaling] -> MobileNet (nested) -> head.

Layer names here are a contract used by training (embedding cache, unfreezing) and export.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_POOL = "features_pool"  # GlobalAveragePooling2D: the embedding the head is trained on
HEAD_DENSE = "head_dense"
HEAD_DROPOUT = "head_dropout"
HEAD_OUTPUT = "probabilities"


@dataclass(frozen=True)
class HeadConfig:
    hidden_units: int = 128  # 0: no hidden layer (dropout, then the softmax Dense)
    dropout: float = 0.2
    seed: int = 0


def build_classifier(features_model, num_classes: int, head: HeadConfig = HeadConfig()):
    """Flat functional model: features_model's layers (the application stays nested) + head."""
    import keras

    x = keras.layers.GlobalAveragePooling2D(name=BASE_POOL)(features_model.output)
    x = _head_layers(num_classes, head)(x)
    return keras.Model(features_model.input, x, name="edgetl_classifier")


def _head_layers(num_classes: int, head: HeadConfig):
    import keras

    init = keras.initializers.GlorotUniform
    dense = None
    if head.hidden_units:
        dense = keras.layers.Dense(
            head.hidden_units,
            activation="relu",
            name=HEAD_DENSE,
            kernel_initializer=init(seed=head.seed),
        )
    drop = keras.layers.Dropout(head.dropout, seed=head.seed, name=HEAD_DROPOUT)
    out = keras.layers.Dense(
        num_classes,
        activation="softmax",
        name=HEAD_OUTPUT,
        kernel_initializer=init(seed=head.seed + 1),
    )

    def apply(x):
        return out(drop(x if dense is None else dense(x)))

    return apply


def build_head_model(embedding_dim: int, num_classes: int, head: HeadConfig = HeadConfig()):
    """The head alone, on cached embeddings; its weights copy 1:1 into build_classifier's head."""
    import keras

    inp = keras.Input(shape=(embedding_dim,), name="embedding")
    return keras.Model(inp, _head_layers(num_classes, head)(inp), name="edgetl_head")


def embedding_model(classifier):
    """Image (0..255) -> pooled embedding, sharing the classifier's backbone layers."""
    import keras

    return keras.Model(
        classifier.input, classifier.get_layer(BASE_POOL).output, name="edgetl_embedding"
    )


def copy_head_weights(head_model, classifier) -> None:
    names = {layer.name for layer in head_model.layers}
    for name in (HEAD_DENSE, HEAD_OUTPUT):
        if name in names:  # no HEAD_DENSE in a head without a hidden layer
            classifier.get_layer(name).set_weights(head_model.get_layer(name).get_weights())


def find_base(classifier):
    """The nested backbone application (the one sub-model with many layers)."""
    import keras

    subs = [layer for layer in classifier.layers if isinstance(layer, keras.Model)]
    if not subs:
        return None
    return max(subs, key=lambda m: len(m.layers))
