"""Freezing BatchNorm layers, as the paper's ResNet runs do."""

from __future__ import annotations

import keras

from keras_roadmap import _keras_compat


def freeze_batchnorm(model: keras.Model) -> int:
    """Set every ``BatchNormalization`` layer of ``model`` (nested models included) untrainable.

    In Keras 3 an untrainable BatchNormalization always normalises with its moving statistics and
    never updates them, even when called with ``training=True``; its gamma/beta are frozen too
    (what ``model.eval()`` on BN modules plus ``requires_grad=False`` does in PyTorch).

    Returns:
        The number of layers frozen (int). Raises ValueError if ``model`` has none, since asking
        to freeze BatchNorm on a model without it is almost certainly a mistake.
    """
    count = 0
    for layer in _keras_compat.nested_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            count += 1
    if count == 0:
        raise ValueError(f"freeze_batchnorm: model {model.name!r} has no BatchNormalization layer.")
    return count
