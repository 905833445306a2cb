"""Query a served collection: embed query images, search the index, name the neighbours."""

from __future__ import annotations

import os
import sys

import numpy as np

from keras_roadmap.serving.embedder import OnnxEmbedder, ServingError, file_sha256, list_images
from keras_roadmap.serving.index import label_of, read_id_map, read_index


def expand_queries(queries) -> list[str]:
    """Query files, with each folder replaced by the images under it (sorted)."""
    paths = []
    for query in queries:
        if os.path.isdir(query):
            paths.extend(os.path.join(query, p) for p in list_images(query))
        else:
            paths.append(query)
    return paths


class Collection:
    """An index + id map + the embedder that built it, checked for consistency.

    Raises:
        ServingError: missing files, index/model dimension or index/id-map size mismatch.
    """

    def __init__(self, model: str, index: str, ids: str, threads: int = 2):
        self.index = read_index(index)
        self.paths, self.root, model_sha = read_id_map(ids)
        self.embedder = OnnxEmbedder(model, threads=threads)
        if model_sha is not None and model_sha != file_sha256(model):
            print(
                "warning: the index was built with a different ONNX file than --model; scores are "
                "only meaningful if both produce the same embeddings",
                file=sys.stderr,
            )
        if self.index.d != self.embedder.dim:
            raise ServingError(
                f"the index holds {self.index.d}-d vectors but the model outputs {self.embedder.dim}-d "
                "embeddings; use the model the index was built with"
            )
        if self.index.ntotal != len(self.paths):
            raise ServingError(
                f"the index holds {self.index.ntotal} vectors but the id map {len(self.paths)} entries; "
                "they come from different runs of `keras-roadmap index`"
            )

    def label(self, path: str):
        rel = os.path.relpath(path, self.root) if self.root else path
        return label_of(rel)

    def search_embeddings(self, queries: np.ndarray, k: int) -> list[list[dict]]:
        """Top-``k`` hits per query row: ``[{"rank", "id", "path", "label", "score"}, ...]``."""
        scores, ids = self.index.search(np.ascontiguousarray(queries, np.float32), min(k, self.index.ntotal))
        return [
            [
                {
                    "rank": r + 1,
                    "id": int(i),
                    "path": self.paths[i],
                    "label": self.label(self.paths[i]),
                    "score": float(s),
                }
                for r, (i, s) in enumerate(zip(row_ids, row_scores, strict=False))
                if i >= 0
            ]
            for row_ids, row_scores in zip(ids, scores, strict=False)
        ]

    def search_files(self, query_paths, k: int = 5) -> list[dict]:
        """``[{"query": path, "results": [...]}]`` for image files (see :meth:`search_embeddings`)."""
        hits = self.search_embeddings(self.embedder.embed_files(query_paths), k)
        return [{"query": q, "results": h} for q, h in zip(query_paths, hits, strict=False)]


def format_results(results) -> str:
    lines = []
    for entry in results:
        lines.append(f"query: {entry['query']}")
        for hit in entry["results"]:
            label = "" if hit["label"] is None else f"  class {hit['label']}"
            lines.append(f"  {hit['rank']:>3}. score {hit['score']:.4f}{label}  id {hit['id']:>6}  {hit['path']}")
    return "\n".join(lines)
