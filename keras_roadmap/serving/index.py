"""The faiss index of a collection and its id map (row i of the index = image id i)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from keras_roadmap.serving.embedder import ServingError, file_sha256

METRIC = "cosine (inner product of L2-normalised embeddings)"


def build_index(embeddings: np.ndarray, index_type: str = "flat"):
    """A faiss inner-product index over ``embeddings`` (float32 ``(N, D)``, unit rows).

    The one place the serving index is built: inner product of L2-normalised embeddings is the
    cosine similarity ROADMAP trains for. ``index_type``: ``"flat"`` (exact, linear in N,
    default), ``"ivf"`` or ``"hnsw"`` (approximate, for galleries past a million; default
    settings of :func:`keras_roadmap.indexing.build_index`, IVF cells trained on a sample).
    """
    from keras_roadmap import indexing

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or not len(embeddings):
        raise ServingError(f"need a non-empty (N, D) array of embeddings, got shape {embeddings.shape}")
    if index_type not in indexing.INDEX_TYPES:
        raise ServingError(f"index type must be one of {', '.join(indexing.INDEX_TYPES)}, got {index_type!r}")
    try:
        return indexing.build_index(embeddings, index_type)
    except ValueError as exc:
        raise ServingError(str(exc)) from exc


def write_index(index, path: str) -> None:
    """Write ``index`` and its settings sidecar (``path + ".json"``), each renamed into place."""
    from keras_roadmap import indexing

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    indexing.save_index(index, path)


def read_index(path: str):
    """Read an index written by :func:`write_index`, with its search settings (nprobe, ef_search)."""
    from keras_roadmap import indexing

    if not os.path.isfile(path):
        raise ServingError(f"faiss index not found: {path}")
    try:
        return indexing.load_index(path)
    except RuntimeError as exc:
        raise ServingError(f"{path} is not a faiss index ({str(exc).splitlines()[0]})") from exc
    except ValueError as exc:
        raise ServingError(str(exc)) from exc


def label_of(rel_path: str) -> str | None:
    """The class of an image in a class-folder layout: its parent folder's name (None at the root)."""
    parent = os.path.basename(os.path.dirname(rel_path))
    return parent or None


def write_id_map(path: str, image_root: str, rel_paths, model_path: str, dim: int) -> None:
    """Write the id -> image map as JSON (paths relative to ``image_root``, the model's SHA-256)
    or CSV (``id,path`` with absolute paths), by extension."""
    root = os.path.abspath(image_root)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.lower().endswith(".csv"):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "path"])
            for i, rel in enumerate(rel_paths):
                writer.writerow([i, os.path.join(root, rel)])
        return
    payload = {
        "image_root": root,
        "model": os.path.abspath(model_path),
        "model_sha256": file_sha256(model_path),
        "metric": METRIC,
        "dim": dim,
        "ids": [{"id": i, "path": rel} for i, rel in enumerate(rel_paths)],
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)


def read_id_map(path: str) -> tuple[list[str], str | None, str | None]:
    """``(absolute image paths by id, image root or None, model sha256 or None)``."""
    if not os.path.isfile(path):
        raise ServingError(f"id map not found: {path}")
    try:
        if path.lower().endswith(".csv"):
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            return [row["path"] for row in sorted(rows, key=lambda r: int(r["id"]))], None, None
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
        root = payload["image_root"]
        ids = sorted(payload["ids"], key=lambda entry: entry["id"])
        return [os.path.join(root, entry["path"]) for entry in ids], root, payload.get("model_sha256")
    except (KeyError, ValueError, TypeError) as exc:
        raise ServingError(f"{path} is not an id map written by `keras-roadmap index` ({exc})") from exc
