"""The official ROADMAP transforms (see `keras_roadmap.data.presets`) as TensorFlow functions.

One implementation serves the tf.data pipelines, the exporters (the same ops are baked into
the ONNX / SavedModel graph) and the recipes:

* `eval_transform(image, preset)`: the preset's test transform, uint8 (H, W, 3) -> float32
  (S, S, 3) normalised; `eval_transform_batch` the same on (N, H, W, 3) images of one size.
* `train_transform(image, seed, preset)`: its train transform with a stateless random crop box
  and flip keyed by `seed` (shape (2,) int), so (seed, element) always gives the same result
  whatever the map's parallelism; `train_transform_from_box` applies a given box and flip.

They reproduce torchvision on PIL images: resizes are PIL's antialiased bilinear filter
(`resize_like_pil`: PIL's triangle weights, horizontal pass then vertical, each rounded to
uint8 as PIL stores them), the shorter-side size is `int(size * long / short)`, the centre crop
starts at `int(round((h - S) / 2))`, and the crop box is drawn as
`RandomResizedCrop.get_params` draws it (10 tries, then the clamped central crop). PIL's
resampling is used instead of `tf.image.resize(antialias=True)` because the latter's op
(ScaleAndTranslate) cannot be exported to ONNX; these are plain gathers and sums.
"""

from __future__ import annotations

import math

import tensorflow as tf

from keras_roadmap.data.presets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRANSPARENT_BACKGROUND,
    PresetLike,
    TransformPreset,
    get_preset,
)

