"""Embed a folder of images with an exported ONNX embedder and write a faiss index + id map.

    python export/embed_and_index.py --model model.onnx --images photos/ \
        --index photos.faiss --ids photos.json

Row i of the index is the image with id i in the id map (``.json``: paths relative to
``image_root`` plus the model's SHA-256; ``.csv``: ``id,path`` with absolute paths). The index
is an exact ``faiss.IndexFlatIP`` over L2-normalised embeddings, i.e. cosine similarity.

Imports onnxruntime, faiss, numpy and PIL only (no TensorFlow).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from onnx_embedder import OnnxEmbedder, ServingError, fail, file_sha256, list_images  # noqa: E402


def write_id_map(path: str, image_root: str, rel_paths, model_path: str, dim: int) -> None:
    """Write the id -> image map as JSON or CSV (by extension)."""
    root = os.path.abspath(image_root)
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
        "metric": "cosine (inner product of L2-normalised embeddings)",
        "dim": dim,
        "ids": [{"id": i, "path": rel} for i, rel in enumerate(rel_paths)],
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="ONNX embedder exported with preprocessing")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--index", required=True, help="output faiss index file")
    parser.add_argument("--ids", required=True, help="output id map (.json or .csv)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    if not args.ids.lower().endswith((".json", ".csv")):
        fail(f"--ids must end in .json or .csv, got {args.ids}")
    if args.batch_size < 1:
        fail(f"--batch-size must be >= 1, got {args.batch_size}")

    import faiss

    started = time.perf_counter()
    try:
        embedder = OnnxEmbedder(args.model, threads=args.threads)
        rel_paths = list_images(args.images)
        embeddings = embedder.embed_files(
            [os.path.join(args.images, p) for p in rel_paths], batch_size=args.batch_size
        )
    except ServingError as exc:
        fail(str(exc))
    index = faiss.IndexFlatIP(embedder.dim)
    index.add(embeddings)
    for target in (args.index, args.ids):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    faiss.write_index(index, args.index)
    write_id_map(args.ids, args.images, rel_paths, args.model, embedder.dim)
    print(
        f"indexed {index.ntotal} images (dim {embedder.dim}) in "
        f"{time.perf_counter() - started:.1f} s -> {args.index}, {args.ids}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
