"""`RetrievalSplit`, the one container every dataset reader returns, and the helpers they share.

Readers only parse list files; they never open images. A split holds absolute image paths plus
integer labels remapped to 0..C-1 (Keras casts `y_true` to float32, so raw ids >= 2**24 would
collide; contiguous labels also let losses and samplers index per-class tables directly).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

from keras_roadmap.errors import DatasetFormatError, MissingDatasetFileError  # noqa: F401  (one home for errors)

#: The ``split`` values of a custom CSV (open-metric-learning's convention).
TRAIN, VALIDATION = "train", "validation"


@dataclasses.dataclass(frozen=True)
class RetrievalSplit:
    """One split of a retrieval dataset.

    Attributes:
        name: e.g. `"sop/train"`, `"inshop/query"`.
        paths: list of N absolute image paths, in list-file order.
        labels: int64 array (N,), contiguous class indices in `0..len(class_names)-1`.
        super_labels: int64 array (N,) of super-category indices in
            `0..len(super_class_names)-1`, or None when the dataset has no hierarchy.
        sample_ids: int64 array (N,), stable per-image ids (the row order of the list file,
            `0..N-1`); the cross-batch memory keys its slots with them.
        class_names: the original class identifier (as a string) of each label index.
        super_class_names: the original super-category name of each super label, or None.
    """

    name: str
    paths: list
    labels: np.ndarray
    super_labels: np.ndarray | None
    sample_ids: np.ndarray
    class_names: list
    super_class_names: list | None = None

    def __post_init__(self):
        n = len(self.paths)
        for field in ("labels", "sample_ids") + (("super_labels",) if self.super_labels is not None else ()):
            value = getattr(self, field)
            if not isinstance(value, np.ndarray) or value.dtype != np.int64 or value.shape != (n,):
                raise ValueError(
                    f"RetrievalSplit {self.name!r}: `{field}` must be an int64 numpy array of shape "
                    f"({n},) (one per path); got {type(value).__name__} "
                    f"{getattr(value, 'dtype', '')} {getattr(value, 'shape', '')}."
                )
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(
                f"RetrievalSplit {self.name!r}: labels must lie in [0, {len(self.class_names)}) "
                f"(one class_names entry per label); got range "
                f"[{self.labels.min()}, {self.labels.max()}]."
            )
        if self.super_labels is not None:
            if self.super_class_names is None:
                raise ValueError(f"RetrievalSplit {self.name!r}: super_labels given without super_class_names.")
            if n and self.super_labels.max() >= len(self.super_class_names):
                raise ValueError(
                    f"RetrievalSplit {self.name!r}: super_labels exceed the "
                    f"{len(self.super_class_names)} super_class_names."
                )

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        # The default dataclass repr would print every path.
        supers = "" if self.super_class_names is None else f", super_classes={len(self.super_class_names)}"
        return f"RetrievalSplit({self.name!r}, images={len(self)}, classes={self.num_classes}{supers})"

    @property
    def num_classes(self) -> int:
        """Number of classes in this split's label space (`len(class_names)`)."""
        return len(self.class_names)

    def missing_files(self) -> list:
        """Paths listed in the split that are not files on disk (stat only, no decoding)."""
        return [p for p in self.paths if not os.path.isfile(p)]


def contiguous_labels(raw: Sequence, space: Iterable | None = None) -> tuple[np.ndarray, list]:
    """Map raw class identifiers to int64 indices 0..C-1 (sorted order).

    Args:
        raw: the N raw identifiers (ints or strings) of one split.
        space: the identifiers defining the label space (defaults to `raw`); used when several
            splits share one space (InShop query + gallery).

    Returns:
        `(labels int64 (N,), names list[str] (C,))` with `names[labels[i]] == str(raw[i])`.
    """
    keys = sorted(set(raw if space is None else space), key=_natural_key)
    index = {k: i for i, k in enumerate(keys)}
    labels = np.fromiter((index[r] for r in raw), dtype=np.int64, count=len(raw))
    return labels, [str(k) for k in keys]


def _natural_key(value):
    # Numeric ids sort numerically ("9" < "10"), everything else lexicographically.
    return (0, int(value), "") if isinstance(value, (int, np.integer)) or str(value).isdigit() else (1, 0, str(value))


def read_list_file(path: pathlib.Path, what: str, layout_hint: str) -> list:
    """Read a text list file into `[(line_number, stripped_line), ...]`, skipping blank lines.

    Raises:
        DatasetFormatError (`MissingDatasetFileError`, also a FileNotFoundError): naming
            `path`, what it is and the expected folder layout.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise MissingDatasetFileError(
            f"{what} not found: {path}. Expected layout:\n{layout_hint}\n"
            "Point the reader's `root` at the folder that holds it."
        )
    with open(path, encoding="utf-8") as handle:
        return [(i, line.strip()) for i, line in enumerate(handle, start=1) if line.strip()]


def format_error(path, line_number: int, expected: str, line: str) -> DatasetFormatError:
    """A `DatasetFormatError` reading `<file>:<line>: expected <...>, got '<line>'`."""
    return DatasetFormatError(f"{path}:{line_number}: expected {expected}, got {line!r}.")


def check_images_exist(paths: Sequence[str], list_file, line_numbers: Sequence[int]) -> None:
    """Raise FileNotFoundError naming each listed image absent from disk (first 5 shown).

    Args:
        paths: absolute image paths.
        list_file: the list file they come from (named in the message).
        line_numbers: the list-file line of each path.
    """
    missing = [(ln, p) for ln, p in zip(line_numbers, paths, strict=False) if not os.path.isfile(p)]
    if missing:
        shown = "\n".join(f"  {list_file}:{ln}: {p}" for ln, p in missing[:5])
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images listed in {list_file} are missing on disk:\n{shown}"
            + ("\n  ..." if len(missing) > 5 else "")
            + "\nCheck that the images were extracted under the dataset root, or pass "
            "check_files=False to defer the check to the tf.data pipeline (on_corrupt=...)."
        )


def make_split(name, paths, raw_labels, raw_super=None, label_space=None) -> RetrievalSplit:
    """Build a `RetrievalSplit` from raw identifiers (remapped to contiguous indices)."""
    labels, class_names = contiguous_labels(raw_labels, label_space)
    super_labels = super_names = None
    if raw_super is not None:
        super_labels, super_names = contiguous_labels(raw_super)
    return RetrievalSplit(
        name=name,
        paths=list(paths),
        labels=labels,
        super_labels=super_labels,
        sample_ids=np.arange(len(paths), dtype=np.int64),
        class_names=class_names,
        super_class_names=super_names,
    )


def check_split_name(split: str, allowed: Sequence[str], dataset: str) -> None:
    """Raise ValueError unless `split` is one of `allowed`."""
    if split not in allowed:
        raise ValueError(f"{dataset}: split must be one of {list(allowed)}, got {split!r}.")
