"""Serving an exported embedder without TensorFlow: onnxruntime + faiss + numpy + Pillow.

    keras-roadmap index build --model embedder.onnx --images photos/ --out photos.idx
    keras-roadmap index add --index photos.idx new.jpg
    keras-roadmap index remove --index photos.idx new.jpg
    keras-roadmap search --index photos.idx query.jpg --k 5
    keras-roadmap serve --index photos.idx --port 8000      # the [serve] extra: FastAPI + uvicorn

From Python: :class:`OnnxEmbedder` (images -> (N, D) float32 unit rows), :class:`IndexStore`
(an index folder: :meth:`IndexStore.open`, :func:`build_store`, :func:`add_files`,
:func:`remove_entries`), and the single-file form of the old ``keras-roadmap index``:
:func:`build_index` (the exact cosine faiss index), :class:`Collection` (index + id map + embedder).
``keras_roadmap.serving.http.create_app`` is the ASGI app of ``serve``.
Installed with ``pip install "keras-roadmap[export]"`` (``[serve]`` for the HTTP server).
"""

from keras_roadmap.serving.embedder import CONTRACT_KEY, OnnxEmbedder, ServingError, list_images, load_rgb
from keras_roadmap.serving.index import build_index, label_of, read_id_map, read_index, write_id_map, write_index
from keras_roadmap.serving.index_store import IndexStore, add_files, remove_entries
from keras_roadmap.serving.index_store import build as build_store
from keras_roadmap.serving.search import Collection, expand_queries, format_results

__all__ = [
    "CONTRACT_KEY",
    "Collection",
    "IndexStore",
    "OnnxEmbedder",
    "ServingError",
    "add_files",
    "build_index",
    "build_store",
    "expand_queries",
    "format_results",
    "label_of",
    "list_images",
    "load_rgb",
    "read_id_map",
    "read_index",
    "remove_entries",
    "write_id_map",
    "write_index",
]
