"""In-Shop Clothes Retrieval (DeepFashion, Liu et al., 2016) reader: `list_eval_partition.txt`."""

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

INSHOP_LAYOUT = """\
  <root>/list_eval_partition.txt   (or <root>/Eval/list_eval_partition.txt)
      line 1: number of images; line 2: 'image_name item_id evaluation_status';
      rows: 'img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train|query|gallery'
  <root>/img/WOMEN/Dresses/id_00000002/02_1_front.jpg   (or <root>/Img/img/...)"""

_HEADER = ["image_name", "item_id", "evaluation_status"]
_STATUSES = ("train", "query", "gallery")


def _partition_file(root: pathlib.Path) -> pathlib.Path:
    direct = root / "list_eval_partition.txt"
    return (
        direct
        if direct.is_file() or not (root / "Eval" / "list_eval_partition.txt").is_file()
        else (root / "Eval" / "list_eval_partition.txt")
    )


def load_inshop(root, split: str = "train", check_files: bool = True, image_root=None) -> RetrievalSplit:
    """Read one split of In-Shop Clothes Retrieval.

    "query" and "gallery" share one label space (the item ids of both, sorted), so a query's
    label equals its gallery matches' label; "train" has its own (disjoint items).

    Args:
        root: folder holding `list_eval_partition.txt` (or `Eval/list_eval_partition.txt`).
        split: `"train"`, `"query"` or `"gallery"`.
        check_files: stat every listed image now (FileNotFoundError on missing ones); with False,
            a missing image is reported when the pipeline reads it.
        image_root: folder the `img/...` names are relative to; defaults to `root`, or
            `root/Img` when only that one holds `img/`.

    Returns:
        A `RetrievalSplit`: labels = item id index (`class_names` = `"id_00000002"`...),
        super_labels = the clothes category (`super_class_names` e.g. `"WOMEN/Dresses"`).

    Raises:
        FileNotFoundError: a list file, the folder or (with `check_files`) an image is missing.
        DatasetFormatError: a list file is malformed (file and line named).
    """
    check_split_name(split, _STATUSES, "load_inshop")
    root = pathlib.Path(root).expanduser().resolve()
    list_file = _partition_file(root)
    if image_root is None:
        image_root = root / "Img" if not (root / "img").is_dir() and (root / "Img" / "img").is_dir() else root
    image_root = pathlib.Path(image_root)
    lines = read_list_file(list_file, "In-Shop list_eval_partition", INSHOP_LAYOUT)
    if not lines or not lines[0][1].isdigit():
        ln, text = lines[0] if lines else (1, "")
        raise format_error(list_file, ln, "the number of images on line 1", text)
    if len(lines) < 2 or lines[1][1].split() != _HEADER:
        ln, text = lines[1] if len(lines) > 1 else (2, "")
        raise format_error(list_file, ln, "the header 'image_name item_id evaluation_status'", text)
    rows = []
    for ln, text in lines[2:]:
        fields = text.split()
        if len(fields) != 3 or fields[2] not in _STATUSES or len(fields[0].split("/")) < 4:
            raise format_error(
                list_file, ln, "'img/<GENDER>/<Category>/<item id>/<file> <item id> train|query|gallery'", text
            )
        rows.append((ln, fields[0], fields[1], fields[2]))
    if int(lines[0][1]) != len(rows):
        raise DatasetFormatError(
            f"{list_file}:{lines[0][0]}: line 1 announces {lines[0][1]} images but {len(rows)} rows follow."
        )
    train_items = {r[2] for r in rows if r[3] == "train"}
    for ln, _, item, status in rows:
        if status != "train" and item in train_items:
            raise DatasetFormatError(
                f"{list_file}:{ln}: item {item} is in '{status}' and also in 'train'; train items "
                f"must be disjoint from query/gallery items."
            )
    selected = [r for r in rows if r[3] == split]
    space = None if split == "train" else [r[2] for r in rows if r[3] != "train"]
    paths = [str(image_root / r[1]) for r in selected]
    if check_files:
        check_images_exist(paths, list_file, [r[0] for r in selected])
    supers = ["/".join(r[1].split("/")[1:3]) for r in selected]
    return make_split(f"inshop/{split}", paths, [r[2] for r in selected], supers, label_space=space)
