"""``tiny_cnn``: a three-block CNN for tests, examples and small images (e.g. 32x32, 64x64)."""

from __future__ import annotations

import keras

from keras_roadmap.models.batchnorm import FrozenStatsBatchNormalization, batchnorm_mode
from keras_roadmap.models.batchnorm import freeze_batchnorm as _freeze_batchnorm
from keras_roadmap.models.head import embedding_head
from keras_roadmap.models.registry import INPUT_NAME, register_embedder


def tiny_cnn_backbone(input_shape, width=16, frozen_statistics=False) -> keras.Model:
    """Three [Conv3x3 -> BatchNorm -> ReLU] blocks (width, 2*width, 4*width filters), the first
    two followed by 2x2 max pooling. (B, H, W, C) -> (B, H/4, W/4, 4*width); named "backbone".
    ``frozen_statistics``: FrozenStatsBatchNormalization layers (the paper's frozen BatchNorm)."""
    if int(width) != width or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}.")
    images = keras.Input(shape=input_shape, name="backbone_images")
    x = images
    for block, filters in enumerate((width, 2 * width, 4 * width)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{block}")(x)
        x = (FrozenStatsBatchNormalization if frozen_statistics else keras.layers.BatchNormalization)(
            name=f"bn{block}"
        )(x)
        x = keras.layers.ReLU(name=f"relu{block}")(x)
        if block < 2:
            x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
    return keras.Model(images, x, name="backbone")


@register_embedder("tiny_cnn")
def build_tiny_cnn(
    *,
    input_shape,
    embedding_dim=None,
    l2_normalize=True,
    freeze_batchnorm=True,
    backbone_weights=None,
    width=16,
    pooling="avg",
    layer_norm=False,
):
    """Tiny CNN + global pooling ("avg", "max" or "gem") + optional LayerNorm (False, True or
    "affine", as in `embedding_head`) + Dense(64 by default) + L2. Random init only
    (or a ``.weights.h5`` of this embedder); with ``freeze_batchnorm`` (the default, as for the
    real backbones) BatchNorm is a fixed affine map at init, so pass False to train from scratch.
    """
    if backbone_weights is not None:
        raise ValueError(
            "tiny_cnn has no pretrained backbone presets: use weights=None or a .weights.h5 file "
            "saved from a tiny_cnn embedder."
        )
    mode = batchnorm_mode(freeze_batchnorm)
    backbone = tiny_cnn_backbone(input_shape, width, frozen_statistics=mode == "statistics")
    if mode == "all":
        _freeze_batchnorm(backbone, "all")
    images = keras.Input(shape=input_shape, name=INPUT_NAME)
    embeddings = embedding_head(
        backbone(images),
        pooling=pooling,
        layer_norm=layer_norm,
        embedding_dim=64 if embedding_dim is None else embedding_dim,
        l2_normalize=l2_normalize,
    )
    return keras.Model(images, embeddings, name="tiny_cnn_embedder")
