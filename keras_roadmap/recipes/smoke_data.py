"""Tiny synthetic datasets written in the real on-disk layout of SOP, CUB, iNaturalist, In-Shop.

Smoke runs and tests point the real readers (`keras_roadmap.data.load_*`) at these trees, so
the whole recipe (list files, image decoding, samplers, training, evaluation, export) runs
end to end in seconds. Each class gets its own colour and a stripe pattern (plus noise), so a
model can learn something in a couple of epochs; the numbers still mean nothing.

The trees are written by `keras_roadmap.data.layouts` (the one writer of each layout, shared
with the reader tests). Needs Pillow (imported when a tree is written): `pip install keras-roadmap[viz]`.
"""

from __future__ import annotations

import pathlib

import numpy as np

from keras_roadmap.data import layouts

# Per dataset: (super-categories, classes per super-category, images per class) for each split.
DEFAULT_SHAPE = {"supers": 3, "classes_per_super": 3, "images_per_class": 4}


def _class_image(class_index: int, image_index: int, size=(40, 32)) -> np.ndarray:
    """uint8 (H, W, 3): stripes whose period and orientation depend on the class, on a colour
    shared by several classes, with per-image brightness, phase and noise (so retrieval is
    learnable but not trivial at initialisation)."""
    rng = np.random.default_rng([class_index, image_index])
    width, height = size
    colour = np.random.default_rng(class_index % 3).integers(60, 196, 3)
    image = np.broadcast_to(colour, (height, width, 3)).astype(np.int16).copy()
    image += int(rng.integers(-40, 41))
    period = 3 + (class_index // 3) % 4
    axis = np.arange(width if class_index % 2 else height)
    stripes = ((axis + rng.integers(0, period)) // period) % 2 == 0
    if class_index % 2:
        image[:, stripes, :] += 50
    else:
        image[stripes, :, :] += 50
    image += rng.integers(-30, 31, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape(shape):
    merged = {**DEFAULT_SHAPE, **(shape or {})}
    for key, value in merged.items():
        if int(value) != value or value < 1:
            raise ValueError(f"smoke dataset `{key}` must be a positive int, got {value!r}.")
    return {k: int(v) for k, v in merged.items()}


def write_sop(root, shape=None) -> pathlib.Path:
    """`Ebay_train.txt` / `Ebay_test.txt` + `<category>_final/<class>_<k>.JPG` (disjoint classes)."""
    s = _shape(shape)
    cats = [f"smoke{c}_final" for c in range(s["supers"])]
    rows, class_id = [], 1
    for split in ("train", "test"):
        for super_index, cat in enumerate(cats):
            for _ in range(s["classes_per_super"]):
                for k in range(s["images_per_class"]):
                    rel = f"{cat}/{111000 + class_id}_{k}.JPG"
                    rows.append((split, class_id, super_index + 1, rel, _class_image(class_id, k)))
                class_id += 1
    return layouts.write_sop(root, rows)


def write_cub(root, shape=None) -> pathlib.Path:
    """`CUB_200_2011/{images.txt, image_class_labels.txt, images/NNN.Name/*.jpg}`; train classes
    start at 1 and test classes at 101 (the retrieval split)."""
    s = _shape(shape)
    classes = s["supers"] * s["classes_per_super"]
    rows = [
        (class_id, f"{class_id:03d}.Smoke_Bird_{class_id}/Smoke_Bird_{class_id}_{k:04d}.jpg", _class_image(class_id, k))
        for first in (1, 101)
        for class_id in range(first, first + classes)
        for k in range(s["images_per_class"])
    ]
    return layouts.write_cub(root, rows)


def write_inaturalist(root, shape=None) -> pathlib.Path:
    """`Inat_dataset_splits/Inaturalist_{train,test}_set1.txt` listing
    `train_val2018/<Kingdom>/<category id>/<hash>.jpg` (kingdoms = super-categories)."""
    s = _shape(shape)
    kingdoms = ["Plantae", "Insecta", "Aves", "Fungi", "Mammalia", "Reptilia"]
    if s["supers"] > len(kingdoms):
        kingdoms += [f"Kingdom{i}" for i in range(len(kingdoms), s["supers"])]
    rows, category = [], 1000
    for split in ("train", "test"):
        for kingdom in kingdoms[: s["supers"]]:
            for _ in range(s["classes_per_super"]):
                for k in range(s["images_per_class"]):
                    rel = f"train_val2018/{kingdom}/{category}/{category:05d}{k:027x}.jpg"
                    rows.append((split, rel, _class_image(category, k)))
                category += 1
    return layouts.write_inaturalist(root, rows)


def write_inshop(root, shape=None) -> pathlib.Path:
    """`list_eval_partition.txt` + `img/<GENDER>/<Category>/id_XXXXXXXX/NN_k_view.jpg`; train items
    are disjoint from query/gallery items, and each test item has one query image, the rest gallery."""
    s = _shape(shape)
    if s["images_per_class"] < 2:
        raise ValueError("In-Shop smoke data needs images_per_class >= 2 (one query + gallery images).")
    categories = ["WOMEN/Dresses", "MEN/Shirts_Polos", "WOMEN/Skirts", "MEN/Pants", "WOMEN/Tees_Tanks", "MEN/Denim"]
    if s["supers"] > len(categories):
        categories += [f"WOMEN/Smoke{i}" for i in range(len(categories), s["supers"])]
    rows, item = [], 1
    views = ["front", "side", "back", "full", "additional", "flat"]
    for split in ("train", "test"):
        for category in categories[: s["supers"]]:
            for _ in range(s["classes_per_super"]):
                item_id = f"id_{item:08d}"
                for k in range(s["images_per_class"]):
                    rel = f"img/{category}/{item_id}/{k + 1:02d}_{k + 1}_{views[k % len(views)]}.jpg"
                    status = "train" if split == "train" else ("query" if k == 0 else "gallery")
                    rows.append((rel, item_id, status, _class_image(item, k)))
                item += 1
    return layouts.write_inshop(root, rows)


WRITERS = {"sop": write_sop, "cub": write_cub, "inaturalist": write_inaturalist, "inshop": write_inshop}


def write_smoke_dataset(dataset: str, root, shape=None) -> pathlib.Path:
    """Write a tiny `dataset` tree under `root` (created) and return the root the reader takes.

    Args:
        dataset: "sop", "cub", "inaturalist" or "inshop".
        root: output folder.
        shape: optional dict overriding `DEFAULT_SHAPE` (supers, classes_per_super,
            images_per_class); every split gets supers x classes_per_super classes.
    """
    if dataset not in WRITERS:
        raise ValueError(f"No smoke dataset for {dataset!r}; choose one of {sorted(WRITERS)}.")
    return WRITERS[dataset](pathlib.Path(root), shape)
