"""Search a faiss index built by embed_and_index.py with one or more query images.

    python export/search.py --model model.onnx --index photos.faiss --ids photos.json \
        query1.jpg [query2.jpg | folder ...] [--k 5] [--json results.json]

Prints, per query, the top-k ids, image paths and cosine scores; ``--json`` also writes them as
``[{"query": path, "results": [{"rank", "id", "path", "score"}, ...]}, ...]``.

Imports onnxruntime, faiss, numpy and PIL only (no TensorFlow).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from onnx_embedder import OnnxEmbedder, ServingError, fail, file_sha256, list_images  # noqa: E402


def read_id_map(path: str):
    """Return (list of absolute image paths by id, model sha256 or None)."""
    if not os.path.isfile(path):
        raise ServingError(f"id map not found: {path}")
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return [row["path"] for row in sorted(rows, key=lambda r: int(r["id"]))], None
    with open(path, encoding="utf-8") as handle:
        payload = json.load(handle)
    root = payload["image_root"]
    ids = sorted(payload["ids"], key=lambda entry: entry["id"])
    return [os.path.join(root, entry["path"]) for entry in ids], payload.get("model_sha256")


def expand_queries(queries):
    paths = []
    for query in queries:
        if os.path.isdir(query):
            paths.extend(os.path.join(query, p) for p in list_images(query))
        else:
            paths.append(query)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", nargs="+", help="query image files or folders")
    parser.add_argument("--model", required=True, help="the ONNX embedder the index was built with")
    parser.add_argument("--index", required=True, help="faiss index from embed_and_index.py")
    parser.add_argument("--ids", required=True, help="id map from embed_and_index.py")
    parser.add_argument("--k", type=int, default=5, help="neighbours per query (default 5)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    if args.k < 1:
        fail(f"--k must be >= 1, got {args.k}")

    import faiss

    try:
        if not os.path.isfile(args.index):
            raise ServingError(f"faiss index not found: {args.index}")
        paths_by_id, model_sha = read_id_map(args.ids)
        embedder = OnnxEmbedder(args.model, threads=args.threads)
        if model_sha is not None and model_sha != file_sha256(args.model):
            print(
                "warning: the index was built with a different ONNX file than --model; scores are "
                "only meaningful if both produce the same embeddings",
                file=sys.stderr,
            )
        index = faiss.read_index(args.index)
        if index.d != embedder.dim:
            raise ServingError(
                f"the index holds {index.d}-d vectors but the model outputs {embedder.dim}-d "
                "embeddings; use the model the index was built with"
            )
        if index.ntotal != len(paths_by_id):
            raise ServingError(
                f"the index holds {index.ntotal} vectors but the id map {len(paths_by_id)} entries; "
                "they come from different runs of embed_and_index.py"
            )
        query_paths = expand_queries(args.queries)
        queries = embedder.embed_files(query_paths)
    except ServingError as exc:
        fail(str(exc))

    k = min(args.k, index.ntotal)
    scores, ids = index.search(queries, k)
    results = []
    for query, row_ids, row_scores in zip(query_paths, ids, scores):
        hits = [
            {"rank": r + 1, "id": int(i), "path": paths_by_id[i], "score": float(s)}
            for r, (i, s) in enumerate(zip(row_ids, row_scores))
            if i >= 0
        ]
        results.append({"query": query, "results": hits})
        print(f"query: {query}")
        for hit in hits:
            print(f"  {hit['rank']:>3}. score {hit['score']:.4f}  id {hit['id']:>6}  {hit['path']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
