"""Class-balanced batch samplers that produce numpy index batches (fast, seedable, reproducible).

A sampler knows nothing about images: `sampler.batches(epoch)` returns an int64 array of shape
`(len(sampler), batch_size)` of row indices into the labels it was given. Every batch is
`classes_per_batch` distinct classes x `samples_per_class` images, laid out as contiguous
class blocks (rows `[c * m, (c + 1) * m)` share one label). The randomness of epoch `e` depends
only on `(seed, e)`, so a run can be replayed exactly. `keras_roadmap.data.make_train_dataset`
turns the index batches into a tf.data pipeline of images.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from keras_roadmap import validation


def _as_labels(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D array of integer class ids; got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integers (class ids); got dtype {array.dtype}.")
    return array.astype(np.int64)


def _check_batch_shape(batch_size: int, samples_per_class: int) -> int:
    for name, value in (("batch_size", batch_size), ("samples_per_class", samples_per_class)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    if batch_size % samples_per_class:
        raise ValueError(
            f"batch_size ({batch_size}) must be a multiple of samples_per_class ({samples_per_class}) so "
            f"that every batch is classes x samples_per_class; e.g. batch_size="
            f"{max(1, batch_size // samples_per_class) * samples_per_class}."
        )
    return batch_size // samples_per_class


class _ClassPools:
    """Per-class image queues: each class hands out its images without replacement, reshuffling
    when exhausted, so repeated draws cover the whole class; a class smaller than the draw size
    is sampled with replacement (it cannot fill m distinct slots)."""

    def __init__(self, labels: np.ndarray, rng: np.random.Generator):
        order = np.argsort(labels, kind="stable")
        classes, starts = np.unique(labels[order], return_index=True)
        self._members = dict(zip(classes.tolist(), np.split(order, starts[1:]), strict=False))
        self._queues = {}
        self._rng = rng

    def draw(self, label: int, count: int) -> np.ndarray:
        members = self._members[label]
        if len(members) < count:
            return self._rng.choice(members, size=count, replace=True)
        queue = self._queues.get(label)
        if queue is None or len(queue) < count:
            queue = self._rng.permutation(members)
        self._queues[label] = queue[count:]
        return queue[:count]


def _class_stream(classes: np.ndarray, per_batch: int, rng: np.random.Generator):
    """Endless groups of `per_batch` distinct classes: successive shuffles of `classes` cut into
    chunks (the tail of a shuffle shorter than a chunk is dropped, a different one each time)."""
    while True:
        perm = rng.permutation(classes)
        for start in range(0, len(perm) - per_batch + 1, per_batch):
            yield perm[start : start + per_batch]


class MPerClassSampler:
    """Batches of `batch_size // samples_per_class` distinct classes x `samples_per_class` images.

    Classes are visited in shuffled rounds (each class appears once per round, so classes are
    drawn uniformly), and images within a class without replacement until the class is exhausted;
    a class with fewer than `samples_per_class` images is sampled with replacement.
    One epoch is `len(labels) // batch_size` batches, i.e. it covers the dataset once on average.

    Args:
        labels: (N,) integer class ids (any values; need not be contiguous).
        batch_size: images per batch, a multiple of `samples_per_class`.
        samples_per_class: images per class in a batch (m; 4 in the paper for SOP).
        seed: int; epoch `e` uses `np.random.default_rng([seed, e])`.

    Raises:
        ValueError: batch_size not a multiple of samples_per_class, fewer classes than
            classes per batch, or fewer images than one batch.
    """

    def __init__(self, labels, batch_size: int, samples_per_class: int = 4, seed: int = 0):
        validation.sampler_args("MPerClassSampler", batch_size, samples_per_class, seed)
        self.labels = _as_labels(labels, "labels")
        self.batch_size = int(batch_size)
        self.samples_per_class = int(samples_per_class)
        self.classes_per_batch = _check_batch_shape(batch_size, samples_per_class)
        self.seed = int(seed)
        self.classes = np.unique(self.labels)
        if len(self.classes) < self.classes_per_batch:
            raise ValueError(
                f"A batch needs {self.classes_per_batch} distinct classes (batch_size {batch_size} / "
                f"samples_per_class {samples_per_class}) but the labels hold only {len(self.classes)}; "
                f"lower batch_size or raise samples_per_class."
            )
        if len(self.labels) < self.batch_size:
            raise ValueError(f"{len(self.labels)} images cannot fill one batch of {batch_size}; lower batch_size.")

    def __len__(self) -> int:
        """Batches per epoch: `len(labels) // batch_size`."""
        return len(self.labels) // self.batch_size

    def batches(self, epoch: int = 0) -> np.ndarray:
        """Index batches of epoch `epoch`: int64 array (len(self), batch_size), class-block layout."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        pools = _ClassPools(self.labels, rng)
        stream = _class_stream(self.classes, self.classes_per_batch, rng)
        out = np.empty((len(self), self.batch_size), dtype=np.int64)
        for b in range(len(self)):
            out[b] = np.concatenate([pools.draw(int(c), self.samples_per_class) for c in next(stream)])
        return out

    def __iter__(self):
        """Iterate over the batches of epoch 0 (use `batches(epoch)` for later epochs)."""
        return iter(self.batches(0))


