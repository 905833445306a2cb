"""Small Keras layers the embedders need (all serializable, all shape-preserving in batch)."""

from __future__ import annotations

import keras
from keras import ops

from keras_roadmap import validation

# ImageNet statistics of [0, 1] RGB images, defined once with the transforms (TensorFlow-free).
from keras_roadmap.data.presets import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402,F401

# keras.applications ResNet50 ("caffe" mode): BGR, 0-255, minus these per-channel means.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="keras_roadmap")
class ImageNetToCaffe(keras.layers.Layer):
    """Convert ImageNet-normalised RGB images to keras.applications' "caffe" input.

    Input: (B, H, W, 3) float, ``(rgb01 - IMAGENET_MEAN) / IMAGENET_STD``. Output: same shape,
    ``bgr255 - caffe_mean``. Lets a keras.applications ResNet50 with ImageNet weights take the
    same input as every other embedder here.
    """

    def call(self, images):
        rgb01 = images * ops.convert_to_tensor(IMAGENET_STD, images.dtype) + ops.convert_to_tensor(
            IMAGENET_MEAN, images.dtype
        )
        bgr255 = ops.flip(rgb01, axis=-1) * 255.0
        return bgr255 - ops.convert_to_tensor(_CAFFE_BGR_MEAN, images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="keras_roadmap")
class TokenPooling(keras.layers.Layer):
    """Pick the embedding out of a ViT/DeiT token sequence.

    Input: (B, T, D) tokens, class token at index 0 (and distillation token at 1 for DeiT).
    ``mode``: ``"cls"`` -> (B, D) class token; ``"cls_dist_mean"`` -> (B, D) mean of class and
    distillation tokens; ``"cls_dist_concat"`` -> (B, 2D) both, concatenated.
    """

    MODES = ("cls", "cls_dist_mean", "cls_dist_concat")

    def __init__(self, mode="cls", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"TokenPooling mode must be one of {self.MODES}, got {mode!r}.")
        self.mode = mode

    def call(self, tokens):
        if self.mode == "cls":
            return tokens[:, 0]
        if self.mode == "cls_dist_mean":
            return (tokens[:, 0] + tokens[:, 1]) * 0.5
        return ops.concatenate([tokens[:, 0], tokens[:, 1]], axis=-1)

    def compute_output_shape(self, input_shape):
        dim = input_shape[-1]
        if self.mode == "cls_dist_concat" and dim is not None:
            dim = 2 * dim
        return (input_shape[0], dim)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="keras_roadmap")
class GeMPooling(keras.layers.Layer):
    """Generalised-mean pooling with a trainable exponent (Radenović et al.; RS@k's ``GeM``).

    Input: (B, H, W, C) features. Output: (B, C),
    ``mean over H, W of max(x, eps) ** p``, to the power ``1 / p``; ``p`` is one trainable scalar
    (default 3.0) shared by all channels, ``eps`` 1e-6 (yash0307/RecallatK_surrogate
    ``src/netlib.py``). p = 1 is average pooling, large p approaches max pooling. Computes in
    float32 whatever the dtype policy (``x ** 3`` of ResNet features can overflow float16).
    """

    def __init__(self, p=3.0, eps=1e-6, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.initial_p = validation.number("p", p, owner="GeMPooling", minimum=0, min_open=True)
        self.eps = validation.number("eps", eps, owner="GeMPooling", minimum=0, min_open=True)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"GeMPooling takes (B, H, W, C) features, got shape {tuple(input_shape)}.")
        self.p = self.add_weight(
            name="p", shape=(1,), initializer=keras.initializers.Constant(self.initial_p), trainable=True
        )

    def call(self, features):
        x = ops.cast(features, self.compute_dtype)
        p = ops.cast(self.p, x.dtype)
        pooled = ops.mean(ops.power(ops.maximum(x, self.eps), p), axis=(1, 2))
        return ops.power(pooled, 1.0 / p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "p": self.initial_p, "eps": self.eps}
