"""The class-disjoint split of a user's images: no class on both sides, so the held-out side
measures retrieval of classes never seen in training (what metric learning is for).

Rules (`split_by_class`):

* classes with 2+ images are shuffled with `seed` and a `test_classes` fraction of them is held
  out (`validation`), per category when the classes have one (stratified: each category keeps
  about the same fraction on each side; the per-category counts are rounded so that the total is
  `round(test_classes * classes)`);
* a class with a single image cannot be a query (it has no other image to find) nor a training
  class (no positive pair): it goes to the held-out side as a gallery-only distractor
  (`is_query = 0`, `is_gallery = 1`);
* every other held-out image is both a query and a gallery image (leave-one-out).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_roadmap.data.split import TRAIN, VALIDATION
from keras_roadmap.errors import DatasetFormatError


@dataclasses.dataclass
class ClassSplit:
    """A split :class:`ImageSet` and what the split did.

    Attributes:
        images: the records with `split`, `is_query`, `is_gallery` set.
        train_classes: (with test_classes) class names on each side (single-image ones excluded).
        single_image_classes: the classes with one image (gallery-only on the held-out side).
    """

    images: object  # keras_roadmap.data.custom.ImageSet (not imported: custom imports this module)
    train_classes: list
    test_classes: list
    single_image_classes: list


def check_fraction(value: float, flag: str = "--test-classes") -> float:
    """`value` as a float in (0, 1), else a DatasetFormatError naming `flag`."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{flag} must be a fraction between 0 and 1 (e.g. 0.5), got {value!r}.") from None
    if not 0.0 < value < 1.0:
        raise DatasetFormatError(f"{flag} must be a fraction strictly between 0 and 1 (e.g. 0.5), got {value}.")
    return value


def _apportion(sizes: list, total: int) -> list:
    """Integers t_c <= sizes[c] summing to `total`, proportional to sizes (largest remainder)."""
    n = sum(sizes)
    exact = [total * s / n for s in sizes]
    counts = [int(np.floor(e)) for e in exact]
    order = sorted(range(len(sizes)), key=lambda c: (counts[c] - exact[c], c))
    for c in order[: total - sum(counts)]:
        counts[c] += 1
    return counts


def split_by_class(images, *, test_classes: float = 0.5, seed: int = 0) -> ClassSplit:
    """Split an unsplit :class:`ImageSet` by class (see the module docstring).

    Raises:
        DatasetFormatError: no images, one class, every class with one image, or a fraction
            leaving fewer than 2 classes (with 2+ images) on a side; the message names the data
            and `--test-classes`.
    """
    fraction = check_fraction(test_classes)
    source = images.source
    if not images.records:
        raise DatasetFormatError(f"{source}: no images found (expected ROOT/<class>/<image>).")
    counts: dict = {}
    category: dict = {}
    for r in images.records:
        counts[r.label] = counts.get(r.label, 0) + 1
        category[r.label] = r.category
    if len(counts) < 2:
        raise DatasetFormatError(
            f"{source}: found {len(counts)} class ({next(iter(counts))}); "
            "retrieval needs at least 4 classes (2 to train on, 2 to test on)."
        )
    multi = sorted(c for c, n in counts.items() if n >= 2)
    single = sorted(c for c, n in counts.items() if n == 1)
    if not multi:
        raise DatasetFormatError(
            f"{source}: every one of the {len(counts)} classes has a single image; "
            "a class needs 2+ images to train on or to be queried."
        )
    total_test = int(round(fraction * len(multi)))
    if total_test < 2 or len(multi) - total_test < 2:
        raise DatasetFormatError(
            f"{source}: --test-classes {fraction} holds out {total_test} of the {len(multi)} classes with 2+ images, "
            f"leaving {len(multi) - total_test} to train on; each side needs at least 2"
            + (
                " (add classes)"
                if len(multi) < 4
                else f" (choose a fraction between {2 / len(multi):.2f} and {1 - 2 / len(multi):.2f})"
            )
            + "."
        )
    groups: dict = {}
    for c in multi:
        groups.setdefault(category[c] or "", []).append(c)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    held = set()
    for key, take in zip(keys, _apportion([len(groups[k]) for k in keys], total_test), strict=True):
        members = list(groups[key])
        rng.shuffle(members)
        held.update(members[:take])
    records = []
    for r in images.records:
        if counts[r.label] == 1:
            records.append(dataclasses.replace(r, split=VALIDATION, is_query=False, is_gallery=True))
        elif r.label in held:
            records.append(dataclasses.replace(r, split=VALIDATION, is_query=True, is_gallery=True))
        else:
            records.append(dataclasses.replace(r, split=TRAIN, is_query=None, is_gallery=None))
    split = type(images)(images.source, images.layout, records, list(images.skipped))
    return ClassSplit(split, [c for c in multi if c not in held], sorted(held), single)
