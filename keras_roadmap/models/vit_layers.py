"""The two layers a timm-style ViT needs beyond Keras' own: class token + position embedding,
and multi-head self-attention with one fused ``qkv`` projection (timm's ``Attention``).

Weights are laid out as in timm (after transposing its Linear weights), so converting a timm /
DeiT checkpoint is a rename and a transpose (see :mod:`keras_roadmap.models.convert`).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_roadmap")
class ClassTokenPositionEmbedding(keras.layers.Layer):
    """Prepend a learned class token to patch tokens and add learned position embeddings.

    Input (B, N, D) patch tokens; output (B, 1 + N, D). Weights: ``cls_token`` (1, 1, D) and
    ``pos_embed`` (1, 1 + N, D), timm's ``cls_token`` / ``pos_embed`` (initialised with
    std 0.02 truncated normals, as timm does).
    """

    def build(self, input_shape):
        num_patches, dim = input_shape[1], input_shape[2]
        if num_patches is None or dim is None:
            raise ValueError(f"ClassTokenPositionEmbedding needs a static (N, D), got {input_shape}.")
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.cls_token = self.add_weight(shape=(1, 1, dim), initializer=init, name="cls_token")
        self.pos_embed = self.add_weight(shape=(1, 1 + num_patches, dim), initializer=init, name="pos_embed")

    def call(self, tokens):
        batch = ops.shape(tokens)[0]
        cls = ops.broadcast_to(ops.cast(self.cls_token, tokens.dtype), (batch, 1, tokens.shape[-1]))
        return ops.concatenate([cls, tokens], axis=1) + ops.cast(self.pos_embed, tokens.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] + 1, input_shape[2])


@keras.saving.register_keras_serializable(package="keras_roadmap")
class FusedQKVSelfAttention(keras.layers.Layer):
    """timm's ``Attention``: ``softmax(q k^T / sqrt(d)) v`` over ``num_heads`` heads.

    Input and output (B, T, D). Weights: ``qkv_kernel`` (D, 3D) and ``qkv_bias`` (3D,) whose
    output columns are [q | k | v], each split head-major into ``num_heads`` x ``D/num_heads``;
    ``proj_kernel`` (D, D), ``proj_bias`` (D,).
    """

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        if int(num_heads) != num_heads or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}.")
        self.num_heads = int(num_heads)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"token dim {dim} is not divisible by num_heads {self.num_heads}.")
        init = keras.initializers.GlorotUniform()
        self.qkv_kernel = self.add_weight(shape=(dim, 3 * dim), initializer=init, name="qkv_kernel")
        self.qkv_bias = self.add_weight(shape=(3 * dim,), initializer="zeros", name="qkv_bias")
        self.proj_kernel = self.add_weight(shape=(dim, dim), initializer=init, name="proj_kernel")
        self.proj_bias = self.add_weight(shape=(dim,), initializer="zeros", name="proj_bias")

    def call(self, tokens):
        batch, length, dim = ops.shape(tokens)[0], ops.shape(tokens)[1], tokens.shape[-1]
        head_dim = dim // self.num_heads
        qkv = ops.matmul(tokens, ops.cast(self.qkv_kernel, tokens.dtype)) + ops.cast(self.qkv_bias, tokens.dtype)
        qkv = ops.transpose(ops.reshape(qkv, (batch, length, 3, self.num_heads, head_dim)), (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, d) each
        scores = ops.matmul(q * ops.cast(head_dim**-0.5, tokens.dtype), ops.transpose(k, (0, 1, 3, 2)))
        out = ops.matmul(ops.softmax(scores, axis=-1), v)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, length, dim))
        return ops.matmul(out, ops.cast(self.proj_kernel, tokens.dtype)) + ops.cast(self.proj_bias, tokens.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}
