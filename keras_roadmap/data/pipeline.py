"""tf.data pipelines: sampler index batches or a whole split -> batches of transformed images.

`make_train_dataset` turns a sampler's numpy index batches into `(images, labels)` batches with
a preset's train transform; `make_eval_dataset` reads a split in order with its test transform
(the official ROADMAP transforms, see `keras_roadmap.data.presets`: "sop", "sop_big", "cub",
"cub_big", "inaturalist", "inshop", "inshop_big"). Both decode in a parallel `map` (AUTOTUNE,
order preserved) and prefetch.

Reproducibility: element `p` of the stream (counted from the first epoch) is augmented with
the stateless seed `(seed, p)`, and the sampler's epoch `e` depends only on its own seed and `e`,
so two pipelines built with the same seeds yield identical batches.

Unreadable images (missing file, truncated or non-image bytes) are caught per element:
`on_corrupt="raise"` (default) stops with an InvalidArgumentError naming the file;
`on_corrupt="skip"` drops the image in eval (its label and id go with it) and drops the whole
batch in training (so every batch keeps its classes x samples_per_class structure), warning and
recording the path in a `CorruptImageLog`.
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from keras_roadmap.data.presets import get_preset
from keras_roadmap.data.split import RetrievalSplit
from keras_roadmap.data.transforms import decode_image, eval_transform, resolve_backend, to_rgb, train_transform

AUTOTUNE = tf.data.AUTOTUNE
_ON_CORRUPT = ("raise", "skip")


class CorruptImageLog:
    """Collects the images a pipeline skipped with `on_corrupt="skip"`.

    Attributes:
        paths: distinct skipped paths, in the order first met.
        events: number of skip events (an image met in several epochs counts each time).
    """

    def __init__(self):
        self.paths: list = []
        self.events = 0

    def record(self, path) -> np.bool_:
        """Called from inside the pipeline for each unreadable image; warns once per path."""
        path = path.decode() if isinstance(path, bytes) else str(path)
        self.events += 1
        if path not in self.paths:
            self.paths.append(path)
            warnings.warn(f"keras_roadmap: skipping unreadable image {path}", RuntimeWarning, stacklevel=1)
        return np.bool_(False)


class _Source:
    """Random access to (image uint8 (H, W, 3), readable, path, label, sample id) by row index."""

    def __init__(self, data):
        if isinstance(data, RetrievalSplit):
            self.size = len(data)
            self.labels = tf.constant(data.labels.astype(np.int32))
            self.ids = tf.constant(data.sample_ids)
            self.paths = tf.constant(data.paths, tf.string)
            self.images = None
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            images, labels = np.asarray(data[0]), np.asarray(data[1])
            if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) != len(labels) or labels.ndim != 1:
                raise ValueError(
                    "In-memory data must be (images (N, H, W, 1|3) with pixels in [0, 255], labels (N,) ints); "
                    f"got images {images.shape} and labels {labels.shape}."
                )
            if not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"labels must be integers; got dtype {labels.dtype}.")
            self.size = len(images)
            self.labels = tf.constant(labels.astype(np.int32))
            self.ids = tf.constant(np.arange(len(images), dtype=np.int64))
            self.paths = tf.constant([f"<array row {i}>" for i in range(len(images))])
            self.images = tf.constant(images)
        else:
            raise TypeError(
                "data must be a RetrievalSplit (from keras_roadmap.data.load_*) or a tuple "
                f"(images, labels) of numpy arrays; got {type(data).__name__}."
            )

    def load(self, index):
        path = tf.gather(self.paths, index)
        if self.images is not None:
            return to_rgb(tf.gather(self.images, index)), tf.constant(True), path
        image, ok = _safe_decode(path)
        return image, ok, path

    def target(self, index):
        return tf.gather(self.labels, index), tf.gather(self.ids, index)


_PLACEHOLDER = tf.zeros((1, 1, 3), tf.uint8)


def _safe_decode(path):
    # A one-element dataset with ignore_errors is tf.data's per-element try/except: an error in
    # read or decode drops the element, and the concatenated placeholder (ok=False) comes out.
    attempt = tf.data.Dataset.from_tensors(path).map(lambda p: (decode_image(tf.io.read_file(p)), True))
    attempt = attempt.ignore_errors()
    fallback = tf.data.Dataset.from_tensors((_PLACEHOLDER, False))
    return attempt.concatenate(fallback).take(1).get_single_element()


def _guard(image, ok, path, on_corrupt, log):
    if on_corrupt == "raise":
        check = tf.debugging.Assert(
            ok,
            [
                "keras_roadmap: cannot read or decode image (missing file, truncated or not an image). "
                "Remove it from the split or build the pipeline with on_corrupt='skip'. Path:",
                path,
            ],
        )
        with tf.control_dependencies([check]):
            return tf.identity(image)
    noted = tf.cond(ok, lambda: tf.constant(True), lambda: tf.numpy_function(log.record, [path], tf.bool))
    with tf.control_dependencies([noted]):
        return tf.identity(image)


def _check_options(on_corrupt, corrupt_log):
    if on_corrupt not in _ON_CORRUPT:
        raise ValueError(f"on_corrupt must be one of {_ON_CORRUPT}; got {on_corrupt!r}.")
    return corrupt_log if corrupt_log is not None else CorruptImageLog()


def _package(with_sample_ids):
    def pack(images, labels, ids):
        if with_sample_ids:
            return images, {"label": labels, "sample_id": ids}
        return images, labels

    return pack


def make_train_dataset(
    data,
    sampler,
    *,
    preset="sop",
    image_size: int | None = None,
    seed: int = 0,
    backend: str = "auto",
    epochs: int | None = None,
    first_epoch: int = 0,
    on_corrupt: str = "raise",
    corrupt_log: CorruptImageLog | None = None,
    with_sample_ids: bool = False,
    normalize: bool = True,
    num_parallel_calls=AUTOTUNE,
) -> tf.data.Dataset:
    """Training batches from a sampler, with the preset's train transform (e.g. "sop":
    Resize(256) -> RandomResizedCrop(224) -> flip -> ImageNet normalisation).

    Args:
        data: a `RetrievalSplit` (images read from disk) or `(images, labels)` numpy arrays
            (images (N, H, W, 1|3) in [0, 255]; held in memory, for tests and small sets).
        sampler: `MPerClassSampler`, `HierarchicalSampler` or any object with `batch_size`,
            `__len__` and `batches(epoch) -> int array (len, batch_size)` of row indices of `data`.
        preset: transform preset name (see `keras_roadmap.data.presets`), a `TransformPreset` or
            its dict. Default "sop".
        image_size: None = the preset's crop side; another S scales the preset's sizes (small
            test models).
        seed: augmentation seed (the sampler has its own).
        backend: "auto" or "tf_image" (the same thing; kept for older callers).
        epochs: number of sampler epochs; None repeats forever (then pass
            `steps_per_epoch=len(sampler)` to `model.fit`).
        first_epoch: epoch to start from (to resume a run with identical batches).
        on_corrupt: "raise" or "skip" (see module docstring).
        corrupt_log: where skipped paths are recorded (a fresh one if None).
        with_sample_ids: False -> `(images, labels)`; True -> `(images, {"label": labels,
            "sample_id": ids})` for trainers that need ids (cross-batch memory).
        normalize: ImageNet mean/std normalisation (else float pixels in [0, 255]).
        num_parallel_calls: parallelism of the decode/augment map.

    Returns:
        A `tf.data.Dataset` of float32 images (batch_size, S, S, 3), int32 labels (batch_size,)
        and (optionally) int64 sample ids (batch_size,), prefetched. With on_corrupt="raise" its
        cardinality is `epochs * len(sampler)` (infinite when epochs is None).
    """
    log = _check_options(on_corrupt, corrupt_log)
    source = _Source(data)
    labels = getattr(sampler, "labels", None)
    if labels is not None and len(labels) != source.size:
        raise ValueError(
            f"The sampler was built on {len(labels)} labels but data holds {source.size} images; build it "
            f"from this split's labels, e.g. MPerClassSampler(split.labels, ...)."
        )
    batch_size, per_epoch = int(sampler.batch_size), len(sampler)
    resolve_backend(backend)
    preset = get_preset(preset, image_size)

    def epoch_indices(epoch):
        flat = tf.numpy_function(
            lambda e: np.asarray(sampler.batches(int(e)), dtype=np.int64).reshape(-1), [epoch], tf.int64
        )
        flat.set_shape([per_epoch * batch_size])
        return tf.data.Dataset.from_tensor_slices(flat)

    if epochs is None:
        epoch_ds = tf.data.Dataset.counter(first_epoch)
    else:
        epoch_ds = tf.data.Dataset.range(first_epoch, first_epoch + int(epochs))
    ds = epoch_ds.flat_map(epoch_indices).enumerate(start=first_epoch * per_epoch * batch_size)

    def load(position, index):
        image, ok, path = source.load(index)
        image = _guard(image, ok, path, on_corrupt, log)
        image = train_transform(image, tf.stack([tf.constant(seed, tf.int64), position]), preset, normalize=normalize)
        label, sample_id = source.target(index)
        return image, label, sample_id, ok

    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    if on_corrupt == "skip":
        ds = ds.filter(lambda images, labels, ids, ok: tf.reduce_all(ok))
    ds = ds.map(lambda images, labels, ids, ok: _package(with_sample_ids)(images, labels, ids))
    if on_corrupt == "raise":
        total = tf.data.INFINITE_CARDINALITY if epochs is None else int(epochs) * per_epoch
        ds = ds.apply(tf.data.experimental.assert_cardinality(total))
    return ds.prefetch(AUTOTUNE)


def make_eval_dataset(
    data,
    batch_size: int = 64,
    *,
    preset="sop",
    image_size: int | None = None,
    on_corrupt: str = "raise",
    corrupt_log: CorruptImageLog | None = None,
    with_sample_ids: bool = False,
    normalize: bool = True,
    num_parallel_calls=AUTOTUNE,
) -> tf.data.Dataset:
    """A whole split, in order, with the preset's test transform (e.g. "sop": Resize([256, 256])
    -> CenterCrop(224) -> ImageNet normalisation; "cub": Resize(256) shorter side -> CenterCrop(224)).

    Args:
        data: a `RetrievalSplit` or `(images, labels)` numpy arrays (see `make_train_dataset`).
        batch_size: images per batch; the last batch may be smaller.
        preset: transform preset (as in `make_train_dataset`). Default "sop".
        image_size: None = the preset's crop side; another S scales the preset.
        on_corrupt: "raise" or "skip" (a skipped image's label and id are dropped with it).
        corrupt_log: where skipped paths are recorded.
        with_sample_ids: as in `make_train_dataset`.
        normalize: ImageNet mean/std normalisation.
        num_parallel_calls: parallelism of the decode/resize map.

    Returns:
        A `tf.data.Dataset` of float32 images (b, S, S, 3), int32 labels (b,) [and int64 ids].
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    log = _check_options(on_corrupt, corrupt_log)
    preset = get_preset(preset, image_size)
    source = _Source(data)

    def load(index):
        image, ok, path = source.load(index)
        image = _guard(image, ok, path, on_corrupt, log)
        image = eval_transform(image, preset, normalize=normalize)
        label, sample_id = source.target(index)
        return image, label, sample_id, ok

    ds = tf.data.Dataset.range(source.size).map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    if on_corrupt == "skip":
        ds = ds.filter(lambda image, label, sample_id, ok: ok)
    ds = ds.batch(int(batch_size)).map(lambda images, labels, ids, ok: _package(with_sample_ids)(images, labels, ids))
    return ds.prefetch(AUTOTUNE)
