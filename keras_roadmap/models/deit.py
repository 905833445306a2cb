"""DeiT embedders: the class token of a DeiT-S/16 or DeiT-B/16, no projection by default.

The paper's DeiT runs use timm's DeiT (a plain ViT: class token only), take the class token
after the final LayerNorm and add no projection: embeddings are 384-d (S) or 768-d (B). Two
variants:

* ``"timm"`` (default): timm's ``VisionTransformer`` written in Keras layers (patch 16,
  LayerNorm eps 1e-6, exact GELU, fused qkv attention), layer names from timm's module paths
  (``blocks.0.attn`` -> ``blocks_0_attn``), so timm / DeiT checkpoints load with
  ``weights=PATH`` (:mod:`keras_roadmap.models.convert`). ``deit_small_distilled`` is this same
  class-token-only network: its checkpoint loads with the official ROADMAP token removal (the
  distillation token and its position embedding are dropped, so attention sees the class token
  and the patches only).
* ``"keras_hub"``: keras-hub's ``ViTBackbone`` with the DeiT config (``deit_small`` /
  ``deit_base``), or ``DeiTBackbone`` (class + distillation token, ``deit_small_distilled``),
  for keras-hub presets (chosen automatically when ``weights`` is a keras-hub preset). Only
  this distilled network keeps the distillation token, so only it accepts
  ``token="cls_dist_mean"`` / ``"cls_dist_concat"``.

Input: ImageNet-normalised RGB, ``(rgb / 255 - IMAGENET_MEAN) / IMAGENET_STD``, with H and W
divisible by 16 (the position embeddings are built for that exact size).
"""

from __future__ import annotations

import keras

from keras_roadmap.models._hub import backbone_from_preset, import_keras_hub
from keras_roadmap.models.head import embedding_head
from keras_roadmap.models.registry import INPUT_NAME, register_embedder
from keras_roadmap.models.vit_layers import ClassTokenPositionEmbedding, FusedQKVSelfAttention

PATCH_SIZE = 16
VARIANTS = ("timm", "keras_hub")
_LN_EPSILON = 1e-6  # timm ViT's LayerNorm
DEIT_CONFIGS = {
    "small": {"num_layers": 12, "num_heads": 6, "hidden_dim": 384, "mlp_dim": 1536},
    "base": {"num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072},
}


def _check_image_shape(input_shape):
    height, width = input_shape[0], input_shape[1]
    if height is None or width is None or height % PATCH_SIZE or width % PATCH_SIZE:
        raise ValueError(
            f"DeiT needs a fixed input height and width divisible by the patch size {PATCH_SIZE}, "
            f"got input_shape={tuple(input_shape)}; e.g. (224, 224, 3)."
        )


def timm_vit(size, input_shape) -> keras.Model:
    """timm's DeiT/ViT ``forward_features`` in Keras, named "backbone": (B, H, W, 3) ->
    normalised tokens (B, 1 + HW/256, D), class token first. ``size``: "small" or "base"."""
    _check_image_shape(input_shape)
    config = DEIT_CONFIGS[size]
    dim = config["hidden_dim"]
    images = keras.Input(shape=input_shape, name="backbone_images")
    x = keras.layers.Conv2D(dim, PATCH_SIZE, strides=PATCH_SIZE, name="patch_embed_proj")(images)
    x = keras.layers.Reshape((-1, dim), name="patch_embed_flatten")(x)  # row-major, as timm
    x = ClassTokenPositionEmbedding(name="embeddings")(x)
    for i in range(config["num_layers"]):
        prefix = f"blocks_{i}_"
        y = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name=prefix + "norm1")(x)
        y = FusedQKVSelfAttention(config["num_heads"], name=prefix + "attn")(y)
        x = keras.layers.Add(name=prefix + "add1")([x, y])
        y = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name=prefix + "norm2")(x)
        y = keras.layers.Dense(config["mlp_dim"], name=prefix + "mlp_fc1")(y)
        # keras' "gelu" is the exact (erf) GELU by default, as torch.nn.GELU.
        y = keras.layers.Activation("gelu", name=prefix + "mlp_act")(y)
        y = keras.layers.Dense(dim, name=prefix + "mlp_fc2")(y)
        x = keras.layers.Add(name=prefix + "add2")([x, y])
    x = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name="norm")(x)
    return keras.Model(images, x, name="backbone")