BACKENDS = ("auto", "tf_image")
_TIE_BREAK = 2.0**-10


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Decode JPEG/PNG/GIF/BMP/WebP bytes to uint8 (H, W, 3): grayscale becomes RGB, 16-bit is
    scaled to 8-bit, an animated GIF gives its first frame, and transparency (RGBA, grayscale +
    alpha, a palette with a transparent colour) is composited on `TRANSPARENT_BACKGROUND`
    (never just dropped: the colour under a transparent pixel is arbitrary).

    JPEGs are decoded with the accurate integer DCT, as PIL (the official pipeline, and the
    serving side) decodes them: bit-identical pixels. TensorFlow's default fast DCT differs by
    up to 3 levels on most pixels.
    """
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: _composite(tf.io.decode_image(data, channels=0, expand_animations=False)),
    )
    image.set_shape([None, None, 3])
    return image


def _composite(image: tf.Tensor) -> tf.Tensor:
    """uint8 (H, W, 1|2|3|4) -> (H, W, 3), alpha composited on TRANSPARENT_BACKGROUND (rounded
    as `keras_roadmap.data.custom.load_rgb` rounds)."""
    channels = tf.shape(image)[-1]
    color = tf.cond(channels < 3, lambda: tf.repeat(image[..., :1], 3, axis=-1), lambda: image[..., :3])
    has_alpha = tf.equal(channels, 2) | tf.equal(channels, 4)

    def blend():
        alpha = tf.cast(image[..., -1:], tf.float32) / 255.0
        background = tf.constant(TRANSPARENT_BACKGROUND, tf.float32)
        mixed = tf.floor(tf.cast(color, tf.float32) * alpha + background * (1.0 - alpha) + 0.5)
        return tf.cast(tf.clip_by_value(mixed, 0.0, 255.0), tf.uint8)

    return tf.cond(has_alpha, blend, lambda: color)


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """(..., H, W, 1) or (..., H, W, 3) -> (..., H, W, 3), same dtype (for in-memory arrays)."""
    if image.shape[-1] == 1:
        return tf.image.grayscale_to_rgb(image)
    return image


def normalize_imagenet(image: tf.Tensor) -> tf.Tensor:
    """float32 pixels in [0, 255] -> `(x / 255 - mean) / std` with the ImageNet mean and std
    (torchvision's ToTensor + Normalize)."""
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def resolve_backend(backend: str) -> str:
    """Kept for callers of the former crop backends: "auto" and "tf_image" are accepted.

    keras-cv's crop (`crop_and_resize`, no antialiasing) does not reproduce the official
    transform, so it is no longer offered.
    """
    if backend == "keras_cv":
        raise ValueError(
            "backend='keras_cv' was removed: its crop_and_resize has no antialiasing, so it does not "
            "reproduce the official (torchvision/PIL) transform. Use backend='auto'."
        )
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    return "tf_image"


# ---------------------------------------------------------------------------------------------
# PIL's antialiased bilinear resize


def _resize_taps(in_size, out_size):
    """PIL's `precompute_coeffs` for the bilinear (triangle) filter, as tensors.

    Returns `(index, weight)`, both (out_size, K): output pixel o is
    `sum_k weight[o, k] * input[index[o, k]]`.
    """
    in_f = tf.cast(in_size, tf.float32)
    scale = in_f / tf.cast(out_size, tf.float32)
    filter_scale = tf.maximum(scale, 1.0)  # widen the filter when downscaling: the antialiasing
    support = filter_scale  # the triangle filter's support is 1
    taps = 2 * tf.cast(tf.math.ceil(support), tf.int32) + 1
    center = (tf.cast(tf.range(out_size), tf.float32) + 0.5) * scale
    first = tf.maximum(tf.cast(tf.floor(center - support + 0.5), tf.int32), 0)
    last = tf.minimum(tf.cast(tf.floor(center + support + 0.5), tf.int32), tf.cast(in_size, tf.int32))
    index = first[:, None] + tf.range(taps)[None, :]
    weight = tf.maximum(0.0, 1.0 - tf.abs((tf.cast(index, tf.float32) - center[:, None] + 0.5) / filter_scale))
    weight = tf.where(index < last[:, None], weight, 0.0)
    weight = weight / tf.maximum(tf.reduce_sum(weight, axis=1, keepdims=True), 1e-12)
    index = tf.minimum(index, tf.cast(in_size, tf.int32) - 1)
    return index, weight


# Outputs per block of the horizontal pass: each block of _BLOCK consecutive output columns reads
# one contiguous window of input columns, so the pass costs about `out x window x rest`
# multiply-adds instead of the dense `out x in x rest` (7x fewer for 320 -> 73), and stays plain
# Gather + MatMul for the exporters.
_BLOCK = 8


def _round_like_pil(x):
    # PIL keeps 8-bit images in 8 bits after each pass: round half up and clip. Exact ties
    # (x.5) are common (symmetric weights on integer pixels), and another runtime (onnxruntime)
    # or another summation order lands a hair below or above them; moving the rounding boundary
    # by _TIE_BREAK, far above float32 error and far below PIL's own fixed-point error, makes
    # every runtime round a tie the same way (up, as PIL).
    return tf.clip_by_value(tf.floor(x + (0.5 + _TIE_BREAK)), 0.0, 255.0)


def _window_taps(in_size, out_size, start, count):
    """`_resize_taps` of outputs `[start, start + count)` only."""
    index, weight = _resize_taps(in_size, out_size)
    return index[start : start + count], weight[start : start + count]


def _banded_weights(in_size, out_size, start, count):
    """The taps of outputs `[start, start + count)` as `_BLOCK`-row blocks over input windows.

    Returns `(rows, weights)`: int32 (G, L) input indices of each block's window and float32
    (G, _BLOCK, L) weights, G = ceil(count / _BLOCK); rows past `count` have zero weights.
    """
    index, weight = _window_taps(in_size, out_size, start, count)
    blocks = (count + _BLOCK - 1) // _BLOCK
    # Pad to whole blocks with copies of the last output's taps, weighted 0 (a gather, not
    # tf.repeat: tf2onnx converts a repeat of 0 copies wrongly).
    padded = tf.range(blocks * _BLOCK)
    index = tf.gather(index, tf.minimum(padded, count - 1))
    weight = tf.gather(weight, tf.minimum(padded, count - 1)) * tf.cast(padded < count, weight.dtype)[:, None]
    index = tf.reshape(index, [blocks, _BLOCK, -1])
    weight = tf.reshape(weight, [blocks, _BLOCK, -1])
    low = tf.reduce_min(index, axis=[1, 2])
    length = tf.reduce_max(tf.reduce_max(index, axis=[1, 2]) - low) + 1
    low = tf.minimum(low, tf.cast(in_size, tf.int32) - length)
    # one_hot of a tap's place in its window, weighted and summed over the taps: a clamped
    # duplicate index (zero weight) adds nothing.
    place = tf.one_hot(index - low[:, None, None], length, dtype=weight.dtype)  # (G, B, K, L)
    weights = tf.reduce_sum(place * weight[..., None], axis=2)
    return low[:, None] + tf.range(length)[None, :], weights


def _dense_weights(in_size, out_size, start, count):
    """The taps of outputs `[start, start + count)` as a dense (count, in_size) matrix."""
    index, weight = _window_taps(in_size, out_size, start, count)
    # Scatter at the unclamped tap positions (first + k: distinct within a row) into K spare
    # columns, then drop them: with the clamped indices a row's last taps repeat the last
    # column, and ONNX's ScatterND keeps one of the repeated writes (a zero weight) where
    # TensorFlow sums them.
    taps = tf.shape(index)[1]
    unclamped = index[:, :1] + tf.range(taps)[None, :]
    rows = tf.broadcast_to(tf.range(tf.shape(index)[0])[:, None], tf.shape(index))
    at = tf.reshape(tf.stack([rows, unclamped], axis=-1), [-1, 2])
    width = tf.cast(in_size, tf.int32)
    dense = tf.scatter_nd(at, tf.reshape(weight, [-1]), tf.stack([tf.shape(index)[0], width + taps]))
    return dense[:, :width]


def resize_like_pil(images: tf.Tensor, height, width, *, window=None) -> tf.Tensor:
    """PIL's `Image.resize((width, height), BILINEAR)` on (H, W, C) or (N, H, W, C) 8-bit images.

    Antialiased (the filter widens by the downscale factor), horizontal pass first, each pass
    rounded to integers in [0, 255] as PIL stores them; a side that keeps its size is left
    unchanged. Returns float32 holding integer values. `height`/`width` may be tensors.

    `window=(top, left, crop_height, crop_width)` returns only that crop of the resized image
    (the same pixels as resizing, then slicing), computing only the pixels it keeps.
    """
    x = tf.cast(images, tf.float32)
    rank = len(x.shape)
    if rank not in (3, 4):
        raise ValueError(f"resize_like_pil expects (H, W, C) or (N, H, W, C) images; got shape {x.shape}.")
    if rank == 3:
        x = x[None]
    top, left, crop_h, crop_w = (0, 0, height, width) if window is None else window
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    shape = tf.shape(x)
    n, in_h, in_w, channels = shape[0], shape[1], shape[2], shape[3]
    # Both passes run on planar "columns": (W, C * N * H), each row one input column of every
    # channel and image, so the horizontal pass is a gather of row windows + matmul and the
    # vertical one a matmul on the last axis; the only transposes are a 2-D one of the input
    # (fast, unlike TensorFlow's transpose of an (H, W, 3) array) and one of the small output.
    columns = tf.reshape(tf.transpose(tf.reshape(x, [n * in_h, in_w * channels])), [in_w, -1])

    # A side that keeps its size needs no branch: its taps are then exactly (0, 1, 0), so the
    # pass returns the integer pixels unchanged (and a tf.cond costs more in a tf.data map).
    rows, weights = _banded_weights(in_w, width, left, crop_w)
    x = tf.reshape(tf.matmul(weights, tf.gather(columns, rows)), [-1, tf.shape(columns)[1]])
    x = tf.reshape(_round_like_pil(x[:crop_w]), [-1, in_h])  # (crop_w * C * N, H)
    x = _round_like_pil(tf.matmul(x, _dense_weights(in_h, height, top, crop_h), transpose_b=True))
    x = tf.transpose(tf.reshape(x, [crop_w, channels, n, crop_h]), [2, 3, 0, 1])
    return x[0] if rank == 3 else x


def shorter_side_size(height, width, size: int):
    """torchvision's `Resize(size)` output (new_h, new_w): the shorter side becomes `size`, the
    longer `int(size * long / short)` (integer arithmetic: exact)."""
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    short = tf.minimum(height, width)
    scaled_h = size * height // short
    scaled_w = size * width // short
    new_h = tf.where(height <= width, tf.constant(size, tf.int32), scaled_h)
    new_w = tf.where(height <= width, scaled_w, tf.constant(size, tf.int32))
    return new_h, new_w


def _center_offset(length, crop: int):
    # torchvision: int(round((length - crop) / 2.0)); Python rounds half to even, as tf.round.
    return tf.cast(tf.round(tf.cast(length - crop, tf.float32) / 2.0), tf.int32)


def _check_image(image, batched: bool):
    rank = 4 if batched else 3
    if image.shape.rank is not None and image.shape.rank != rank:
        expected = "(N, H, W, 3)" if batched else "(H, W, 3)"
        raise ValueError(f"Expected an image tensor {expected}; got shape {image.shape}.")
    if image.shape[-1] not in (None, 1, 3):
        raise ValueError(f"Expected RGB (3) or grayscale (1) channels; got shape {image.shape}.")
    return to_rgb(image)


def _eval_core(images: tf.Tensor, preset: TransformPreset, normalize: bool) -> tf.Tensor:
    """The test transform on (N, H, W, 3) images of one size."""
    s = preset.crop_size
    shape = tf.shape(images)
    if preset.eval_square:
        new_h = new_w = tf.constant(preset.eval_resize, tf.int32)
    else:
        new_h, new_w = shorter_side_size(shape[1], shape[2], preset.eval_resize)
    top, left = _center_offset(new_h, s), _center_offset(new_w, s)
    x = resize_like_pil(images, new_h, new_w, window=(top, left, s, s))
    x = tf.ensure_shape(x, [None, s, s, 3])
    return normalize_imagenet(x) if normalize else x


def eval_transform(
    image: tf.Tensor, preset: PresetLike = "sop", *, image_size=None, normalize: bool = True
) -> tf.Tensor:
    """A preset's test transform: uint8 (H, W, 3) (values 0..255, any size) -> float32 (S, S, 3).

    "sop": `Resize([256, 256])` (square) + `CenterCrop(224)`; "cub": `Resize(256)` (shorter side)
    + `CenterCrop(224)`; see `keras_roadmap.data.presets` for all. Then ToTensor + Normalize
    (ImageNet mean/std), unless `normalize=False` (float pixels in [0, 255]).

    Args:
        image: one RGB (or grayscale (H, W, 1)) image.
        preset: a preset name, a `TransformPreset` or its dict. Default "sop".
        image_size: None = the preset's crop; another S scales the preset (`TransformPreset.resized`).
        normalize: apply the ImageNet normalisation. Default True.
    """
    preset = get_preset(preset, image_size)
    image = _check_image(tf.convert_to_tensor(image), batched=False)
    return _eval_core(image[None], preset, normalize)[0]


def eval_transform_batch(
    images: tf.Tensor, preset: PresetLike = "sop", *, image_size=None, normalize: bool = True
) -> tf.Tensor:
    """`eval_transform` on a batch of same-size images (N, H, W, 3) -> (N, S, S, 3); this is
    what the exporters bake into the artifact's graph."""
    preset = get_preset(preset, image_size)
    images = _check_image(tf.convert_to_tensor(images), batched=True)
    return _eval_core(images, preset, normalize)


# ---------------------------------------------------------------------------------------------
# Train transform


def sample_crop_box(height, width, seed: tf.Tensor, scale=(0.16, 1.0), ratio=(0.75, 1.33)):
    """torchvision's `RandomResizedCrop.get_params`, with stateless TensorFlow sampling.

    Ten candidates (area fraction uniform in `scale`, log aspect ratio uniform in `log(ratio)`,
    sides `round(sqrt(area * ratio))`, `round(sqrt(area / ratio))`); the first that fits is
    placed uniformly; if none fits, the central crop with the ratio clamped to `ratio`.

    Args:
        height, width: image size (ints or scalar tensors).
        seed: int tensor of shape (2,).

    Returns:
        int32 tensor `[top, left, crop_height, crop_width]`.
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    area = tf.cast(height * width, tf.float32)
    target = area * tf.random.stateless_uniform([10], seeds[0], scale[0], scale[1])
    log_ratio = tf.random.stateless_uniform([10], seeds[1], math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    cw = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    ch = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    u = tf.random.stateless_uniform([2], seeds[2])

    def random_box():
        h, w = ch[first], cw[first]
        top = tf.minimum(tf.cast(u[0] * tf.cast(height - h + 1, tf.float32), tf.int32), height - h)
        left = tf.minimum(tf.cast(u[1] * tf.cast(width - w + 1, tf.float32), tf.int32), width - w)
        return tf.stack([top, left, h, w])

    def central_box():
        in_ratio = tf.cast(width, tf.float32) / tf.cast(height, tf.float32)
        w_narrow = width
        h_narrow = tf.cast(tf.round(tf.cast(width, tf.float32) / ratio[0]), tf.int32)
        h_wide = height
        w_wide = tf.cast(tf.round(tf.cast(height, tf.float32) * ratio[1]), tf.int32)
        h = tf.where(in_ratio < ratio[0], h_narrow, tf.where(in_ratio > ratio[1], h_wide, height))
        w = tf.where(in_ratio < ratio[0], w_narrow, tf.where(in_ratio > ratio[1], w_wide, width))
        return tf.stack([(height - h) // 2, (width - w) // 2, h, w])

    return tf.cond(tf.reduce_any(fits), random_box, central_box)


def _train_size(image, preset: TransformPreset):
    """(h, w) of the image the crop box is drawn on: after `Resize(train_resize)` (shorter
    side), or the image's own size for presets without one."""
    shape = tf.shape(image)
    if preset.train_resize is None:
        return shape[0], shape[1]
    return shorter_side_size(shape[0], shape[1], preset.train_resize)


def _crop_flip(image, size, box, flip, preset: TransformPreset, normalize: bool):
    """`box` of the image resized to `size` (only the box is resized), then to S x S, flipped."""
    box = tf.cast(box, tf.int32)
    if preset.train_resize is None:
        crop = tf.slice(tf.cast(image, tf.float32), tf.stack([box[0], box[1], 0]), tf.stack([box[2], box[3], 3]))
    else:
        crop = resize_like_pil(image, size[0], size[1], window=(box[0], box[1], box[2], box[3]))
    s = preset.crop_size
    out = resize_like_pil(crop, s, s)
    out = tf.cond(tf.cast(flip, tf.bool), lambda: tf.reverse(out, axis=[1]), lambda: out)
    out = tf.ensure_shape(out, [s, s, 3])
    return normalize_imagenet(out) if normalize else out


def train_transform(
    image: tf.Tensor, seed: tf.Tensor, preset: PresetLike = "sop", *, image_size=None, normalize: bool = True
) -> tf.Tensor:
    """A preset's train transform: uint8 (H, W, 3) -> float32 (S, S, 3).

    [`Resize(train_resize)`] -> RandomResizedCrop(S, scale, ratio) -> RandomHorizontalFlip(0.5)
    -> ToTensor + Normalize, the box drawn by `sample_crop_box` and the flip by a stateless
    coin, both from `seed`.

    Args:
        image: one RGB (or grayscale) image, values 0..255.
        seed: int32/int64 tensor of shape (2,); distinct per element for distinct augmentations.
        preset, image_size, normalize: as in `eval_transform`.
    """
    preset = get_preset(preset, image_size)
    image = _check_image(tf.convert_to_tensor(image), batched=False)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    size = _train_size(image, preset)
    box = sample_crop_box(size[0], size[1], seeds[0], preset.scale, preset.ratio)
    flip = tf.random.stateless_uniform([], seeds[1]) < preset.flip
    return _crop_flip(image, size, box, flip, preset, normalize)


def train_transform_from_box(image, box, flip, preset: PresetLike = "sop", *, image_size=None, normalize: bool = True):
    """The train transform with a given crop box and flip (for parity tests and replays).

    Args:
        image: uint8 (H, W, 3).
        box: `(top, left, height, width)`, in the coordinates of the image after the preset's
            `Resize(train_resize)` (the original image for presets without one): what
            torchvision's `RandomResizedCrop.get_params` returns on that image.
        flip: whether to flip horizontally.
        preset, image_size, normalize: as in `eval_transform`.
    """
    preset = get_preset(preset, image_size)
    image = _check_image(tf.convert_to_tensor(image), batched=False)
    size = _train_size(image, preset)
    box = tf.cast(tf.convert_to_tensor(box), tf.int32)
    check = tf.debugging.assert_less_equal(
        tf.stack([box[0] + box[2], box[1] + box[3]]),
        tf.stack([size[0], size[1]]),
        message="train_transform_from_box: the box does not fit in the (resized) image",
    )
    with tf.control_dependencies([check]):
        return _crop_flip(image, size, box, flip, preset, normalize)


def train_resize_shape(height: int, width: int, preset: PresetLike = "sop") -> tuple:
    """(h, w) of the image the crop box is drawn on (after the preset's train resize), in Python."""
    preset = get_preset(preset)
    if preset.train_resize is None:
        return int(height), int(width)
    short, long = min(height, width), max(height, width)
    new_long = preset.train_resize * long // short
    return (preset.train_resize, new_long) if height <= width else (new_long, preset.train_resize)
