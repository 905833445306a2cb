"""Writers of the official on-disk layouts read by `load_sop`, `load_cub`, `load_inaturalist` and
`load_inshop`: list files plus JPEGs, from explicit rows.

The one place that knows how each layout is *written*; the smoke datasets
(`keras_roadmap.recipes.smoke_data`) and the reader tests describe their trees as rows and call
these. Each row carries its image as a uint8 `(H, W, 3)` array. Needs Pillow (imported when an
image is written): `pip install keras-roadmap[viz]`.
"""

from __future__ import annotations

import pathlib

JPEG_QUALITY = 90
SOP_HEADER = "image_id class_id super_class_id path"
INSHOP_HEADER = "image_name item_id evaluation_status"


def write_jpeg(path, pixels) -> None:
    """Write uint8 `(H, W, 3)` `pixels` as a JPEG at `path` (parent folders created)."""
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("Writing dataset images needs Pillow: pip install 'keras-roadmap[viz]'") from err
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=JPEG_QUALITY)


def _write_lines(path: pathlib.Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_sop(root, rows) -> pathlib.Path:
    """Stanford Online Products: `Ebay_train.txt`, `Ebay_test.txt` and the images under `root`.

    Args:
        rows: `(split, class_id, super_class_id, relative_path, pixels)` with split "train" or
            "test"; image ids are numbered from 1 in row order. Both list files are written.
    """
    root = pathlib.Path(root)
    lines = {"train": [SOP_HEADER], "test": [SOP_HEADER]}
    for image_id, (split, class_id, super_class_id, rel, pixels) in enumerate(rows, start=1):
        write_jpeg(root / rel, pixels)
        lines[split].append(f"{image_id} {class_id} {super_class_id} {rel}")
    for split, split_lines in lines.items():
        _write_lines(root / f"Ebay_{split}.txt", split_lines)
    return root


def write_cub(root, rows) -> pathlib.Path:
    """CUB-200-2011: `CUB_200_2011/{images.txt, image_class_labels.txt, images/...}` under `root`.

    Args:
        rows: `(class_id, relative_path, pixels)`, class ids in 1..200 (the reader splits train
            1..100 / test 101..200), paths relative to `images/`; image ids from 1 in row order.
    """
    root = pathlib.Path(root)
    base = root / "CUB_200_2011"
    images, labels = [], []
    for image_id, (class_id, rel, pixels) in enumerate(rows, start=1):
        write_jpeg(base / "images" / rel, pixels)
        images.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {class_id}")
    _write_lines(base / "images.txt", images)
    _write_lines(base / "image_class_labels.txt", labels)
    return root


def write_inaturalist(root, rows) -> pathlib.Path:
    """iNaturalist-2018 (Smooth-AP split): `Inat_dataset_splits/Inaturalist_{train,test}_set1.txt`
    listing `train_val2018/<Kingdom>/<category>/<name>.jpg` paths, and the images, under `root`.

    Args:
        rows: `(split, relative_path, pixels)`, split "train" or "test". Both lists are written.
    """
    root = pathlib.Path(root)
    lines = {"train": [], "test": []}
    for split, rel, pixels in rows:
        write_jpeg(root / rel, pixels)
        lines[split].append(rel)
    for split, split_lines in lines.items():
        _write_lines(root / "Inat_dataset_splits" / f"Inaturalist_{split}_set1.txt", split_lines)
    return root


def write_inshop(root, rows, *, count=None) -> pathlib.Path:
    """In-Shop: `list_eval_partition.txt` and the images (`img/...`) under `root`.

    Args:
        rows: `(relative_path, item_id, status, pixels)`, status "train", "query" or "gallery".
        count: the image count announced on line 1 (default: the number of rows).
    """
    root = pathlib.Path(root)
    entries = []
    for rel, item_id, status, pixels in rows:
        write_jpeg(root / rel, pixels)
        entries.append(f"{rel} {item_id} {status}")
    count = len(entries) if count is None else count
    _write_lines(root / "list_eval_partition.txt", [str(count), INSHOP_HEADER, *entries])
    return root
