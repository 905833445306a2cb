"""ResNet-50 embedders: ``resnet50`` (GAP + Dense) and ``resnet50_max_ln`` (GMP + LN + Dense).

Which ResNet-50? The paper uses torchvision's ``resnet50``, i.e. ResNet **v1.5**: the stride-2 of
each downsampling bottleneck sits on the 3x3 conv, BatchNorm eps 1e-5. Three variants:

* ``"torchvision"`` (the default): torchvision's network written in Keras layers, with layer
  names taken from torchvision's module paths (``layer1.0.conv1`` -> ``layer1_0_conv1``), so a
  torchvision checkpoint (``resnet50-0676ba61.pth``, ``ResNet50_Weights.IMAGENET1K_V1``) loads
  as is (``weights=PATH``, see :mod:`keras_roadmap.models.convert`). Paddings are explicit, as
  in torchvision (Keras' "same" pads stride-2 convolutions on one side only).
* ``"keras_hub"``: keras-hub's ``ResNetBackbone`` (v1.5 too), for keras-hub presets; chosen
  automatically when ``weights`` is a keras-hub preset.
* ``"keras_applications"``: ``keras.applications.ResNet50``, **v1** (stride on the first 1x1
  conv, BN eps 1.001e-5): a different network, only on request.

Input: ImageNet-normalised RGB, ``(rgb / 255 - IMAGENET_MEAN) / IMAGENET_STD``, for every
variant; the keras.applications one converts internally to its "caffe" input (BGR, 0-255, mean
subtracted) so its ImageNet weights see what they were trained on.
"""

from __future__ import annotations

import keras

from keras_roadmap.models._hub import backbone_from_preset, import_keras_hub
from keras_roadmap.models.batchnorm import FrozenStatsBatchNormalization, batchnorm_mode
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
VARIANTS = ("torchvision", "keras_hub", "keras_applications")
RESNET50_BLOCKS = (3, 4, 6, 3)
# torch.nn.BatchNorm2d defaults: eps 1e-5, momentum 0.1 (Keras momentum = 1 - torch's).
_BN_EPSILON = 1e-5
_BN_MOMENTUM = 0.9


def _batchnorm(name, freeze):
    if freeze == "statistics":
        return FrozenStatsBatchNormalization(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, name=name)
    return keras.layers.BatchNormalization(
        epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, trainable=freeze != "all", name=name
    )


def _conv(x, filters, kernel, stride, name):
    if kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=name + "_pad")(x)
    return keras.layers.Conv2D(filters, kernel, strides=stride, use_bias=False, name=name)(x)


def _bottleneck(x, planes, stride, prefix, freeze):
    """torchvision's ``Bottleneck`` (expansion 4, stride on the 3x3 conv)."""
    shortcut = x
    out = keras.layers.ReLU(name=prefix + "_relu1")(
        _batchnorm(prefix + "_bn1", freeze)(_conv(x, planes, 1, 1, prefix + "_conv1"))
    )
    out = keras.layers.ReLU(name=prefix + "_relu2")(
        _batchnorm(prefix + "_bn2", freeze)(_conv(out, planes, 3, stride, prefix + "_conv2"))
    )
    out = _batchnorm(prefix + "_bn3", freeze)(_conv(out, planes * 4, 1, 1, prefix + "_conv3"))
    if stride != 1 or x.shape[-1] != planes * 4:
        shortcut = _conv(x, planes * 4, 1, stride, prefix + "_downsample_0")
        shortcut = _batchnorm(prefix + "_downsample_1", freeze)(shortcut)
    return keras.layers.ReLU(name=prefix + "_relu3")(keras.layers.Add(name=prefix + "_add")([out, shortcut]))


def torchvision_resnet50(input_shape, *, freeze_batchnorm=None) -> keras.Model:
    """torchvision's ``nn.Sequential(*list(resnet50().children())[:-2])`` in Keras, named
    "backbone": (B, H, W, 3) -> (B, ceil(H/32), ceil(W/32), 2048), channels last.

    ``freeze_batchnorm``: None (plain BatchNormalization), "statistics"
    (:class:`FrozenStatsBatchNormalization`, the paper's) or "all" (``trainable=False``).
    Layer names follow torchvision's module paths with "." -> "_".
    """
    freeze = batchnorm_mode(freeze_batchnorm)
    images = keras.Input(shape=input_shape, name="backbone_images")
    x = _conv(images, 64, 7, 2, "conv1")
    x = keras.layers.ReLU(name="relu")(_batchnorm("bn1", freeze)(x))
    # Zero padding equals torch's -inf padding here: the inputs are >= 0 after the ReLU.
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for stage, (blocks, planes) in enumerate(zip(RESNET50_BLOCKS, (64, 128, 256, 512), strict=False), start=1):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 1 else 1
            x = _bottleneck(x, planes, stride, f"layer{stage}_{block}", freeze)
    return keras.Model(images, x, name="backbone")


