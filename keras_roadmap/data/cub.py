"""CUB-200-2011 (Wah et al., 2011) reader with the metric-learning split (classes 1-100 / 101-200)."""

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

CUB_LAYOUT = """\
  <root>/CUB_200_2011/images.txt               '<image_id> <relative path>'
  <root>/CUB_200_2011/image_class_labels.txt   '<image_id> <class_id>'
  <root>/CUB_200_2011/images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg
  (root may also be the CUB_200_2011 folder itself)"""


def _cub_dir(root: pathlib.Path) -> pathlib.Path:
    return root if (root / "images.txt").is_file() else root / "CUB_200_2011"


def _parse_pairs(path, what, value_check, expected):
    pairs = {}
    for ln, text in read_list_file(path, what, CUB_LAYOUT):
        fields = text.split()
        if len(fields) != 2 or not fields[0].isdigit() or not value_check(fields[1]):
            raise format_error(path, ln, expected, text)
        if fields[0] in pairs:
            raise format_error(
                path, ln, f"a unique image_id (id {fields[0]} already on line {pairs[fields[0]][0]})", text
            )
        pairs[fields[0]] = (ln, fields[1])
    return pairs


def load_cub(root, split: str = "train", check_files: bool = True) -> RetrievalSplit:
    """Read one split of CUB-200-2011 in the retrieval convention.

    Classes 1-100 form "train" and 101-200 "test" (the ROADMAP / metric-learning split, not the
    classification split of `train_test_split.txt`, which is ignored).

    Args:
        root: the folder holding `CUB_200_2011/` (or `CUB_200_2011` itself).
        split: `"train"` or `"test"`.
        check_files: stat every listed image now (FileNotFoundError on missing ones); with False,
            a missing image is reported when the pipeline reads it.

    Returns:
        A `RetrievalSplit` with labels 0..99 (`class_names` = the class folder, e.g.
        `"001.Black_footed_Albatross"`) and no super labels.

    Raises:
        FileNotFoundError: a list file, the folder or (with `check_files`) an image is missing.
        DatasetFormatError: a list file is malformed (file and line named).
    """
    check_split_name(split, ("train", "test"), "load_cub")
    base = _cub_dir(pathlib.Path(root).expanduser().resolve())
    images_file, labels_file = base / "images.txt", base / "image_class_labels.txt"
    images = _parse_pairs(images_file, "CUB images list", lambda v: True, "'<image_id:int> <relative path>'")
    labels = _parse_pairs(
        labels_file,
        "CUB image_class_labels list",
        lambda v: v.isdigit() and 1 <= int(v) <= 200,
        "'<image_id:int> <class_id in 1..200>'",
    )
    only_images = sorted(set(images) - set(labels), key=int)
    only_labels = sorted(set(labels) - set(images), key=int)
    if only_images:
        raise DatasetFormatError(
            f"{labels_file}: no class for image_id {only_images[0]} (line {images[only_images[0]][0]} of "
            f"{images_file}); {len(only_images)} image(s) lack a label. Expected one row per image."
        )
    if only_labels:
        raise DatasetFormatError(
            f"{labels_file}:{labels[only_labels[0]][0]}: image_id {only_labels[0]} is not listed in "
            f"{images_file}; expected the same image ids in both files."
        )
    keep = range(1, 101) if split == "train" else range(101, 201)
    paths, raw, names, line_numbers = [], [], {}, []
    for image_id, (ln, rel) in sorted(images.items(), key=lambda kv: int(kv[0])):
        class_id = int(labels[image_id][1])
        if class_id in keep:
            paths.append(str(base / "images" / rel))
            raw.append(class_id)
            names.setdefault(class_id, rel.split("/")[0])
            line_numbers.append(ln)
    if check_files:
        check_images_exist(paths, images_file, line_numbers)
    result = make_split(f"cub/{split}", paths, raw)
    # Human-readable names: the class folder rather than the bare number.
    object.__setattr__(result, "class_names", [names[int(c)] for c in result.class_names])
    return result
