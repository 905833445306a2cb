"""tf.data pipelines: sampler index batches or a whole split -> batches of transformed images.

`make_train_dataset` turns a sampler's numpy index batches into `(images, labels)` batches with
a preset's train transform; `make_eval_dataset` reads a split in order with its test transform
(the official ROADMAP transforms, see `keras_roadmap.data.presets`: "sop", "sop_big", "cub",
"cub_big", "inaturalist", "inshop", "inshop_big"). Both load whole batches in a parallel `map`
(AUTOTUNE, order preserved; a batch's images are decoded and transformed in one `map_fn`, which
costs less per image than a tf.data element each) and prefetch.

Reproducibility: element `p` of the stream (counted from the first epoch) is augmented with
the stateless seed `(seed, p)`, and the sampler's epoch `e` depends only on its own seed and `e`,
so two pipelines built with the same seeds yield identical batches.

Unreadable images (missing file, truncated or non-image bytes) are caught per batch: a batch
is first loaded as a whole, and only a batch that fails is loaded again image by image, which
finds the bad files:
`on_corrupt="raise"` (default) stops with an InvalidArgumentError naming the file;
`on_corrupt="skip"` drops the image in eval (its label and id go with it) and drops the whole
batch in training (so every batch keeps its classes x samples_per_class structure), warning and
recording the path in a `CorruptImageLog`.
"""

from __future__ import annotations

import functools
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

    def record(self, paths) -> np.bool_:
        """Called from inside the pipeline with the unreadable images of a batch, in order;
        warns once per path."""
        for path in np.atleast_1d(paths):
            path = path.decode() if isinstance(path, bytes) else str(path)
            self.events += 1
            if path not in self.paths:
                self.paths.append(path)
                warnings.warn(f"keras_roadmap: skipping unreadable image {path}", RuntimeWarning, stacklevel=1)
        return np.bool_(False)

    def record_batch(self, paths, ok):
        """In-graph: record `paths[~ok]` (a sequential map calls it, so batches come in order)."""
        return tf.cond(
            tf.reduce_all(ok),
            lambda: tf.constant(True),
            lambda: tf.numpy_function(self.record, [tf.boolean_mask(paths, ~ok)], tf.bool),
        )


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

    def target(self, index):
        return tf.gather(self.labels, index), tf.gather(self.ids, index)

    def path(self, index):
        return tf.gather(self.paths, index)

    def load_batch(self, indices, kind: str, preset, normalize: bool, on_corrupt: str, first=0, seed=0):
        """Images `indices` (b,) through the preset's `kind` ("eval" / "train") transform ->
        float32 (b, S, S, 3) and a bool (b,) mask of the readable ones. Train augmentations
        are keyed by `(seed, first + place in the batch)`."""
        first, seed = tf.cast(first, tf.int64), tf.cast(seed, tf.int64)
        if self.images is not None:
            transform = _transform(kind, preset, normalize)
            size = preset.crop_size
            places = tf.range(tf.shape(indices, out_type=tf.int64)[0])
            images = tf.map_fn(
                lambda a: transform(to_rgb(tf.gather(self.images, a[0])), seed, first + a[1]),
                (indices, places),
                fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
            )
            return images, tf.ones_like(indices, tf.bool)
        return _file_batch_loader(kind, preset, normalize, on_corrupt)(tf.gather(self.paths, indices), first, seed)


def _transform(kind: str, preset, normalize: bool):
    if kind == "eval":
        return lambda image, seed, position: eval_transform(image, preset, normalize=normalize)
    return lambda image, seed, position: train_transform(image, tf.stack([seed, position]), preset, normalize=normalize)


