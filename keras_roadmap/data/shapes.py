"""Colour shapes: a tiny unseen-class retrieval set generated in numpy (no files, no fonts).

Each class is a random arrangement of a few filled rectangles (bars and blocks on the image);
each image draws its class's arrangement in one random colour, shifted by a few pixels, on a
white background shared by every image. The colour changes from image to image within a class
(the "style"), the arrangement is what a class is. A network initialised at random sees the
white background first: its embeddings of any two images are nearly the same direction (mean
pairwise cosine above 0.95 for ``tiny_cnn``), the starting point where ROADMAP's calibration
term can keep a from-scratch model collapsed (see ``keras_roadmap.collapse``).
"""

from __future__ import annotations

import numpy as np


def build_shapes_dataset(num_classes=200, per_class=7, size=32, rectangles=3, max_shift=2, seed=0):
    """``(images, labels)``: ``(num_classes * per_class, size, size, 3)`` float32 in [0, 1]
    (white background = 1) and ``(N,)`` int64 labels in ``[0, num_classes)``, class-sorted.

    Args:
        num_classes: number of arrangements (classes), >= 2.
        per_class: images per class, >= 2.
        size: image side in pixels, >= 8.
        rectangles: filled rectangles per arrangement, >= 1.
        max_shift: largest shift of an image's arrangement, in pixels per axis.
        seed: the arrangements, colours and shifts all follow from it.
    """
    for name, value, low in (
        ("num_classes", num_classes, 2),
        ("per_class", per_class, 2),
        ("size", size, 8),
        ("rectangles", rectangles, 1),
    ):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if int(max_shift) != max_shift or not 0 <= max_shift < size // 4:
        raise ValueError(f"max_shift must be an integer in [0, size // 4), got {max_shift!r}.")
    rng = np.random.default_rng(seed)
    margin = int(max_shift)
    masks = np.zeros((num_classes, size, size), bool)
    for c in range(num_classes):
        for _ in range(rectangles):
            h, w = rng.integers(2, size // 2, size=2)
            top = rng.integers(margin, size - margin - h + 1)
            left = rng.integers(margin, size - margin - w + 1)
            masks[c, top : top + h, left : left + w] = True
    n = num_classes * per_class
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    # Saturated-ish colours, none close to the white background.
    colours = rng.uniform(0.0, 0.8, size=(n, 3)).astype(np.float32)
    shifts = rng.integers(-margin, margin + 1, size=(n, 2))
    images = np.ones((n, size, size, 3), np.float32)
    for i in range(n):
        mask = np.roll(masks[labels[i]], tuple(shifts[i]), axis=(0, 1))
        images[i][mask] = colours[i]
    return images, labels
