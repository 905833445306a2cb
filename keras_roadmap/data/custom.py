"""A user's own images: an image folder or an open-metric-learning style CSV -> `RetrievalSplit`s.

Two layouts are read (numpy + the standard library; Pillow only to check or decode images):

* a folder ``ROOT/<class>/<image>`` (the Keras ``image_dataset_from_directory`` convention:
  :data:`IMAGE_EXTENSIONS`, dot-files and dot-folders skipped), or ``ROOT/<category>/<class>/<image>``,
  which gives every class a category (classes are named ``<category>/<class>``, so two categories
  may hold a class of the same name);
* a CSV with the columns of open-metric-learning's ``df.csv``: ``label, path, split, is_query,
  is_gallery`` (``category`` optional); ``split`` is ``train`` or ``validation`` (``test`` is read as
  ``validation``), relative paths resolve against the CSV's folder.

:func:`read_images` turns either into an :class:`ImageSet` (records + every skipped file with the
reason), :func:`load_custom` into the train / query / gallery :class:`RetrievalSplit`\\ s that
``make_train_dataset``, ``make_eval_dataset``, ``RetrievalTrainer`` and ``retrieval_metrics`` take
(a folder is split by class with :func:`keras_roadmap.data.class_split.split_by_class`).
:func:`inspect_images` decodes every image in parallel (bounded memory: one image per worker)
and reports the unreadable ones and the conversions; :func:`load_rgb` is the one Pillow decoder,
compositing transparency on :data:`TRANSPARENT_BACKGROUND`, as the tf.data decoder does.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import pathlib
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_roadmap.data.presets import TRANSPARENT_BACKGROUND
from keras_roadmap.data.split import TRAIN, VALIDATION, RetrievalSplit, contiguous_labels
from keras_roadmap.errors import DatasetFormatError

__all__ = [
    "CSV_COLUMNS",
    "IMAGE_EXTENSIONS",
    "TRANSPARENT_BACKGROUND",
    "CustomData",
    "ImageCheck",
    "ImageRecord",
    "ImageSet",
    "inspect_images",
    "load_custom",
    "load_rgb",
    "read_images",
    "write_split_csv",
]

#: Extensions read from a folder (Keras' ``image_dataset_from_directory`` list, plus WebP).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
#: Required CSV columns (open-metric-learning's names); ``category`` is optional.
CSV_COLUMNS = ("label", "path", "split", "is_query", "is_gallery")
_SPLIT_ALIASES = {"train": TRAIN, "validation": VALIDATION, "test": VALIDATION}
_TRUE = ("1", "true", "yes", "y", "t")
_FALSE = ("0", "false", "no", "n", "f")
# A label a spreadsheet made a float of ("3.0", "1e3", "nan"): integer ids or names are wanted.
_FLOAT_LABEL = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+|nan|inf)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image of a user's data set.

    Attributes:
        path: absolute path.
        label: class name (a folder name, ``category/class`` in the two-level layout, or the
            CSV's ``label``).
        category: the class's category, or None.
        split: "train", "validation" or None (a folder: not split yet).
        is_query: (with is_gallery) the CSV's flags of a validation row (None elsewhere).
        where: where it was listed (``"csv:LINE"`` or the folder), for error messages.
    """

    path: str
    label: str
    category: str | None = None
    split: str | None = None
    is_query: bool | None = None
    is_gallery: bool | None = None
    where: str = ""


