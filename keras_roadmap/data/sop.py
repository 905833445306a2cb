"""Stanford Online Products (Song et al., 2016) reader: `Ebay_train.txt` / `Ebay_test.txt`."""

from __future__ import annotations

import pathlib

from keras_roadmap.data.split import (
    RetrievalSplit,
    check_images_exist,
    check_split_name,
    format_error,
    make_split,
    read_list_file,
)

SOP_LAYOUT = """\
  <root>/Ebay_train.txt      header 'image_id class_id super_class_id path'
  <root>/Ebay_test.txt
  <root>/bicycle_final/111085122871_0.JPG   (12 '<category>_final' folders)"""

_HEADER = ["image_id", "class_id", "super_class_id", "path"]


def load_sop(root, split: str = "train", check_files: bool = True) -> RetrievalSplit:
    """Read one split of Stanford Online Products.

    Args:
        root: folder holding `Ebay_train.txt`, `Ebay_test.txt` and the `<category>_final/` folders.
        split: `"train"` (11,318 classes) or `"test"` (11,316 classes); disjoint classes.
        check_files: stat every listed image now and raise FileNotFoundError on missing ones;
            with False, a missing image is reported when the pipeline reads it.

    Returns:
        A `RetrievalSplit`: labels = `class_id` remapped to 0..C-1 (`class_names` keeps the
        original ids), super_labels = `super_class_id` remapped (`super_class_names` are the
        category folders, e.g. `"bicycle_final"`).

    Raises:
        FileNotFoundError: the list file or (with check_files) an image is missing.
        DatasetFormatError: bad header or row (file and line in the message).
    """
    check_split_name(split, ("train", "test"), "load_sop")
    root = pathlib.Path(root).expanduser().resolve()
    list_file = root / f"Ebay_{split}.txt"
    lines = read_list_file(list_file, f"Stanford Online Products {split} list", SOP_LAYOUT)
    if not lines or lines[0][1].split() != _HEADER:
        ln, text = lines[0] if lines else (1, "")
        raise format_error(list_file, ln, "the header 'image_id class_id super_class_id path'", text)
    paths, classes, supers, line_numbers = [], [], [], []
    for ln, text in lines[1:]:
        fields = text.split()
        if len(fields) != 4 or not all(f.isdigit() for f in fields[:3]):
            raise format_error(list_file, ln, "'<image_id:int> <class_id:int> <super_class_id:int> <path>'", text)
        paths.append(str(root / fields[3]))
        classes.append(int(fields[1]))
        supers.append(fields[3].split("/")[0])
        line_numbers.append(ln)
    if check_files:
        check_images_exist(paths, list_file, line_numbers)
    return make_split(f"sop/{split}", paths, classes, supers)
