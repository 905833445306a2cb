"""``keras-roadmap index`` and ``keras-roadmap search`` (argument parsing lives in keras_roadmap.cli)."""

from __future__ import annotations

import json
import os
import time

from keras_roadmap.serving.embedder import OnnxEmbedder, ServingError, list_images
from keras_roadmap.serving.index import build_index, write_id_map, write_index
from keras_roadmap.serving.search import Collection, expand_queries, format_results


def run_index(args) -> int:
    """Embed ``args.images`` with ``args.model``; write ``args.index`` and ``args.ids``."""
    if not args.ids.lower().endswith((".json", ".csv")):
        raise ServingError(f"--ids must end in .json or .csv, got {args.ids}")
    if args.batch_size < 1:
        raise ServingError(f"--batch-size must be >= 1, got {args.batch_size}")
    started = time.perf_counter()
    embedder = OnnxEmbedder(args.model, threads=args.threads)
    rel_paths = list_images(args.images)
    embeddings = embedder.embed_files([os.path.join(args.images, p) for p in rel_paths], batch_size=args.batch_size)
    index = build_index(embeddings, args.index_type)
    write_index(index, args.index)
    write_id_map(args.ids, args.images, rel_paths, args.model, embedder.dim)
    print(
        f"indexed {index.ntotal} images (dim {embedder.dim}, {args.index_type} index) in "
        f"{time.perf_counter() - started:.1f} s -> {args.index}, {args.ids}"
    )
    return 0


def run_search(args) -> int:
    """Print (and with ``args.json`` write) the top-``args.k`` neighbours of each query."""
    if args.k < 1:
        raise ServingError(f"--k must be >= 1, got {args.k}")
    collection = Collection(args.model, args.index, args.ids, threads=args.threads)
    results = collection.search_files(expand_queries(args.queries), k=args.k)
    print(format_results(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    return 0