@dataclasses.dataclass
class ImageSet:
    """What :func:`read_images` found.

    Attributes:
        source: the folder or CSV read (absolute).
        layout: "folder", "folder+category" or "csv".
        records: the images, in a stable order (sorted paths for a folder, row order for a CSV).
        skipped: ``(path, reason)`` for every file not taken (hidden, not an image extension).
    """

    source: str
    layout: str
    records: list
    skipped: list = dataclasses.field(default_factory=list)

    @property
    def paths(self) -> list:
        return [r.path for r in self.records]

    @property
    def labels(self) -> list:
        return [r.label for r in self.records]

    @property
    def has_categories(self) -> bool:
        return any(r.category is not None for r in self.records)

    @property
    def is_split(self) -> bool:
        """True when every record carries a split (a CSV)."""
        return bool(self.records) and all(r.split is not None for r in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"ImageSet({self.source!r}, layout={self.layout}, images={len(self)}, skipped={len(self.skipped)})"


def read_images(path) -> ImageSet:
    """Read an image folder (``ROOT/<class>/<image>`` or ``ROOT/<category>/<class>/<image>``)
    or an OML-style CSV into an :class:`ImageSet`. Images are listed, not decoded (see
    :func:`inspect_images`).

    Raises:
        DatasetFormatError: the path does not exist, a folder mixes images and sub-folders at
            the class level, a symlink loop, a CSV with missing columns, an unknown ``split``
            value, an empty or float-looking label, a missing or duplicated path... (the
            message names the file, line or column).
    """
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        return _read_folder(path)
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DatasetFormatError(
                f"{path}: expected an image folder or a .csv file (columns {', '.join(CSV_COLUMNS)})."
            )
        return _read_csv(path)
    raise DatasetFormatError(f"{path}: no such folder or CSV file.")


# ---------------------------------------------------------------------------------------------
# Folder


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_files(folder: pathlib.Path, seen: tuple, skipped: list) -> list:
    """Every non-hidden file under `folder` (recursively, symlinks followed, loops refused)."""
    real = os.path.realpath(folder)
    if real in seen:
        raise DatasetFormatError(
            f"{folder}: symlink loop (it points back to {real}); remove the link or point it elsewhere."
        )
    seen = seen + (real,)
    files = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise DatasetFormatError(f"{folder}: cannot list the folder ({err.strerror}).") from None
    for entry in entries:
        full = pathlib.Path(entry.path)
        if entry.name.startswith("."):
            skipped.append((str(full.absolute()), "hidden (dot) file or folder"))
            continue
        if entry.is_dir():
            files.extend(_walk_files(full, seen, skipped))
        else:
            files.append(full)
    return files


def _read_folder(root: pathlib.Path) -> ImageSet:
    root = root.absolute()
    skipped: list = []
    top = [e for e in sorted(os.scandir(root), key=lambda e: e.name)]
    records = []
    two_level = None
    for entry in top:
        full = pathlib.Path(entry.path)
        if entry.name.startswith("."):
            skipped.append((str(full), "hidden (dot) file or folder"))
            continue
        if not entry.is_dir():
            skipped.append((str(full), "a file directly in the root: images go in ROOT/<class>/"))
            continue
        _walk_files(full, (os.path.realpath(root),), [])  # refuses loops before anything else
        children = [c for c in sorted(os.scandir(full), key=lambda c: c.name) if not c.name.startswith(".")]
        has_dirs = any(c.is_dir() for c in children)
        has_images = any(not c.is_dir() and _is_image_name(c.name) for c in children)
        level = has_dirs and not has_images
        if has_dirs and has_images:
            raise DatasetFormatError(
                f"{full}: holds both images and sub-folders; use ROOT/<class>/<image> or "
                "ROOT/<category>/<class>/<image>, not both."
            )
        if two_level is None and (has_dirs or has_images):
            two_level = level
        elif (has_dirs or has_images) and level != two_level:
            raise DatasetFormatError(
                f"{full}: {'holds class folders' if level else 'holds images'} while other folders of {root} "
                f"{'hold images' if level else 'hold class folders'}; use one layout for the whole tree."
            )
        if level:
            for child in children:
                if not child.is_dir():
                    skipped.append(
                        (
                            str(pathlib.Path(child.path)),
                            "a file at the category level: images go in ROOT/<category>/<class>/",
                        )
                    )
                    continue
                label = f"{entry.name}/{child.name}"
                records += _class_records(pathlib.Path(child.path), label, entry.name, root, skipped)
        else:
            records += _class_records(full, entry.name, None, root, skipped)
    return ImageSet(str(root), "folder+category" if two_level else "folder", records, skipped)


def _class_records(folder: pathlib.Path, label: str, category, root, skipped) -> list:
    records = []
    for file in _walk_files(folder, (os.path.realpath(root),), skipped):
        if _is_image_name(file.name):
            records.append(ImageRecord(str(file.absolute()), label, category, where=str(root)))
        else:
            skipped.append((str(file.absolute()), f"not an image extension ({', '.join(IMAGE_EXTENSIONS)})"))
    return records


# ---------------------------------------------------------------------------------------------
# CSV


def _flag(value: str, column: str, where: str):
    text = (value or "").strip().lower()
    if text in ("", "nan", "none"):
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DatasetFormatError(f"{where}: column `{column}` must be 1/0 or true/false, got {value!r}.")


def _read_csv(path: pathlib.Path) -> ImageSet:
    path = path.absolute()
    base = path.parent
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in CSV_COLUMNS if c not in columns]
        if missing:
            raise DatasetFormatError(
                f"{path}: missing column(s) {', '.join(missing)}; the header must hold {', '.join(CSV_COLUMNS)} "
                f"(category optional), got {', '.join(columns) or 'no header'}."
            )
        reader.fieldnames = columns
        rows = list(reader)
    records, lines_of, missing_files = [], {}, []
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        label = (row.get("label") or "").strip()
        if not label:
            raise DatasetFormatError(f"{where}: column `label` is empty; give every row a class name or integer id.")
        if _FLOAT_LABEL.match(label):
            raise DatasetFormatError(
                f"{where}: column `label` is {label!r}, a float (a spreadsheet's conversion?); "
                "write integer ids or names."
            )
        split_value = (row.get("split") or "").strip().lower()
        if split_value not in _SPLIT_ALIASES:
            raise DatasetFormatError(
                f"{where}: column `split` must be train or validation (or test), got {row.get('split')!r}."
            )
        split = _SPLIT_ALIASES[split_value]
        raw_path = (row.get("path") or "").strip()
        if not raw_path:
            raise DatasetFormatError(f"{where}: column `path` is empty.")
        full = pathlib.Path(raw_path).expanduser()
        full = str((full if full.is_absolute() else base / full).absolute())
        if full in lines_of:
            raise DatasetFormatError(
                f"{where}: column `path` {raw_path!r} is already listed on line {lines_of[full]}; list each image once."
            )
        lines_of[full] = line
        if not os.path.isfile(full):
            missing_files.append(f"{where}: {raw_path}")
        is_query = _flag(row.get("is_query"), "is_query", where)
        is_gallery = _flag(row.get("is_gallery"), "is_gallery", where)
        if split == TRAIN:
            is_query = is_gallery = None
        else:
            # OML lists both flags; an empty pair reads as "both" (every image queries the others).
            if is_query is None and is_gallery is None:
                is_query = is_gallery = True
            is_query, is_gallery = bool(is_query), bool(is_gallery)
            if not (is_query or is_gallery):
                raise DatasetFormatError(
                    f"{where}: a validation row with is_query = is_gallery = 0 is used by nothing; set one of them."
                )
        category = (row.get("category") or "").strip() or None if "category" in columns else None
        records.append(ImageRecord(full, label, category, split, is_query, is_gallery, where))
    if missing_files:
        shown = "; ".join(missing_files[:3]) + (" ..." if len(missing_files) > 3 else "")
        raise DatasetFormatError(
            f"{path}: {len(missing_files)} listed image(s) do not exist (column `path`, relative paths resolve "
            f"against {base}): {shown}"
        )
    return ImageSet(str(path), "csv", records, [])


