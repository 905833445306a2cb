"""The serving subcommands: `index` (old single-file form and `index build|add|remove`), `search`, `serve`
(argument parsing lives in keras_roadmap.cli)."""

from __future__ import annotations

import json
import os
import sys
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
    print(json.dumps(results, indent=1) if getattr(args, "format", "table") == "json" else format_results(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    return 0


# -- the index folder: `index build|add|remove`, `search --index IDX`, `serve` ------------------


def run_index_build(args) -> int:
    """``keras-roadmap index build``: embed a gallery into a new index folder."""
    from keras_roadmap.serving import index_store

    started = time.perf_counter()
    store = index_store.build(
        args.out, args.model, args.images, index_type=args.index_type, batch_size=args.batch_size, threads=args.threads
    )
    labels = {e["label"] for e in store.entries if e.get("label") is not None}
    gallery = store.manifest["gallery"]
    if gallery["note"]:
        print(f"{args.images}: indexing {gallery['note']}")
    for path, reason in gallery["skipped"][:10]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if len(gallery["skipped"]) > 10:
        print(
            f"skipped {len(gallery['skipped']) - 10} more files (all listed in {args.out}/manifest.json)",
            file=sys.stderr,
        )
    print(
        f"indexed {store.size} images ({len(labels)} class{'es' if len(labels) != 1 else ''}, "
        f"dim {store.dim}, {args.index_type} index) in "
        f"{time.perf_counter() - started:.1f} s -> {args.out}"
    )
    return 0


def run_index_add(args) -> int:
    """``keras-roadmap index add``: add image files (or the images under folders)."""
    from keras_roadmap.serving import index_store

    if args.batch_size < 1:
        raise ServingError(f"--batch-size must be >= 1, got {args.batch_size}")
    added, skipped = index_store.add_files(
        args.index,
        expand_queries(args.files),
        label=args.label,
        skip_existing=args.skip_existing,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    for message in skipped:
        print(message)
    for entry in added:
        label = "" if entry["label"] is None else f" (class {entry['label']})"
        print(f"added id {entry['id']}: {entry['path']}{label}")
    print(f"{len(added)} added, {len(skipped)} skipped -> {args.index}")
    return 0


def run_index_remove(args) -> int:
    """``keras-roadmap index remove``: remove images by id or path."""
    from keras_roadmap.serving import index_store

    gone = index_store.remove_entries(args.index, args.entries, threads=args.threads)
    for entry in gone:
        print(f"removed id {entry['id']}: {entry['path']}")
    print(f"{len(gone)} removed -> {args.index}")
    return 0


def run_search_index(args) -> int:
    """``keras-roadmap search --index IDX``: the index folder's embedder unless --model is given."""
    from keras_roadmap.serving import index_store

    if args.k < 1:
        raise ServingError(f"--k must be >= 1, got {args.k}")
    store = index_store.IndexStore.open(args.index, model=args.model, threads=args.threads)
    results = store.search_files(expand_queries(args.queries), k=args.k)
    text = json.dumps(results, indent=1, ensure_ascii=False)
    print(text if args.format == "json" else format_results(results))
    if args.json:
        from keras_roadmap import atomic

        atomic.write_text(args.json, text)
    return 0


def run_serve(args) -> int:
    """``keras-roadmap serve``: the HTTP server (FastAPI + uvicorn, the ``serve`` extra)."""
    try:
        from keras_roadmap.serving import http
    except ImportError as exc:
        raise ServingError(
            f'serve needs FastAPI and uvicorn ({exc.name} is missing): pip install "keras-roadmap[serve]"'
        ) from exc
    return http.serve(
        args.index, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, threads=args.threads
    )
