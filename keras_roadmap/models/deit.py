"""DeiT embedders: the class token of a DeiT-S/16 or DeiT-B/16, no projection by default.

The paper's DeiT runs use timm's ``deit_small_patch16_224`` (a plain ViT: class token only),
take the class token after the final LayerNorm and add no projection: embeddings are 384-d (S)
or 768-d (B). Here:

* ``deit_small`` / ``deit_base``: keras-hub ``ViTBackbone`` with the DeiT config (12 layers,
  patch 16, 6 heads x 64 / 12 heads x 64, MLP 4x, LayerNorm eps 1e-6, exact GELU): the same
  network as timm's, class token only. (keras-hub's ``DeiTBackbone`` always carries a
  distillation token, so it is a different network for the non-distilled models.)
* ``deit_small_distilled``: keras-hub ``DeiTBackbone`` (class + distillation token), so
  keras-hub's ``deit_small_distilled_patch16_224_imagenet`` preset loads as is. The official
  ROADMAP embedder copies the distilled weights into a class-token-only ViT and discards the
  distillation token; we keep the token in the sequence and, like the official code, embed the
  **class token only** (``token="cls"``, default). ``token="cls_dist_mean"`` averages the two
  tokens, ``"cls_dist_concat"`` concatenates them (768-d for S).

Input: ImageNet-normalised RGB, ``(rgb / 255 - IMAGENET_MEAN) / IMAGENET_STD``, with H and W
divisible by 16 (the position embeddings are built for that exact size).
"""

from __future__ import annotations

import keras

from keras_roadmap.models._hub import backbone_from_preset, import_keras_hub
from keras_roadmap.models.head import embedding_head
from keras_roadmap.models.registry import INPUT_NAME, register_embedder

PATCH_SIZE = 16
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


def _build(size, distilled, *, input_shape, embedding_dim, l2_normalize, freeze_batchnorm,
           backbone_weights, token, model_name):
    del freeze_batchnorm  # DeiT has no BatchNorm; accepted so every embedder takes the flag.
    if not distilled and token != "cls":
        raise ValueError(
            f"{model_name} has no distillation token: token must be 'cls', got {token!r}."
        )
    backbone = deit_backbone(size, input_shape, distilled=distilled,
                             backbone_weights=backbone_weights)
    images = keras.Input(shape=input_shape, name=INPUT_NAME)
    embeddings = embedding_head(
        backbone(images), pooling=token, embedding_dim=embedding_dim, l2_normalize=l2_normalize
    )
    return keras.Model(images, embeddings, name=model_name)


@register_embedder("deit_small")
def build_deit_small(*, input_shape, embedding_dim=None, l2_normalize=True, freeze_batchnorm=True,
                     backbone_weights=None, token="cls"):
    """DeiT-S/16 class token (384-d; a Dense projection only if ``embedding_dim`` is given)."""
    return _build("small", False, input_shape=input_shape, embedding_dim=embedding_dim,
                  l2_normalize=l2_normalize, freeze_batchnorm=freeze_batchnorm,
                  backbone_weights=backbone_weights, token=token, model_name="deit_small_embedder")


@register_embedder("deit_small_distilled")
def build_deit_small_distilled(*, input_shape, embedding_dim=None, l2_normalize=True,
                               freeze_batchnorm=True, backbone_weights=None, token="cls"):
    """Distilled DeiT-S/16; ``token`` = "cls" (default, as the official code), "cls_dist_mean"
    or "cls_dist_concat"."""
    return _build("small", True, input_shape=input_shape, embedding_dim=embedding_dim,
                  l2_normalize=l2_normalize, freeze_batchnorm=freeze_batchnorm,
                  backbone_weights=backbone_weights, token=token,
                  model_name="deit_small_distilled_embedder")


@register_embedder("deit_base")
def build_deit_base(*, input_shape, embedding_dim=None, l2_normalize=True, freeze_batchnorm=True,
                    backbone_weights=None, token="cls"):
    """DeiT-B/16 class token (768-d)."""
    return _build("base", False, input_shape=input_shape, embedding_dim=embedding_dim,
                  l2_normalize=l2_normalize, freeze_batchnorm=freeze_batchnorm,
                  backbone_weights=backbone_weights, token=token, model_name="deit_base_embedder")