# ---------------------------------------------------------------------------------------------
# Decoding


@dataclasses.dataclass(frozen=True)
class ImageCheck:
    """The result of decoding one file.

    Attributes:
        path: the file.
        ok: decoded completely.
        reason: why not (when not ok).
        conversions: what was done to reach RGB (e.g. "grayscale -> RGB", "RGBA: transparency
            composited on (255, 255, 255)", "animated (12 frames): first frame").
        size: (width, height) when ok.
        sha256: hex digest of the file's bytes (exact duplicates share it).
    """

    path: str
    ok: bool
    reason: str = ""
    conversions: tuple = ()
    size: tuple | None = None
    sha256: str | None = None


def _pil():
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("Reading image files needs Pillow: pip install 'keras-roadmap[viz]'") from err
    return Image


def _to_rgb(image, notes: list):
    """A PIL image of any mode -> RGB; transparency composited on TRANSPARENT_BACKGROUND."""
    Image = _pil()
    if getattr(image, "n_frames", 1) > 1:
        notes.append(f"animated ({image.n_frames} frames): first frame")
        image.seek(0)
    mode = image.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if mode.startswith("I;16") or mode in ("I", "F"):
        notes.append(f"{mode} ({'16' if '16' in mode else '32'}-bit) -> 8-bit")
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.round(array * 255.0 / top), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        background = np.asarray(TRANSPARENT_BACKGROUND, np.float32)
        if (alpha < 1).any():
            notes.append(f"{mode}: transparency composited on {tuple(TRANSPARENT_BACKGROUND)}")
        else:
            notes.append(f"{mode} (opaque) -> RGB")
        pixels = np.floor(rgba[..., :3] * alpha + background * (1.0 - alpha) + 0.5)
        return np.clip(pixels, 0, 255).astype(np.uint8)
    if mode != "RGB":
        notes.append(
            {"L": "grayscale -> RGB", "1": "1-bit -> RGB", "P": "palette -> RGB", "CMYK": "CMYK -> RGB"}.get(
                mode, f"{mode} -> RGB"
            )
        )
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def load_rgb(path, notes: list | None = None) -> np.ndarray:
    """Decode an image file to uint8 ``(H, W, 3)`` RGB with Pillow, as the tf.data pipeline
    does: grayscale / palette / CMYK / 16-bit converted, an animation's first frame, alpha
    composited on :data:`TRANSPARENT_BACKGROUND`. ``notes`` (a list) receives the conversions.

    Raises:
        OSError / ValueError (Pillow's): unreadable, truncated or not an image.
    """
    Image = _pil()
    notes = [] if notes is None else notes
    with Image.open(path) as image:
        image.load()
        return _to_rgb(image, notes)


