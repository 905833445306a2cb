"""The images an index is built over: a class-folder tree or an open-metric-learning CSV."""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

from keras_roadmap.serving.embedder import ServingError, list_images
from keras_roadmap.serving.index import label_of


@dataclasses.dataclass(frozen=True)
class GalleryItem:
    """One gallery image: its absolute path, its class (None when the layout gives none) and its
    category (the first folder level of ``ROOT/<category>/<class>/<image>``, or a CSV column)."""

    path: str
    label: Optional[str] = None
    category: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Gallery:
    """``kind`` is ``"folder"`` or ``"csv"``; ``root`` is the folder relative paths resolve
    against (the folder itself, or the CSV's folder); ``items`` are sorted by path."""

    source: str
    kind: str
    root: str
    items: List[GalleryItem]

    def label_for(self, path: str) -> Optional[str]:
        """The class a file added later gets by the rule the build used (None outside ``root``)."""
        rel = os.path.relpath(os.path.abspath(path), self.root)
        if self.kind != "folder" or rel.startswith(os.pardir):
            return None
        return label_of(rel)


def read_gallery(path: str) -> Gallery:
    """Read ``path``: a folder of images (searched recursively; the class of an image is its
    parent folder's name) or a ``.csv`` in the open-metric-learning layout.

    Raises:
        ServingError: missing path, no images, or a malformed CSV (the message names the file).
    """
    source = os.path.abspath(path)
    if os.path.isdir(source):
        rel_paths = list_images(source)
        items = [GalleryItem(os.path.join(source, rel), label_of(rel)) for rel in rel_paths]
        return Gallery(source, "folder", source, items)
    if source.lower().endswith(".csv"):
        raise ServingError(f"--images {path}: CSV galleries need keras_roadmap.data.custom (not in this build); "
                           "pass a folder of images")
    if os.path.exists(source):
        raise ServingError(f"--images {path} is neither a folder of images nor a .csv file")
    raise ServingError(f"--images {path}: no such folder or file")