class HierarchicalSampler:
    """Batches whose classes come from two super-categories, half from each (the SOP sampler of
    the ROADMAP paper): every unordered pair of super-categories gets `batches_per_super_pair`
    batches per epoch.

    Each batch holds `batch_size // samples_per_class` distinct classes x `samples_per_class`
    images; the first half of the class blocks belong to one super-category of the pair, the
    second half to the other. A super-category with fewer than `classes_per_batch // 2` classes
    cannot fill its half and is left out with a warning.

    Args:
        labels: (N,) integer class ids.
        super_labels: (N,) integer super-category ids; each class must map to exactly one.
        batch_size: images per batch; `batch_size // samples_per_class` must be even.
        samples_per_class: images per class in a batch (m).
        batches_per_super_pair: consecutive batches drawn from one pair (10 in the paper).
        seed: int; epoch `e` uses `np.random.default_rng([seed, e])`.
        consecutive: True (default) keeps each pair's batches consecutive, the pair order being
            shuffled per epoch; False shuffles all batches of the epoch (what the official
            PyTorch sampler does after building them).

    Raises:
        ValueError: shape rules above, a class spread over several super-categories, or fewer
            than two super-categories able to fill half a batch.
    """

    def __init__(
        self,
        labels,
        super_labels,
        batch_size: int,
        samples_per_class: int = 4,
        batches_per_super_pair: int = 10,
        seed: int = 0,
        consecutive: bool = True,
    ):
        validation.sampler_args("HierarchicalSampler", batch_size, samples_per_class, seed)
        self.labels = _as_labels(labels, "labels")
        self.super_labels = _as_labels(super_labels, "super_labels")
        if self.super_labels.shape != self.labels.shape:
            raise ValueError(
                f"`super_labels` must have one entry per label: got {self.super_labels.shape} vs {self.labels.shape}."
            )
        self.batch_size = int(batch_size)
        self.samples_per_class = int(samples_per_class)
        self.classes_per_batch = _check_batch_shape(batch_size, samples_per_class)
        if self.classes_per_batch % 2:
            raise ValueError(
                f"batch_size / samples_per_class = {self.classes_per_batch} classes must be even: half of them "
                f"come from each super-category of the pair."
            )
        self.batches_per_super_pair = validation.integer(
            "batches_per_super_pair", batches_per_super_pair, owner="HierarchicalSampler", minimum=1
        )
        self.seed = int(seed)
        self.consecutive = bool(consecutive)

        pairs = np.unique(np.stack([self.labels, self.super_labels], axis=1), axis=0)
        classes, counts = np.unique(pairs[:, 0], return_counts=True)
        if (counts > 1).any():
            bad = classes[counts > 1][0]
            raise ValueError(
                f"Class {bad} appears under super-categories {sorted(pairs[pairs[:, 0] == bad, 1].tolist())}; "
                f"each class must belong to exactly one super-category."
            )
        half = self.classes_per_batch // 2
        by_super = {int(s): pairs[pairs[:, 1] == s, 0] for s in np.unique(pairs[:, 1])}
        too_small = sorted(s for s, c in by_super.items() if len(c) < half)
        self.super_classes = {s: c for s, c in by_super.items() if len(c) >= half}
        if too_small:
            warnings.warn(
                f"HierarchicalSampler: super-categories {too_small} have fewer than {half} classes (half a "
                f"batch) and are never sampled.",
                stacklevel=2,
            )
        if len(self.super_classes) < 2:
            raise ValueError(
                f"HierarchicalSampler needs at least two super-categories with >= {half} classes each "
                f"(half of {self.classes_per_batch} classes per batch); found {len(self.super_classes)}. "
                f"Lower batch_size or use MPerClassSampler."
            )
        self.super_pairs = list(itertools.combinations(sorted(self.super_classes), 2))

    def __len__(self) -> int:
        """Batches per epoch: `n_pairs * batches_per_super_pair` (66 pairs x 10 on SOP)."""
        return len(self.super_pairs) * self.batches_per_super_pair

    def batches(self, epoch: int = 0) -> np.ndarray:
        """Index batches of epoch `epoch`: int64 array (len(self), batch_size), class-block layout."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        pools = _ClassPools(self.labels, rng)
        half = self.classes_per_batch // 2
        streams = {s: _class_stream(c, half, rng) for s, c in self.super_classes.items()}
        out = np.empty((len(self), self.batch_size), dtype=np.int64)
        row = 0
        for p in rng.permutation(len(self.super_pairs)):
            first, second = self.super_pairs[p]
            for _ in range(self.batches_per_super_pair):
                chosen = np.concatenate([next(streams[first]), next(streams[second])])
                out[row] = np.concatenate([pools.draw(int(c), self.samples_per_class) for c in chosen])
                row += 1
        return out if self.consecutive else out[rng.permutation(len(out))]

    def __iter__(self):
        """Iterate over the batches of epoch 0 (use `batches(epoch)` for later epochs)."""
        return iter(self.batches(0))


class NoReplacementSampler:
    """Batches of `batch_size // samples_per_class` distinct classes x `samples_per_class`
    images in which every image appears at most once per epoch (RS@k's ``TrainDatasetrsk``,
    yash0307/RecallatK_surrogate ``src/datasets.py``).

    A class of n images offers ``n // samples_per_class`` draws per epoch (a class with fewer
    than `samples_per_class` images is never drawn; which ``n % samples_per_class`` images of a
    class are left out changes from epoch to epoch).
    An epoch is the largest number R of batches these draws can fill with distinct classes per
    batch: each class gives ``min(draws, R)`` of them, shortened at random so that the total is
    exactly ``R * classes_per_batch``, and the draws are dealt to the R batches so that no batch
    holds a class twice. R depends only on the class sizes, so every epoch has the same length.

    The official sampler sweeps its shuffled class list again and again, taking from the first
    classes that still have `samples_per_class` images, and stops at the first sweep that cannot
    fill a batch, which can be fewer than R depending on the shuffle (14 or 15 where R = 15, for
    11,318 simulated classes of 2 to 12 images at batch 4,000, SOP's shape). Both use each image
    at most once and give each class at most one block per batch.

    Args:
        labels: (N,) integer class ids.
        batch_size: images per batch, a multiple of `samples_per_class` (4,000 in the paper).
        samples_per_class: images per class in a batch (m, 4).
        seed: int; epoch `e` uses `np.random.default_rng([seed, e])`.

    Raises:
        ValueError: batch_size not a multiple of samples_per_class, or the class sizes cannot
            fill one batch (fewer than `classes_per_batch` classes of `samples_per_class` images).
    """

    def __init__(self, labels, batch_size: int, samples_per_class: int = 4, seed: int = 0):
        validation.sampler_args("NoReplacementSampler", batch_size, samples_per_class, seed)
        self.labels = _as_labels(labels, "labels")
        self.batch_size = int(batch_size)
        self.samples_per_class = int(samples_per_class)
        self.classes_per_batch = _check_batch_shape(batch_size, samples_per_class)
        self.seed = int(seed)
        order = np.argsort(self.labels, kind="stable")
        self.classes, starts, counts = np.unique(self.labels[order], return_index=True, return_counts=True)
        self._members = np.split(order, starts[1:])
        self._draws = counts // self.samples_per_class
        self._length = _most_rounds(self._draws, self.classes_per_batch)
        if self._length == 0:
            usable = int((self._draws > 0).sum())
            raise ValueError(
                f"A batch needs {self.classes_per_batch} distinct classes of at least {samples_per_class} "
                f"images (batch_size {batch_size} / samples_per_class {samples_per_class}) but only {usable} "
                f"classes have that many; lower batch_size or samples_per_class."
            )

    def __len__(self) -> int:
        """Batches per epoch: the most the class sizes allow (see the class docstring)."""
        return self._length

    def batches(self, epoch: int = 0) -> np.ndarray:
        """Index batches of epoch `epoch`: int64 array (len(self), batch_size), class-block layout."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        rounds, per_batch, m = self._length, self.classes_per_batch, self.samples_per_class
        take = np.minimum(self._draws, rounds)
        surplus = int(take.sum()) - rounds * per_batch
        if surplus:
            # Drop `surplus` draws uniformly among all offered draws (without replacement).
            owners = np.repeat(np.arange(len(take)), take)
            np.subtract.at(take, rng.choice(owners, size=surplus, replace=False), 1)
        classes = rng.permutation(len(take))
        draws = np.repeat(classes, take[classes])  # each class's draws contiguous
        # Dealing draw j to batch j % R puts a class's <= R consecutive draws in distinct batches.
        blocks = draws.reshape(per_batch, rounds).T  # (R, classes per batch)
        images = {int(c): rng.permutation(self._members[c])[: take[c] * m].reshape(-1, m) for c in classes if take[c]}
        used = dict.fromkeys(images, 0)
        out = np.empty((rounds, self.batch_size), dtype=np.int64)
        for b in rng.permutation(rounds):
            row = []
            for c in blocks[b]:
                row.append(images[int(c)][used[int(c)]])
                used[int(c)] += 1
            out[b] = np.concatenate(row)
        return out

    def __iter__(self):
        """Iterate over the batches of epoch 0 (use `batches(epoch)` for later epochs)."""
        return iter(self.batches(0))


def _most_rounds(draws: np.ndarray, per_batch: int) -> int:
    """The largest R with ``sum(min(draws, R)) >= R * per_batch``: batches of `per_batch`
    distinct classes that classes offering `draws` draws each can fill (0 if none)."""
    low, high = 0, int(draws.sum()) // per_batch
    while low < high:
        mid = (low + high + 1) // 2
        if int(np.minimum(draws, mid).sum()) >= mid * per_batch:
            low = mid
        else:
            high = mid - 1
    return low


class FixedStepsSampler:
    """Another sampler with `steps` batches per epoch: the base sampler's batches read as one
    stream (base epoch 0, then 1, ...), epoch `e` taking stream batches `e * steps` to
    `(e + 1) * steps - 1`. So a run's batches depend only on the base sampler's seed and `steps`
    (resumable), and one epoch may be shorter or longer than a pass over the data.

    Args:
        base: a sampler with `batch_size`, `__len__` and `batches(epoch)` (e.g. `MPerClassSampler`).
        steps: batches per epoch (positive int).
    """

    def __init__(self, base, steps: int):
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}.")
        self.base = base
        self.steps = int(steps)
        self.batch_size = base.batch_size
        self.labels = getattr(base, "labels", None)

    def __len__(self) -> int:
        return self.steps

    def batches(self, epoch: int = 0) -> np.ndarray:
        per = len(self.base)
        first = int(epoch) * self.steps
        last = first + self.steps  # exclusive
        blocks = [self.base.batches(e) for e in range(first // per, (last - 1) // per + 1)]
        stream = np.concatenate(blocks, axis=0)
        offset = (first // per) * per
        return stream[first - offset : last - offset]

    def __iter__(self):
        return iter(self.batches(0))
