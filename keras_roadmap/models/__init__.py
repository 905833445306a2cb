"""Image embedders for retrieval: backbones + embedding heads, by name.

>>> from keras_roadmap.models import build_embedder, list_embedders
>>> model = build_embedder("tiny_cnn", input_shape=(32, 32, 3))  # (B, 32, 32, 3) -> (B, 64)

Every embedder takes ImageNet-normalised RGB (``(rgb / 255 - IMAGENET_MEAN) / IMAGENET_STD``),
names its input ``"images"``, nests its trunk as ``model.get_layer("backbone")``, names its head
layers ``"head_*"`` (see ``keras_roadmap.optim.build_optimizer``) and outputs float32
(float64 under ``keras.config.set_floatx("float64")``), L2-normalised embeddings.
``build_embedder("resnet50", weights="resnet50-0676ba61.pth")`` loads torchvision's ImageNet
weights (``keras_roadmap.models.convert``).
"""

from keras_roadmap.models import deit, resnet, tiny_cnn  # noqa: F401  (registers the builders)
from keras_roadmap.models.batchnorm import FrozenStatsBatchNormalization, freeze_batchnorm
from keras_roadmap.models.convert import PRETRAINED, load_checkpoint, read_state_dict
from keras_roadmap.models.head import HEAD_PREFIX, embedding_head
from keras_roadmap.models.layers import IMAGENET_MEAN, IMAGENET_STD, GeMPooling, ImageNetToCaffe, TokenPooling
from keras_roadmap.models.registry import (
    INPUT_NAME,
    RandomWeightsWarning,
    build_embedder,
    list_embedders,
    register_embedder,
)

__all__ = [
    "FrozenStatsBatchNormalization",
    "HEAD_PREFIX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_NAME",
    "GeMPooling",
    "ImageNetToCaffe",
    "PRETRAINED",
    "RandomWeightsWarning",
    "TokenPooling",
    "build_embedder",
    "embedding_head",
    "freeze_batchnorm",
    "list_embedders",
    "load_checkpoint",
    "read_state_dict",
    "register_embedder",
]