def deit_backbone(size, input_shape, *, distilled, backbone_weights=None) -> keras.Model:
    """The DeiT trunk named "backbone": (B, H, W, 3) -> tokens (B, T, D), class token first.

    ``size``: "small" or "base". ``distilled``: DeiTBackbone (T = 2 + HW/256, distillation token
    at index 1) instead of ViTBackbone (T = 1 + HW/256). ``backbone_weights``: None or a
    keras-hub preset directory/name of the matching class.
    """
    _check_image_shape(input_shape)
    keras_hub = import_keras_hub()
    cls = keras_hub.models.DeiTBackbone if distilled else keras_hub.models.ViTBackbone
    if backbone_weights is not None:
        backbone = backbone_from_preset(backbone_weights, cls, name="backbone")
        if tuple(backbone.image_shape) != tuple(input_shape):
            raise ValueError(
                f"Preset {backbone_weights!r} is built for images of shape "
                f"{tuple(backbone.image_shape)} (its position embeddings fix the size); pass "
                f"input_shape={tuple(backbone.image_shape)}."
            )
        return backbone
    config = dict(DEIT_CONFIGS[size])
    if distilled:
        config["intermediate_dim"] = config.pop("mlp_dim")
    return cls(image_shape=tuple(input_shape), patch_size=PATCH_SIZE, name="backbone", **config)


def _build(
    size,
    distilled,
    *,
    input_shape,
    embedding_dim,
    l2_normalize,
    freeze_batchnorm,
    backbone_weights,
    token,
    model_name,
    variant,
):
    del freeze_batchnorm  # DeiT has no BatchNorm; accepted so every embedder takes the flag.
    if variant is None:
        variant = "timm" if backbone_weights is None else "keras_hub"
    if variant not in VARIANTS:
        raise ValueError(f"DeiT variant must be one of {VARIANTS}, got {variant!r}.")
    if token != "cls" and not (distilled and variant == "keras_hub"):
        raise ValueError(
            f"{model_name} (variant {variant!r}) has no distillation token: token must be 'cls', "
            f"got {token!r} (only variant='keras_hub' of deit_small_distilled keeps that token)."
        )
    if variant == "timm":
        if backbone_weights is not None:
            raise ValueError(
                f"variant='timm' loads timm/DeiT checkpoints (weights=PATH.pth or .safetensors), not "
                f"keras-hub presets ({backbone_weights!r}); pass variant='keras_hub' for those."
            )
        backbone = timm_vit(size, input_shape)
    else:
        backbone = deit_backbone(size, input_shape, distilled=distilled, backbone_weights=backbone_weights)
    images = keras.Input(shape=input_shape, name=INPUT_NAME)
    embeddings = embedding_head(backbone(images), pooling=token, embedding_dim=embedding_dim, l2_normalize=l2_normalize)
    return keras.Model(images, embeddings, name=model_name)


@register_embedder("deit_small")
def build_deit_small(
    *,
    input_shape,
    embedding_dim=None,
    l2_normalize=True,
    freeze_batchnorm=True,
    backbone_weights=None,
    token="cls",
    variant=None,
):
    """DeiT-S/16 class token (384-d; a Dense projection only if ``embedding_dim`` is given)."""
    return _build(
        "small",
        False,
        input_shape=input_shape,
        embedding_dim=embedding_dim,
        l2_normalize=l2_normalize,
        freeze_batchnorm=freeze_batchnorm,
        backbone_weights=backbone_weights,
        token=token,
        model_name="deit_small_embedder",
        variant=variant,
    )


@register_embedder("deit_small_distilled")
def build_deit_small_distilled(
    *,
    input_shape,
    embedding_dim=None,
    l2_normalize=True,
    freeze_batchnorm=True,
    backbone_weights=None,
    token="cls",
    variant=None,
):
    """Distilled DeiT-S/16 (384-d). Default variant "timm": the class-token-only network into
    which a distilled checkpoint loads with the official token removal. Variant "keras_hub"
    keeps the distillation token; ``token`` = "cls" (default), "cls_dist_mean" or
    "cls_dist_concat" then picks the embedding."""
    return _build(
        "small",
        True,
        input_shape=input_shape,
        embedding_dim=embedding_dim,
        l2_normalize=l2_normalize,
        freeze_batchnorm=freeze_batchnorm,
        backbone_weights=backbone_weights,
        token=token,
        model_name="deit_small_distilled_embedder",
        variant=variant,
    )


@register_embedder("deit_base")
def build_deit_base(
    *,
    input_shape,
    embedding_dim=None,
    l2_normalize=True,
    freeze_batchnorm=True,
    backbone_weights=None,
    token="cls",
    variant=None,
):
    """DeiT-B/16 class token (768-d)."""
    return _build(
        "base",
        False,
        input_shape=input_shape,
        embedding_dim=embedding_dim,
        l2_normalize=l2_normalize,
        freeze_batchnorm=freeze_batchnorm,
        backbone_weights=backbone_weights,
        token=token,
        model_name="deit_base_embedder",
        variant=variant,
    )