def _check(path: str, hash_files: bool) -> ImageCheck:
    Image = _pil()
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        return ImageCheck(path, False, f"cannot read the file ({err.strerror or err})")
    if not data:
        return ImageCheck(path, False, "empty file (0 bytes)")
    digest = hashlib.sha256(data).hexdigest() if hash_files else None
    import io

    notes: list = []
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
            image.load()
            size = image.size
            _to_rgb(image, notes)
    except Image.DecompressionBombError as err:
        return ImageCheck(path, False, f"too large to decode safely ({err})", sha256=digest)
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as err:
        text = str(err)
        if "cannot identify image file" in text:
            text = "not an image (Pillow cannot identify the format)"
        elif "truncated" in text.lower() or "broken data stream" in text.lower():
            text = f"truncated or corrupt image data ({text})"
        return ImageCheck(path, False, text, sha256=digest)
    if fmt not in ("JPEG", "PNG", "BMP", "GIF", "WEBP", "MPO"):
        notes.append(f"{fmt} content under a {pathlib.Path(path).suffix} name")
    return ImageCheck(path, True, "", tuple(notes), size, digest)


def inspect_images(paths: Sequence[str], *, workers: int | None = None, hash_files: bool = True) -> list:
    """Decode every file of `paths` in parallel (threads: Pillow releases the GIL while it
    decodes; at most `workers` images in memory at once) and return one :class:`ImageCheck`
    per path, in order. Never raises for a bad file: its `reason` says what is wrong."""
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: _check(p, hash_files), paths, chunksize=16))


# ---------------------------------------------------------------------------------------------
# Splits


@dataclasses.dataclass
class CustomData:
    """The splits of a user's data set, as the recipes and the tf.data pipelines take them.

    Attributes:
        train: the training classes.
        gallery: the held-out images searched (their classes never seen in training).
        query: None = leave-one-out on `gallery` (every gallery image whose class has another
            image queries the others; single-image classes are gallery-only distractors), or a
            separate query split (CSV with disjoint ``is_query`` / ``is_gallery`` rows).
        images: the :class:`ImageSet` they come from.
        categories: category name of each gallery class (index = gallery label), or None.
    """

    train: RetrievalSplit
    gallery: RetrievalSplit
    query: RetrievalSplit | None
    images: ImageSet
    categories: list | None = None


def _split_of(name: str, records: list, label_space: Iterable | None = None) -> RetrievalSplit:
    raw = [r.label for r in records]
    labels, names = contiguous_labels(raw, label_space)
    supers = super_names = None
    if records and all(r.category is not None for r in records):
        supers, super_names = contiguous_labels([r.category for r in records])
    return RetrievalSplit(
        name=name,
        paths=[r.path for r in records],
        labels=labels,
        super_labels=supers,
        sample_ids=np.arange(len(records), dtype=np.int64),
        class_names=names,
        super_class_names=super_names,
    )


