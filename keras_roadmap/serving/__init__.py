"""Serving an exported embedder without TensorFlow: onnxruntime + faiss + numpy + Pillow.

    keras-roadmap index  --model embedder.onnx --images photos/ --index photos.faiss --ids photos.json
    keras-roadmap search --model embedder.onnx --index photos.faiss --ids photos.json query.jpg --k 5

From Python: :class:`OnnxEmbedder` (images -> (N, D) float32 unit rows), :func:`build_index`
(the exact cosine faiss index), :class:`Collection` (index + id map + embedder; ``search_files``).
Installed with ``pip install "keras-roadmap[export]"``.
"""

from keras_roadmap.serving.embedder import CONTRACT_KEY, OnnxEmbedder, ServingError, list_images, load_rgb
from keras_roadmap.serving.index import build_index, label_of, read_id_map, read_index, write_id_map, write_index
from keras_roadmap.serving.search import Collection, expand_queries, format_results

__all__ = [
    "CONTRACT_KEY", "Collection", "OnnxEmbedder", "ServingError", "build_index", "expand_queries",
    "format_results", "label_of", "list_images", "load_rgb", "read_id_map", "read_index",
    "write_id_map", "write_index",
]
