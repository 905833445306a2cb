"""iNaturalist-2018 reader with the retrieval split of Smooth-AP / ROADMAP (disjoint classes)."""

from __future__ import annotations

import pathlib

from keras_roadmap.data.split import (
    DatasetFormatError,
    RetrievalSplit,
    check_images_exist,
    check_split_name,
    format_error,
    make_split,
    read_list_file,
)

INAT_LAYOUT = (
    "  <root>/Inat_dataset_splits/Inaturalist_train_set1.txt   one path per line:\n"
    "  <root>/Inat_dataset_splits/Inaturalist_test_set1.txt      "
    "train_val2018/Plantae/7477/3b60c9486db1d2ee875f11a669fbde4a.jpg\n"
    "  <root>/train_val2018/<kingdom>/<category id>/<image>.jpg"
)

_FILES = {"train": "Inaturalist_train_set1.txt", "test": "Inaturalist_test_set1.txt"}


def _parse(list_file: pathlib.Path):
    rows = []
    for ln, text in read_list_file(list_file, "iNaturalist split list", INAT_LAYOUT):
        parts = text.split("/")
        if " " in text or len(parts) < 4 or not parts[-2].isdigit() or not parts[-1]:
            raise format_error(
                list_file, ln, "one relative path '<folder>/<kingdom>/<category id:int>/<image file>'", text
            )
        rows.append((ln, text, int(parts[-2]), parts[-3]))
    return rows


def load_inaturalist(root, split: str = "train", check_files: bool = True, splits_dir=None) -> RetrievalSplit:
    """Read one split of iNaturalist-2018 (Smooth-AP / ROADMAP retrieval split).

    Both list files are parsed so that the class disjointness of train and test is checked.

    Args:
        root: folder holding `train_val2018/` (paths in the lists are relative to it).
        split: `"train"` (5,690 classes) or `"test"` (2,452 classes).
        check_files: stat every listed image now (FileNotFoundError on missing ones); with False,
            a missing image is reported when the pipeline reads it.
        splits_dir: folder of the two list files; defaults to `<root>/Inat_dataset_splits`.

    Returns:
        A `RetrievalSplit`: labels = the category folder number remapped to 0..C-1
        (`class_names` keeps it), super_labels = the kingdom folder (`super_class_names`, e.g.
        `"Plantae"`), usable by `HierarchicalSampler`.

    Raises:
        FileNotFoundError: a list file, the folder or (with `check_files`) an image is missing.
        DatasetFormatError: a list file is malformed (file and line named), also when a
            category appears in both train and test.
    """
    check_split_name(split, ("train", "test"), "load_inaturalist")
    root = pathlib.Path(root).expanduser().resolve()
    splits_dir = pathlib.Path(splits_dir) if splits_dir is not None else root / "Inat_dataset_splits"
    parsed = {name: _parse(splits_dir / fname) for name, fname in _FILES.items()}
    train_classes = {}
    for ln, _, category, _ in parsed["train"]:
        train_classes.setdefault(category, ln)
    for ln, _text, category, _ in parsed["test"]:
        if category in train_classes:
            raise DatasetFormatError(
                f"{splits_dir / _FILES['test']}:{ln}: category {category} also appears in "
                f"{splits_dir / _FILES['train']} (line {train_classes[category]}); the retrieval "
                f"split needs disjoint train/test classes. Use the Smooth-AP split files unchanged."
            )
    rows = parsed[split]
    paths = [str(root / text) for _, text, _, _ in rows]
    if check_files:
        check_images_exist(paths, splits_dir / _FILES[split], [r[0] for r in rows])
    return make_split(f"inaturalist/{split}", paths, [r[2] for r in rows], [r[3] for r in rows])