def load_custom(path_or_csv, *, test_classes: float = 0.5, seed: int = 0, name: str | None = None) -> CustomData:
    """A folder or CSV -> train / gallery (/ query) :class:`RetrievalSplit`\\ s.

    A folder (or a CSV without splits... every CSV row has one) is split by class with
    :func:`keras_roadmap.data.class_split.split_by_class` (`test_classes` fraction of the
    classes held out, `seed`, stratified by category); a CSV keeps its own split.

    Raises:
        DatasetFormatError: see :func:`read_images`, plus a split without training classes,
            fewer than 2 held-out classes with 2+ images, or ``is_query`` rows that are neither
            the ``is_gallery`` rows (leave-one-out) nor disjoint from them.
    """
    images = read_images(path_or_csv)
    if not images.records:
        raise DatasetFormatError(
            f"{images.source}: no images found (expected ROOT/<class>/<image> with {', '.join(IMAGE_EXTENSIONS)})."
        )
    if not images.is_split:
        from keras_roadmap.data.class_split import split_by_class

        images = split_by_class(images, test_classes=test_classes, seed=seed).images
    return splits_of(images, name=name)


def splits_of(images: ImageSet, *, name: str | None = None) -> CustomData:
    """The :class:`CustomData` of an already split :class:`ImageSet` (every record has a split)."""
    name = name or pathlib.Path(images.source).stem or "custom"
    train = [r for r in images.records if r.split == TRAIN]
    held = [r for r in images.records if r.split == VALIDATION]
    source = images.source
    if len({r.label for r in train}) < 2:
        raise DatasetFormatError(
            f"{source}: the train split has {len({r.label for r in train})} class(es); at least 2 are needed."
        )
    both = {r.label for r in train} & {r.label for r in held}
    if both:
        raise DatasetFormatError(
            f"{source}: class(es) {sorted(both)[:3]} are in both train and validation; a retrieval split holds "
            "each class on one side (unseen classes at test time)."
        )
    query = [r for r in held if r.is_query]
    gallery = [r for r in held if r.is_gallery]
    counts: dict = {}
    for r in gallery:
        counts[r.label] = counts.get(r.label, 0) + 1
    query_paths = {r.path for r in query}
    gallery_paths = {r.path for r in gallery}
    leave_one_out = query_paths <= gallery_paths and all(
        counts[r.label] == 1 for r in gallery if r.path not in query_paths
    )
    if not leave_one_out and query_paths & gallery_paths:
        raise DatasetFormatError(
            f"{source}: the is_query rows must be the is_gallery rows (every image queries the others; "
            "single-image classes may be gallery-only) or disjoint from them; they overlap partly."
        )
    if leave_one_out:
        queries = sum(1 for c in counts.values() if c >= 2)
        if queries < 2:
            raise DatasetFormatError(
                f"{source}: the validation split has {queries} class(es) with 2+ images; "
                "at least 2 are needed to measure retrieval."
            )
        gallery_split = _split_of(f"{name}/gallery", gallery)
        query_split = None
    else:
        space = sorted({r.label for r in gallery} | {r.label for r in query})
        gallery_split = _split_of(f"{name}/gallery", gallery, space)
        query_split = _split_of(f"{name}/query", query, space)
    categories = None
    if all(r.category is not None for r in gallery):
        of = {r.label: r.category for r in gallery}
        categories = [of.get(c) for c in gallery_split.class_names]
    return CustomData(_split_of(f"{name}/train", train), gallery_split, query_split, images, categories)


def write_split_csv(images: ImageSet, path) -> pathlib.Path:
    """Write a split :class:`ImageSet` as an OML-style CSV (paths relative to the CSV's folder
    when they lie under it), atomically."""
    from keras_roadmap import atomic

    path = pathlib.Path(path).absolute()
    folder = path.parent
    with_category = images.has_categories
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(CSV_COLUMNS) + (["category"] if with_category else []))
    for r in images.records:
        try:
            shown = os.path.relpath(r.path, folder)
            if shown.startswith(".."):
                shown = r.path
        except ValueError:  # another drive (Windows)
            shown = r.path
        flags = ["", ""] if r.split == TRAIN else [int(bool(r.is_query)), int(bool(r.is_gallery))]
        writer.writerow([r.label, shown, r.split, *flags] + ([r.category or ""] if with_category else []))
    atomic.write_text(path, buffer.getvalue())
    return path
