"""The embedding head shared by all embedders: pooling, optional LayerNorm, projection, L2."""

from __future__ import annotations

import keras

from keras_roadmap.models.layers import GeMPooling, TokenPooling

# Every head layer's name starts with this, so its variables' paths do too: the optimiser uses it
# to give the head its own learning rate (`keras_roadmap.optim.build_optimizer`).
HEAD_PREFIX = "head_"

_POOLINGS = ("avg", "max", "gem") + TokenPooling.MODES
_LAYER_NORMS = (False, True, "affine")


def embedding_head(
    features,
    *,
    pooling: str,
    embedding_dim: int | None,
    layer_norm: bool | str = False,
    l2_normalize: bool = True,
):
    """Apply the head to backbone features (a symbolic tensor) and return the embeddings.

    Args:
        features: (B, H, W, C) feature map for ``pooling`` "avg"/"max", or (B, T, D) tokens for
            the TokenPooling modes ("cls", "cls_dist_mean", "cls_dist_concat").
        pooling: one of the above, or "gem" for (B, H, W, C) features: `GeMPooling` (trainable
            p = 3, RS@k's setting).
        embedding_dim: size of the Dense projection, or None for no projection.
        layer_norm: False (default), True: a LayerNorm without affine parameters (eps 1e-5)
            before the projection, the paper's CUB setting (``norm_features=True`` in the official
            code); "affine": the same with a learned scale and offset (``torch.nn.LayerNorm``'s
            default, RS@k's setting).
        l2_normalize: divide by the L2 norm (zero vectors stay zero, no NaN).

    Returns:
        (B, embedding_dim or feature dim) embeddings, float32 whatever the dtype policy: the last
        layer computes in float32 so mixed precision keeps a float32 output. Under
        ``keras.config.set_floatx("float64")`` (float64 policy) they are float64, so a float64
        model computes in float64 end to end.
    """
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}.")
    if pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name=HEAD_PREFIX + "avg_pool")(features)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name=HEAD_PREFIX + "max_pool")(features)
    elif pooling == "gem":
        x = GeMPooling(name=HEAD_PREFIX + "gem_pool")(features)
    else:
        x = TokenPooling(pooling, name=HEAD_PREFIX + "token_pool")(features)
    if not (isinstance(layer_norm, bool) or layer_norm == "affine"):
        raise ValueError(f"layer_norm must be one of {_LAYER_NORMS}, got {layer_norm!r}.")
    if layer_norm:
        affine = layer_norm == "affine"
        x = keras.layers.LayerNormalization(epsilon=1e-5, center=affine, scale=affine, name=HEAD_PREFIX + "layer_norm")(
            x
        )
    if embedding_dim is not None:
        if int(embedding_dim) != embedding_dim or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive int or None, got {embedding_dim!r}.")
        x = keras.layers.Dense(int(embedding_dim), name=HEAD_PREFIX + "projection")(x)
    dtype = output_dtype()
    if l2_normalize:
        return keras.layers.UnitNormalization(axis=-1, dtype=dtype, name=HEAD_PREFIX + "l2_normalize")(x)
    return keras.layers.Activation("linear", dtype=dtype, name=HEAD_PREFIX + "output")(x)


def output_dtype() -> str:
    """The embedders' output dtype: float64 when the global policy computes in float64
    (``keras.config.set_floatx("float64")``), else float32 (mixed precision included)."""
    policy = keras.config.dtype_policy()
    return "float64" if policy.compute_dtype == "float64" else "float32"