def resnet50_backbone(
    input_shape, *, variant="torchvision", backbone_weights=None, freeze_batchnorm=None
) -> keras.Model:
    """The ResNet-50 trunk as a model named "backbone": (B, H, W, 3) -> (B, H/32, W/32, 2048).

    ``variant="torchvision"`` (v1.5, the paper's, default): built random; torchvision
    checkpoints are loaded by ``build_embedder(weights=PATH)``. ``variant="keras_hub"`` (v1.5):
    random init, or ``backbone_weights`` = a keras-hub ResNet preset directory/name.
    ``variant="keras_applications"`` (v1): ``None`` or ``"imagenet"``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"ResNet-50 variant must be one of {VARIANTS}, got {variant!r}.")
    if variant == "torchvision":
        if backbone_weights is not None:
            raise ValueError(
                f"variant='torchvision' loads torchvision checkpoints (weights='resnet50-0676ba61.pth'), "
                f"not keras-hub presets ({backbone_weights!r}); pass variant='keras_hub' for those."
            )
        return torchvision_resnet50(input_shape, freeze_batchnorm=freeze_batchnorm)
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
        return keras_hub.models.ResNetBackbone(**RESNET50_HUB_CONFIG, image_shape=tuple(input_shape), name="backbone")
    if backbone_weights not in (None, "imagenet"):
        raise ValueError(
            "variant='keras_applications' takes weights=None, 'imagenet' or an embedder "
            f".weights.h5 file, got {backbone_weights!r}."
        )
    images = keras.Input(shape=input_shape, name="backbone_images")
    caffe_images = ImageNetToCaffe(name="to_caffe")(images)
    trunk = keras.applications.ResNet50(include_top=False, weights=backbone_weights, input_tensor=caffe_images)
    return keras.Model(images, trunk.output, name="backbone")


def _build(
    input_shape,
    embedding_dim,
    l2_normalize,
    freeze_batchnorm,
    backbone_weights,
    *,
    pooling,
    layer_norm,
    variant,
    model_name,
):
    if variant is None:
        variant = "torchvision" if backbone_weights is None else "keras_hub"
    mode = batchnorm_mode(freeze_batchnorm)
    backbone = resnet50_backbone(input_shape, variant=variant, backbone_weights=backbone_weights, freeze_batchnorm=mode)
    if mode is not None and variant != "torchvision":
        _freeze_batchnorm(backbone, mode)
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
def build_resnet50(
    *,
    input_shape,
    embedding_dim=None,
    l2_normalize=True,
    freeze_batchnorm=True,
    backbone_weights=None,
    variant=None,
    pooling="avg",
    layer_norm=False,
):
    """ResNet-50 (v1.5 by default) + global average pooling + Dense(512) + L2 (SOP/INShop/iNat).

    ``variant``: None (default: "torchvision", or "keras_hub" when ``weights`` is a keras-hub
    preset), "torchvision" (v1.5, torchvision's layer names), "keras_hub" (v1.5) or
    "keras_applications" (v1).
    ``pooling``: "avg" (default), "max" or "gem" (`GeMPooling`, trainable p = 3: RS@k's).
    ``layer_norm`` before the projection: False (default), True (no affine parameters: SupRank's
    ``model/resnet_ln.yaml``) or "affine" (learned scale and offset: RS@k's ``src/netlib.py``).
    """
    return _build(
        input_shape,
        embedding_dim,
        l2_normalize,
        freeze_batchnorm,
        backbone_weights,
        pooling=pooling,
        layer_norm=layer_norm if layer_norm == "affine" else bool(layer_norm),
        variant=variant,
        model_name="resnet50_embedder",
    )


@register_embedder("resnet50_max_ln")
def build_resnet50_max_ln(
    *, input_shape, embedding_dim=None, l2_normalize=True, freeze_batchnorm=True, backbone_weights=None, variant=None
):
    """ResNet-50 + global max pooling + LayerNorm (no affine) + Dense(512) + L2: the CUB setting."""
    return _build(
        input_shape,
        embedding_dim,
        l2_normalize,
        freeze_batchnorm,
        backbone_weights,
        pooling="max",
        layer_norm=True,
        variant=variant,
        model_name="resnet50_max_ln_embedder",
    )
