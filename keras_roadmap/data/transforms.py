"""The paper's image transforms as per-image TensorFlow functions for `tf.data.Dataset.map`.

All randomness is stateless and keyed by an explicit `seed` tensor (shape (2,), int), so a given
(seed, element) pair always yields the same crop and flip whatever the map's parallelism.

Train: random-resized-crop (area 0.16-1 of the image, aspect ratio 3/4-4/3) to `image_size`,
horizontal flip with probability 1/2, ImageNet mean/std normalisation.
Test: resize the shorter side to `resize_size`, center crop `image_size`, same normalisation.
"""

from __future__ import annotations

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.16, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# The paper's test resize for its two crop sizes (224 and the "big" 256 setting).
DEFAULT_RESIZE = {224: 256, 256: 288}
BACKENDS = ("auto", "keras_cv", "tf_image")


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Decode JPEG/PNG/GIF/BMP bytes to uint8 (H, W, 3); grayscale becomes RGB, alpha is dropped,
    an animated GIF gives its first frame."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """(H, W, 1) or (H, W, 3) -> (H, W, 3), same dtype (for in-memory arrays)."""
    if image.shape[-1] == 1:
        return tf.image.grayscale_to_rgb(image)
    return image


def normalize_imagenet(image: tf.Tensor) -> tf.Tensor:
    """float32 pixels in [0, 255] -> `(x / 255 - mean) / std` with the ImageNet mean and std."""
    mean = tf.constant(IMAGENET_MEAN, tf.float32) * 255.0
    std = tf.constant(IMAGENET_STD, tf.float32) * 255.0
    return (tf.cast(image, tf.float32) - mean) / std


def resolve_backend(backend: str) -> str:
    """`"auto"` -> `"tf_image"`; validates the name and that keras-cv imports for `"keras_cv"`.

    Both backends give the same crop (the box is drawn the same way); `benchmarks/
    data_throughput.py` measured the tf.image one at 1.49 CPU ms/image against 1.74 for keras-cv's
    `RandomCropAndResize` (its vectorised-map fallback), so "auto" takes the cheaper one.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    if backend == "auto":
        return "tf_image"
    if backend == "keras_cv":
        try:
            import keras_cv  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "backend='keras_cv' needs keras-cv: pip install keras-roadmap[cv] "
                "(or use backend='tf_image')."
            ) from err
    return backend


class RandomResizedCrop:
    """Random-resized-crop with stateless sampling: `crop(image, seed) -> float32 (S, S, 3)`.

    The crop box is drawn by `tf.image.stateless_sample_distorted_bounding_box` (area fraction in
    `scale`, pixel aspect ratio in `ratio`, 10 attempts then the whole image, as torchvision).
    With `backend="keras_cv"` the crop is applied by keras-cv's `RandomCropAndResize`
    (`tf.image.crop_and_resize` in one op); keras-cv's own box sampler is stateful, so it cannot
    give per-element reproducibility in a parallel map and is not used. With `"tf_image"` the box
    is sliced and resized with `tf.image.resize` (bilinear). Both give the same box for a seed.

    Args:
        size: output side S (224, or 256 for the "big" setting).
        scale: (min, max) crop area as a fraction of the image area.
        ratio: (min, max) crop width / height.
        backend: "auto", "keras_cv" or "tf_image" (see `resolve_backend`).
    """

    def __init__(self, size: int = 224, scale=CROP_SCALE, ratio=CROP_RATIO, backend: str = "auto"):
        self.size = int(size)
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self.backend = resolve_backend(backend)
        self._layer = None
        if self.backend == "keras_cv":
            import keras_cv

            # Built once, outside the map function (keras-cv layers cannot be created inside it).
            self._layer = keras_cv.layers.RandomCropAndResize(
                target_size=(self.size, self.size), crop_area_factor=self.scale, aspect_ratio_factor=self.ratio
            )

    def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        begin, extent, boxes = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed,
            min_object_covered=0.0,
            aspect_ratio_range=self.ratio,
            area_range=self.scale,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        if self._layer is not None:
            # crop_and_resize reads uint8 directly and returns float32: no full-image cast.
            return self._layer.augment_image(image, transformation=boxes[0])
        crop = tf.slice(image, begin, extent)
        return tf.image.resize(crop, (self.size, self.size), method="bilinear")


def train_transform(image: tf.Tensor, seed: tf.Tensor, crop: RandomResizedCrop, normalize: bool = True) -> tf.Tensor:
    """uint8/float (H, W, 3) -> float32 (S, S, 3): random-resized-crop, flip, normalisation.

    Args:
        image: one image, pixel values in [0, 255].
        seed: int32/int64 tensor of shape (2,); distinct per element for distinct augmentations.
        crop: a `RandomResizedCrop` (built once, outside the map function).
        normalize: apply `normalize_imagenet` (else pixels stay in [0, 255]).
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    image = crop(image, seeds[0])
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    return normalize_imagenet(image) if normalize else tf.cast(image, tf.float32)


def eval_transform(image: tf.Tensor, image_size: int = 224, resize_size: int | None = None, normalize: bool = True):
    """uint8/float (H, W, 3) -> float32 (S, S, 3): shorter side to `resize_size`, center crop S.

    Args:
        image: one image, pixel values in [0, 255].
        image_size: crop side S (224, or 256 for the "big" setting).
        resize_size: shorter-side length before cropping; default 256 for S=224, 288 for S=256,
            else round(S * 8 / 7).
        normalize: apply `normalize_imagenet`.
    """
    resize_size = resize_size or DEFAULT_RESIZE.get(image_size, round(image_size * 8 / 7))
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size}).")
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_size / tf.reduce_min(shape)
    new_hw = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), resize_size)
    image = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
    top = (new_hw[0] - image_size) // 2
    left = (new_hw[1] - image_size) // 2
    image = tf.slice(image, [top, left, 0], [image_size, image_size, 3])
    return normalize_imagenet(image) if normalize else image