@functools.lru_cache(maxsize=64)
def _file_batch_loader(kind: str, preset, normalize: bool, on_corrupt: str):
    """One traced function per (kind, preset, normalize, on_corrupt), shared by every pipeline
    of the process: building a dataset then costs no retracing of the decode and transform.

    `(paths (b,) string, first, seed)` -> `(images (b, S, S, 3), ok (b,))`.
    """
    transform = _transform(kind, preset, normalize)
    size = preset.crop_size
    spec = tf.TensorSpec([size, size, 3], tf.float32)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string),
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([], tf.int64),
        ]
    )
    def load(paths, first, seed):
        places = tf.range(tf.shape(paths, out_type=tf.int64)[0])

        def whole(batch_paths):
            def one(a):
                return transform(decode_image(tf.io.read_file(a[0])), seed, first + a[1])

            return tf.map_fn(one, (batch_paths, places), fn_output_signature=spec), True

        # A one-element dataset with ignore_errors is tf.data's try/except: an error anywhere in
        # the batch drops the element, and the concatenated placeholder (False) comes out.
        attempt = tf.data.Dataset.from_tensors(paths).map(whole).ignore_errors()
        fallback = tf.data.Dataset.from_tensors((tf.zeros([tf.shape(paths)[0], size, size, 3]), False))
        images, ok = attempt.concatenate(fallback).take(1).get_single_element()

        def one_by_one():
            def one(a):
                image, readable = _safe_decode(a[0])
                image = _guard(image, readable, a[0], on_corrupt)
                return transform(image, seed, first + a[1]), readable

            return tf.map_fn(one, (paths, places), fn_output_signature=(spec, tf.TensorSpec([], tf.bool)))

        return tf.cond(ok, lambda: (images, tf.ones_like(paths, tf.bool)), one_by_one)

    return load


_PLACEHOLDER = tf.zeros((1, 1, 3), tf.uint8)


def _safe_decode(path):
    # The per-image form of the try/except above, for a batch that failed.
    attempt = tf.data.Dataset.from_tensors(path).map(lambda p: (decode_image(tf.io.read_file(p)), True))
    attempt = attempt.ignore_errors()
    fallback = tf.data.Dataset.from_tensors((_PLACEHOLDER, False))
    return attempt.concatenate(fallback).take(1).get_single_element()


def _guard(image, ok, path, on_corrupt):
    if on_corrupt == "skip":  # recorded later, in order, by CorruptImageLog.record_batch
        return image  # an unreadable image is the 1x1 placeholder: any transform takes it
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


def _record_unreadable(ds, log):
    """on_corrupt="skip" on `(images, labels, ids, ok, paths)` batches: record the unreadable
    images in stream order (a sequential map); the caller drops them."""

    def note(images, labels, ids, ok, paths):
        with tf.control_dependencies([log.record_batch(paths, ok)]):
            return tf.identity(images), labels, ids, ok, paths

    return ds.map(note)


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
    ds = epoch_ds.flat_map(epoch_indices).batch(batch_size, drop_remainder=True)
    ds = ds.enumerate(start=first_epoch * per_epoch)

    def load(step, indices):
        first = step * batch_size  # stream position of the batch's first element
        images, ok = source.load_batch(indices, "train", preset, normalize, on_corrupt, first, seed)
        labels, ids = source.target(indices)
        return images, labels, ids, ok, source.path(indices)

    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    if on_corrupt == "skip":  # drop the whole batch: every batch keeps its classes x samples
        ds = _record_unreadable(ds, log).filter(lambda images, labels, ids, ok, paths: tf.reduce_all(ok))
    ds = ds.map(lambda images, labels, ids, ok, paths: _package(with_sample_ids)(images, labels, ids))
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

    def load(indices):
        images, ok = source.load_batch(indices, "eval", preset, normalize, on_corrupt)
        labels, ids = source.target(indices)
        return images, labels, ids, ok, source.path(indices)

    ds = tf.data.Dataset.range(source.size).batch(int(batch_size))
    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    if on_corrupt == "skip":  # drop the unreadable images only, and keep full batches
        ds = _record_unreadable(ds, log).unbatch()
        ds = ds.filter(lambda image, label, sample_id, ok, path: ok).batch(int(batch_size))
    ds = ds.map(lambda images, labels, ids, ok, paths: _package(with_sample_ids)(images, labels, ids))
    return ds.prefetch(AUTOTUNE)
