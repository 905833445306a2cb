"""Freezing BatchNorm layers, as the paper's ResNet runs do.

Two meanings of "frozen", named by ``mode``:

* ``"statistics"`` (the official ROADMAP ``freeze_batch_norm``: BN modules in eval mode, their
  ``train()`` disabled, ``requires_grad`` untouched): the layer always normalises with its
  moving statistics and never updates them, but gamma and beta are still trained (and
  weight-decayed). Keras has no such layer, hence :class:`FrozenStatsBatchNormalization`.
* ``"all"``: Keras' ``BatchNormalization(trainable=False)``: statistics fixed *and* gamma/beta
  frozen (what ``model.eval()`` plus ``requires_grad=False`` does in PyTorch).
"""

from __future__ import annotations

import types

import keras

from keras_roadmap import _keras_compat

BATCHNORM_MODES = ("statistics", "all")


@keras.saving.register_keras_serializable(package="keras_roadmap")
class FrozenStatsBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization that always normalises with its moving statistics, whatever
    ``training`` says, and never updates them; gamma and beta stay trainable.

    Same arguments, weights and shapes as ``keras.layers.BatchNormalization``:
    ``y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta``.
    """

    def call(self, inputs, training=None, mask=None):
        # Inference-mode normalisation: the moving statistics are used and left unchanged.
        return super().call(inputs, training=False, mask=mask)


def _inference_mode_call(self, inputs, training=None, mask=None):
    return keras.layers.BatchNormalization.call(self, inputs, training=False, mask=mask)


def batchnorm_mode(freeze) -> str | None:
    """Normalise a ``freeze_batchnorm`` argument: False/None -> None, True -> "statistics"
    (the paper's), or "statistics" / "all". Raises ValueError for anything else."""
    if freeze is None or freeze is False:
        return None
    if freeze is True:
        return "statistics"
    if freeze in BATCHNORM_MODES:
        return freeze
    raise ValueError(
        f"freeze_batchnorm must be True, False, 'statistics' (running statistics fixed, gamma/beta "
        f"trained: the paper's) or 'all' (gamma/beta frozen too), got {freeze!r}."
    )


def freeze_batchnorm(model: keras.Model, mode="statistics") -> int:
    """Freeze every ``BatchNormalization`` layer of ``model`` (nested models included).

    Args:
        model: any Keras model.
        mode: ``"statistics"`` (default, the official ROADMAP semantics: the layers normalise
            with their moving statistics in training too, gamma/beta still trainable; a model
            reloaded from a file has plain BatchNorm again unless it was built with
            :class:`FrozenStatsBatchNormalization`) or ``"all"``
            (``trainable=False``: gamma/beta frozen too). ``True`` means ``"statistics"``.

    Returns:
        The number of layers frozen (int). Raises ValueError if ``model`` has none, since asking
        to freeze BatchNorm on a model without it is almost certainly a mistake.
    """
    mode = batchnorm_mode(mode)
    if mode is None:
        raise ValueError("freeze_batchnorm: mode must be 'statistics' or 'all', got False/None.")
    count = 0
    for layer in _keras_compat.nested_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            if mode == "all":
                layer.trainable = False
            elif not isinstance(layer, FrozenStatsBatchNormalization):
                # An already built layer (e.g. inside a keras-hub backbone) keeps its class, so its
                # weights save and load under the same names; only its `call` is redirected.
                # Builders of our own models construct FrozenStatsBatchNormalization instead,
                # which also survives save / load_model.
                layer.call = types.MethodType(_inference_mode_call, layer)
            count += 1
    if count == 0:
        raise ValueError(f"freeze_batchnorm: model {model.name!r} has no BatchNormalization layer.")
    return count
