"""Retrieval datasets (SOP, CUB-200-2011, iNaturalist-2018, In-Shop) as fast tf.data pipelines.

Readers parse the official list files into a `RetrievalSplit`; `make_train_dataset` turns a
sampler (`keras_roadmap.samplers`) into class-balanced training batches with a transform
preset's train transform, `make_eval_dataset` reads a split in order with its test transform.
The presets ("sop", "sop_big", "cub", "cub_big", "inaturalist", "inshop", "inshop_big") are the
official ROADMAP transforms (`keras_roadmap.data.presets`); `eval_transform(image, preset)` and
`train_transform(image, seed, preset)` apply them to one image.

The readers need only numpy; the pipeline and transform names import TensorFlow on first use,
so they load only when a pipeline is built (keeps `keras_roadmap.data` light for tools that
only read list files).
"""

import importlib

from keras_roadmap.data.cub import load_cub
from keras_roadmap.data.custom import CustomData, ImageSet, inspect_images, load_custom, load_rgb, read_images
from keras_roadmap.data.class_split import split_by_class
from keras_roadmap.data.glyphs import GlyphDataset, build_glyph_dataset
from keras_roadmap.data.inaturalist import load_inaturalist
from keras_roadmap.data.inshop import load_inshop
from keras_roadmap.data.sop import load_sop
from keras_roadmap.data.split import DatasetFormatError, RetrievalSplit

_LAZY = {
    "CorruptImageLog": "pipeline",
    "make_eval_dataset": "pipeline",
    "make_train_dataset": "pipeline",
    "IMAGENET_MEAN": "presets",
    "IMAGENET_STD": "presets",
    "PRESETS": "presets",
    "TransformPreset": "presets",
    "get_preset": "presets",
    "read_model_preset": "presets",
    "write_model_preset": "presets",
    "decode_image": "transforms",
    "eval_transform": "transforms",
    "eval_transform_batch": "transforms",
    "normalize_imagenet": "transforms",
    "resize_like_pil": "transforms",
    "sample_crop_box": "transforms",
    "train_transform": "transforms",
    "train_transform_from_box": "transforms",
}

__all__ = sorted(
    ["CustomData", "DatasetFormatError", "GlyphDataset", "ImageSet", "inspect_images", "load_custom", "load_rgb", "read_images", "split_by_class", "RetrievalSplit", "build_glyph_dataset", "load_cub", "load_inaturalist", "load_inshop", "load_sop", *_LAZY]
)


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"keras_roadmap.data.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'keras_roadmap.data' has no attribute {name!r}")


def __dir__():
    return __all__
