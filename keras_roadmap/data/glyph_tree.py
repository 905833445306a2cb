"""The glyph dataset (``keras_roadmap.data.glyphs``) as image files, so the recipes read it like
any other dataset (``keras-roadmap train glyphs``) and ``keras-roadmap index`` can serve it.

Layout written by :func:`write_glyph_tree` (one PNG per image, grayscale, white on black)::

    ROOT/train/<class id>_<U+XXXX>/<n>.png     the training characters
    ROOT/test/<class id>_<U+XXXX>/<n>.png      the unseen test characters
    ROOT/classes.json                          {class id: character}
    ROOT/.complete                             written last: the tree is whole

:func:`load_glyphs` reads a split of it into a ``RetrievalSplit`` (class folder = class).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from keras_roadmap.data.split import DatasetFormatError, RetrievalSplit

SPLITS = ("train", "test")


def class_folder(class_id: int, character: str) -> str:
    """``"0042_U+0041"``: sortable, and file-system safe whatever the character."""
    return f"{int(class_id):04d}_U+{ord(character):04X}"


def character_of(folder: str) -> str:
    """The character a class folder stands for (inverse of :func:`class_folder`)."""
    return chr(int(folder.split("_U+")[1], 16))


def write_glyph_tree(dataset, root) -> pathlib.Path:
    """Write a ``GlyphDataset`` as PNG files under ``root`` (see the module docstring).

    A tree already complete (``.complete`` present) is left as is.
    """
    from PIL import Image

    root = pathlib.Path(root)
    if (root / ".complete").is_file():
        return root
    counters: dict = {}
    for split in SPLITS:
        classes = set(int(c) for c in (dataset.train_classes if split == "train" else dataset.test_classes))
        for image, label in zip(dataset.images, dataset.labels, strict=False):
            label = int(label)
            if label not in classes:
                continue
            folder = root / split / class_folder(label, dataset.characters[label])
            if label not in counters:
                folder.mkdir(parents=True, exist_ok=True)
            n = counters.get(label, 0)
            counters[label] = n + 1
            Image.fromarray(image[..., 0]).save(folder / f"{n:03d}.png", optimize=False, compress_level=1)
    (root / "classes.json").write_text(json.dumps({int(i): c for i, c in enumerate(dataset.characters)}))
    (root / ".complete").write_text("")
    return root


def load_glyphs(root, split: str = "train") -> RetrievalSplit:
    """Read the ``"train"`` or ``"test"`` split of a tree written by :func:`write_glyph_tree`.

    Raises:
        DatasetFormatError: the folder is not a complete glyph tree.
    """
    if split not in SPLITS:
        raise ValueError(f"glyph split must be one of {SPLITS}, got {split!r}.")
    root = pathlib.Path(root)
    folder = root / split
    if not (root / ".complete").is_file() or not folder.is_dir():
        raise DatasetFormatError(
            f"{root} is not a complete glyph tree (no .complete or no {split}/): it is written by "
            "`keras-roadmap train glyphs` (or keras_roadmap.data.glyph_tree.write_glyph_tree)."
        )
    classes = sorted(d for d in os.listdir(folder) if (folder / d).is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(folder / name) if f.endswith(".png"))
        paths.extend(str((folder / name / f).resolve()) for f in files)
        labels.extend([label] * len(files))
    return RetrievalSplit(
        name=f"glyphs/{split}",
        paths=paths,
        labels=np.asarray(labels, np.int64),
        super_labels=None,
        sample_ids=np.arange(len(paths), dtype=np.int64),
        class_names=classes,
    )


def write_glyph_folder(
    root, *, characters=None, copies: int = 1, image_size: int = 32, seed: int = 0, cache_dir=False
) -> pathlib.Path:
    """Render the glyph set (:func:`keras_roadmap.data.build_glyph_dataset`, matplotlib's fonts)
    and write it as an ordinary image folder ``ROOT/<class>/<n>.png`` (one folder per character,
    every class together, no split): a stand-in for a user's own images.

    Args:
        characters: the characters to draw (default: letters and digits of every script the
            fonts cover, ~500 classes); copies: augmented images per (character, font);
        cache_dir: the render cache (default False: none, nothing written outside ``root``).

    Returns:
        ``root``. Raises ``FileExistsError`` when ``root`` exists and is not empty.
    """
    from PIL import Image

    from keras_roadmap.data.glyphs import build_glyph_dataset

    root = pathlib.Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; choose a new folder.")
    dataset = build_glyph_dataset(
        None, cache_dir, image_size=image_size, copies=copies, seed=seed, characters=characters
    )
    counters: dict = {}
    for image, label in zip(dataset.images, dataset.labels, strict=True):
        label = int(label)
        folder = root / class_folder(label, dataset.characters[label])
        folder.mkdir(parents=True, exist_ok=True)
        n = counters.get(label, 0)
        counters[label] = n + 1
        Image.fromarray(image[..., 0]).save(folder / f"{n:03d}.png", optimize=False, compress_level=1)
    return root
