"""ResNet-50 embedders: ``resnet50`` (GAP + Dense) and ``resnet50_max_ln`` (GMP + LN + Dense).

Which ResNet-50? The paper uses torchvision's ``resnet50``, i.e. ResNet **v1.5**: the stride-2 of
each downsampling bottleneck sits on the 3x3 conv, BatchNorm eps 1e-5. keras-hub's
``ResNetBackbone`` with the resnet50 config below is v1.5 too (default ``variant="keras_hub"``);
``keras.applications.ResNet50`` is **v1** (stride on the first 1x1 conv, BN eps 1.001e-5) and is
only available on request (``variant="keras_applications"``) because it is a different network.

Input: ImageNet-normalised RGB, ``(rgb / 255 - IMAGENET_MEAN) / IMAGENET_STD``, for both
variants; the keras.applications one converts internally to its "caffe" input (BGR, 0-255, mean
subtracted) so its ImageNet weights see what they were trained on.
"""

from __future__ import annotations

import keras

from keras_roadmap.models._hub import backbone_from_preset, import_keras_hub
from keras_roadmap.models.batchnorm import freeze_batchnorm as _freeze_batchnorm
from keras_roadmap.models.head import embedding_head
from keras_roadmap.models.layers import ImageNetToCaffe
from keras_roadmap.models.registry import INPUT_NAME, register_embedder

# keras_hub ResNetBackbone config of ResNet-50 (v1.5), as in keras-hub's resnet_50 presets.
RESNET50_HUB_CONFIG = {
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [7],
    "stackwise_num_filters": [64, 128, 256, 512],
    "stackwise_num_blocks": [3, 4, 6, 3],
    "stackwise_num_strides": [1, 2, 2, 2],
    "block_type": "bottleneck_block",
    "use_pre_activation": False,
}
VARIANTS = ("keras_hub", "keras_applications")


def resnet50_backbone(input_shape, *, variant="keras_hub", backbone_weights=None) -> keras.Model:
    """The ResNet-50 trunk as a model named "backbone": (B, H, W, 3) -> (B, H/32, W/32, 2048).

    ``variant="keras_hub"`` (v1.5, the paper's): random init, or ``backbone_weights`` = a
    keras-hub ResNet preset directory/name. ``variant="keras_applications"`` (v1): ``None`` or
    ``"imagenet"``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"ResNet-50 variant must be one of {VARIANTS}, got {variant!r}.")
    if variant == "keras_hub":
        keras_hub = import_keras_hub(
            "Or pass variant='keras_applications' for keras.applications.ResNet50, which is "
            "ResNet v1, not the paper's v1.5."
        )
        if backbone_weights is not None:
            return backbone_from_preset(
                backbone_weights,
                keras_hub.models.ResNetBackbone,
                image_shape=tuple(input_shape),
                name="backbone",
            )
        return keras_hub.models.ResNetBackbone(
            **RESNET50_HUB_CONFIG, image_shape=tuple(input_shape), name="backbone"
        )
    if backbone_weights not in (None, "imagenet"):
        raise ValueError(
            "variant='keras_applications' takes weights=None, 'imagenet' or an embedder "
            f".weights.h5 file, got {backbone_weights!r}."
        )
    images = keras.Input(shape=input_shape, name="backbone_images")
    caffe_images = ImageNetToCaffe(name="to_caffe")(images)
    trunk = keras.applications.ResNet50(
        include_top=False, weights=backbone_weights, input_tensor=caffe_images
    )
    return keras.Model(images, trunk.output, name="backbone")


def _build(input_shape, embedding_dim, l2_normalize, freeze_batchnorm, backbone_weights, *,
           pooling, layer_norm, variant, model_name):
    backbone = resnet50_backbone(input_shape, variant=variant, backbone_weights=backbone_weights)
    if freeze_batchnorm:
        _freeze_batchnorm(backbone)
    images = keras.Input(shape=input_shape, name=INPUT_NAME)
    embeddings = embedding_head(
        backbone(images),
        pooling=pooling,
        layer_norm=layer_norm,
        embedding_dim=512 if embedding_dim is None else embedding_dim,
        l2_normalize=l2_normalize,
    )
    return keras.Model(images, embeddings, name=model_name)


@register_embedder("resnet50")
def build_resnet50(*, input_shape, embedding_dim=None, l2_normalize=True, freeze_batchnorm=True,
                   backbone_weights=None, variant="keras_hub", pooling="avg"):
    """ResNet-50 (v1.5 by default) + global average pooling + Dense(512) + L2 (SOP/INShop/iNat).

    ``variant``: "keras_hub" (default, v1.5 = torchvision's) or "keras_applications" (v1).
    ``pooling``: "avg" (default) or "max".
    """
    return _build(input_shape, embedding_dim, l2_normalize, freeze_batchnorm, backbone_weights,
                  pooling=pooling, layer_norm=False, variant=variant,
                  model_name="resnet50_embedder")


@register_embedder("resnet50_max_ln")
def build_resnet50_max_ln(*, input_shape, embedding_dim=None, l2_normalize=True,
                          freeze_batchnorm=True, backbone_weights=None, variant="keras_hub"):
    """ResNet-50 + global max pooling + LayerNorm (no affine) + Dense(512) + L2: the CUB setting."""
    return _build(input_shape, embedding_dim, l2_normalize, freeze_batchnorm, backbone_weights,
                  pooling="max", layer_norm=True, variant=variant,
                  model_name="resnet50_max_ln_embedder")
