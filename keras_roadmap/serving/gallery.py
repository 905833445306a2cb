"""The images an index is built over: an image folder or an open-metric-learning CSV, read by
:func:`keras_roadmap.data.custom.read_images` (the layout ``prepare`` and ``train custom`` read).

* A folder ``ROOT/<class>/<image>`` (or ``ROOT/<category>/<class>/<image>``: class
  ``<category>/<class>``); images directly in ``ROOT`` are indexed too, without a class.
* A CSV (``label, path, split, is_query, is_gallery``, optional ``category``): the rows with
  ``is_gallery`` set when it has any (a ``prepare`` split: the held-out gallery), else every row.
"""

from __future__ import annotations

import dataclasses
import os

from keras_roadmap.serving.embedder import ServingError

# read_images' reason for an image lying directly in the folder root.
_ROOT_FILE = "a file directly in the root"


@dataclasses.dataclass(frozen=True)
class GalleryItem:
    """One gallery image: its absolute path, its class (None when the layout gives none) and the
    class's category (None when there is none)."""

    path: str
    label: str | None = None
    category: str | None = None


@dataclasses.dataclass(frozen=True)
class Gallery:
    """``kind``: ``"folder"``, ``"folder+category"`` or ``"csv"``; ``root``: the folder relative
    paths resolve against (the folder, or the CSV's folder); ``skipped``: ``(path, reason)`` of
    every file not indexed; ``note``: how the rows were chosen (CSV)."""

    source: str
    kind: str
    root: str
    items: list[GalleryItem]
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    note: str = ""

    def label_for(self, path: str) -> tuple[str | None, str | None]:
        """``(class, category)`` a file added later gets by the rule of the build (``(None, None)``
        outside a folder gallery's root or directly in it)."""
        rel = os.path.relpath(os.path.abspath(path), self.root)
        parts = rel.split(os.sep)
        if not self.kind.startswith("folder") or rel.startswith(os.pardir) or len(parts) < 2:
            return None, None
        if self.kind == "folder+category":
            return (f"{parts[0]}/{parts[1]}", parts[0]) if len(parts) >= 3 else (None, None)
        return parts[0], None


def _is_image(path: str) -> bool:
    from keras_roadmap.data.custom import IMAGE_EXTENSIONS

    return path.lower().endswith(IMAGE_EXTENSIONS)


def read_gallery(path: str) -> Gallery:
    """Read gallery ``path`` (see module docstring); items keep read_images' order.

    Raises:
        ServingError: a missing path, a malformed folder or CSV, or no image at all (the message
            names the file, line or column).
    """
    from keras_roadmap.data.custom import read_images
    from keras_roadmap.errors import DatasetFormatError

    try:
        found = read_images(path)
    except DatasetFormatError as exc:
        raise ServingError(f"--images {exc}") from exc
    items = [GalleryItem(os.path.abspath(r.path), r.label, r.category) for r in found.records]
    skipped, note = list(found.skipped), ""
    if found.layout == "csv":
        root = os.path.dirname(found.source)
        if any(r.is_gallery for r in found.records):
            items = [GalleryItem(os.path.abspath(r.path), r.label, r.category) for r in found.records if r.is_gallery]
            note = f"the {len(items)} rows with is_gallery = 1 of {len(found.records)}"
    else:
        root = found.source
        loose = [p for p, reason in skipped if reason.startswith(_ROOT_FILE) and _is_image(p)]
        items = [GalleryItem(os.path.abspath(p)) for p in loose] + items
        skipped = [(p, reason) for p, reason in skipped if p not in loose]
    if not items:
        raise ServingError(f"--images {path}: no images found (read as {found.layout}; {len(skipped)} files skipped)")
    return Gallery(found.source, found.layout, root, items, skipped, note)
