"""Retrieval datasets (SOP, CUB-200-2011, iNaturalist-2018, In-Shop) as fast tf.data pipelines.

Readers parse the official list files into a `RetrievalSplit`; `make_train_dataset` turns a
sampler (`keras_roadmap.samplers`) into class-balanced training batches with the paper's
augmentations, `make_eval_dataset` reads a split in order with the test transforms.
"""

from keras_roadmap.data.cub import load_cub
from keras_roadmap.data.inaturalist import load_inaturalist
from keras_roadmap.data.inshop import load_inshop
from keras_roadmap.data.pipeline import CorruptImageLog, make_eval_dataset, make_train_dataset
from keras_roadmap.data.sop import load_sop
from keras_roadmap.data.split import DatasetFormatError, RetrievalSplit
from keras_roadmap.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomResizedCrop,
    decode_image,
    eval_transform,
    normalize_imagenet,
    train_transform,
)

__all__ = [
    "CorruptImageLog",
    "DatasetFormatError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomResizedCrop",
    "RetrievalSplit",
    "decode_image",
    "eval_transform",
    "load_cub",
    "load_inaturalist",
    "load_inshop",
    "load_sop",
    "make_eval_dataset",
    "make_train_dataset",
    "normalize_imagenet",
    "train_transform",
]
