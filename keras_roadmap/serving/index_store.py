"""An index folder that lives with its gallery: build it once, then add and remove images.

The folder (``IDX``) holds:

* ``manifest.json``: the ids, paths, labels and SHA-256 of every image, the faiss index settings,
  and the embedder's serving contract (preprocessing, dimension) with the file's SHA-256;
* ``index-<generation>.faiss``: a ``faiss.IndexIDMap2`` around the flat / IVF / HNSW index
  (:func:`keras_roadmap.indexing.build_index`), so an id stays the same image across updates;
* ``embedder-<sha12>.onnx``: a copy of the ONNX embedder it was built with, so ``search`` and
  ``serve`` need only ``IDX``.

Every update writes new files under new names and then replaces ``manifest.json`` (temporary name,
then rename): a reader, or a writer killed at any moment, sees the old index or the new one, never
a mix. Writers take a lock on ``IDX/.lock``, so two updates at once queue instead of losing one.
Ids are never reused: an image added after a removal gets a new id.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence

import numpy as np

from keras_roadmap import atomic
from keras_roadmap.serving.embedder import OnnxEmbedder, ServingError, decode_rgb, file_sha256, read_file
from keras_roadmap.serving.gallery import Gallery, read_gallery

MANIFEST = "manifest.json"
FORMAT = "keras-roadmap-index"
FORMAT_VERSION = 1
METRIC = "cosine (inner product of L2-normalised embeddings)"
#: Test-only stall point (see keras_roadmap.atomic) inside the write of the new manifest.
STALL_POINT = "index_manifest"
# Files decoded at once while embedding: bounds memory on big galleries.
_DECODE_CHUNK = 256


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def embed_files(embedder: OnnxEmbedder, paths: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, list[str]]:
    """Embeddings (float32 ``(N, D)``, unit rows) and the SHA-256 of each file, decoding
    ``_DECODE_CHUNK`` files at a time. Raises ServingError naming the first bad file."""
    out = np.empty((len(paths), embedder.dim), dtype=np.float32)
    hashes: list[str] = []
    for start in range(0, len(paths), _DECODE_CHUNK):
        images = []
        for path in paths[start : start + _DECODE_CHUNK]:
            data = read_file(path)
            hashes.append(_sha256_bytes(data))
            images.append(decode_rgb(data, path))
        out[start : start + len(images)] = embedder.embed_arrays(images, batch_size=batch_size)
    return out, hashes


def _contract_difference(stored: dict, found: dict) -> str | None:
    """What differs between two serving contracts for search purposes (None: compatible)."""
    if int(stored.get("output_dim") or -1) != int(found.get("output_dim") or -1):
        return f"outputs {found.get('output_dim')}-d embeddings but the index holds {stored.get('output_dim')}-d ones"
    a, b = stored.get("preprocessing") or {}, found.get("preprocessing") or {}
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"preprocesses differently ({key} {b.get(key)!r}, the index's embedder {a.get(key)!r})"
    return None


@contextlib.contextmanager
def _writer_lock(folder: str):
    """Serialise writers of one index folder (POSIX flock; a no-op where fcntl is missing)."""
    os.makedirs(folder, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(os.path.join(folder, ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _not_an_index(folder: str) -> ServingError:
    return ServingError(
        f"--index {folder}: no keras-roadmap index there (no {MANIFEST}); build one with "
        "`keras-roadmap index build --model EMBEDDER --images GALLERY --out FOLDER`"
    )


def read_manifest(folder: str) -> dict:
    """The manifest of index folder ``folder``. Raises ServingError (missing, corrupt, other format)."""
    if os.path.isfile(folder):
        raise ServingError(
            f"--index {folder} is a file; give the folder written by `keras-roadmap index build` "
            "(a .faiss file from the old `keras-roadmap index` needs --ids and --model too)"
        )
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise _not_an_index(folder)
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
        if int(manifest["format_version"]) > FORMAT_VERSION:
            raise ValueError(f"format version {manifest['format_version']} is newer than this keras-roadmap reads")
        for key in ("generation", "faiss_file", "index_params", "embedder", "entries", "next_id", "gallery"):
            manifest[key]  # noqa: B018 - presence check
        for entry in manifest["entries"]:
            entry["id"], entry["path"]  # noqa: B018
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ServingError(f"{path} is damaged ({exc}); rebuild the index with `keras-roadmap index build`") from exc
    return manifest


class IndexStore:
    """An opened index folder: the faiss index, the manifest and the embedder used to query it.

    Use :meth:`open` to read one and :func:`build`, :func:`add_files`, :func:`remove_entries`
    to write one.

    Attributes:
        folder: the index folder.
        manifest: its parsed ``manifest.json`` (``entries``: ``[{"id", "path", "label", "sha256"}]``).
        index: the ``faiss.IndexIDMap2``.
        embedder: the :class:`OnnxEmbedder` (the index's own copy unless ``model`` was given).
    """

    def __init__(self, folder: str, manifest: dict, index, embedder: OnnxEmbedder | None):
        self.folder = folder
        self.manifest = manifest
        self.index = index
        self.embedder = embedder
        self.by_id: dict[int, dict] = {int(e["id"]): e for e in manifest["entries"]}

    @classmethod
    def open(cls, folder: str, model: str | None = None, threads: int = 2, load_embedder: bool = True) -> IndexStore:
        """Read ``folder`` and check that its parts belong together.

        Args:
            model: an ONNX embedder to query with instead of the index's copy; it must have the
                same dimension and preprocessing (a different file with the same contract warns).
            load_embedder: False to skip loading the embedder (e.g. only to list entries).

        Raises:
            ServingError: a missing or damaged file, or an incompatible ``model``.
        """
        import faiss

        from keras_roadmap import indexing

        manifest = read_manifest(folder)
        faiss_path = os.path.join(folder, manifest["faiss_file"])
        if not os.path.isfile(faiss_path):
            raise ServingError(f"{faiss_path} is missing; rebuild the index with `keras-roadmap index build`")
        try:
            index = faiss.read_index(faiss_path)
        except RuntimeError as exc:
            raise ServingError(
                f"{faiss_path} is damaged ({str(exc).splitlines()[-1][:120]}); rebuild the index "
                "with `keras-roadmap index build`"
            ) from exc
        ids = faiss.vector_to_array(index.id_map) if hasattr(index, "id_map") else None
        expected = [int(e["id"]) for e in manifest["entries"]]
        if ids is None or sorted(ids.tolist()) != sorted(expected):
            raise ServingError(
                f"{faiss_path} does not hold the {len(expected)} ids {MANIFEST} lists; rebuild the "
                "index with `keras-roadmap index build`"
            )
        indexing.apply_search_params(index, manifest["index_params"])
        embedder = cls._embedder(folder, manifest, model, threads) if load_embedder else None
        return cls(folder, manifest, index, embedder)

    @staticmethod
    def _embedder(folder: str, manifest: dict, model: str | None, threads: int) -> OnnxEmbedder:
        info = manifest["embedder"]
        own = os.path.join(folder, info["file"])
        if model is None:
            if not os.path.isfile(own):
                raise ServingError(f"{own} (the index's embedder) is missing; pass --model EMBEDDER.onnx or rebuild")
            if file_sha256(own) != info["sha256"]:
                raise ServingError(
                    f"{own} does not match the SHA-256 in {MANIFEST} (damaged); pass --model "
                    "EMBEDDER.onnx or rebuild the index"
                )
            return OnnxEmbedder(own, threads=threads)
        embedder = OnnxEmbedder(model, threads=threads)
        problem = _contract_difference(info["contract"], embedder.contract)
        if problem:
            raise ServingError(
                f"--model {model} {problem}; the index {folder} was built with {info['source']}: "
                "search without --model (the index keeps its embedder) or rebuild the index"
            )
        if file_sha256(model) != info["sha256"]:
            print(
                f"warning: --model {model} is not the file the index was built with ({info['source']}); scores "
                "only make sense if both give the same embeddings",
                file=sys.stderr,
            )
        return embedder

    # -- reading -----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def entries(self) -> list[dict]:
        return self.manifest["entries"]

    def search_embeddings(self, queries: np.ndarray, k: int) -> list[list[dict]]:
        """Top-``k`` hits per query row: ``[{"rank", "id", "path", "label", "score"}, ...]``
        (``k`` capped at the index size; the score is the cosine similarity)."""
        scores, ids = self.index.search(np.ascontiguousarray(queries, np.float32), min(int(k), self.size))
        hits = []
        for row_ids, row_scores in zip(ids, scores, strict=True):
            row = []
            for i, s in zip(row_ids, row_scores, strict=True):
                if i < 0:
                    continue
                entry = self.by_id[int(i)]
                row.append(
                    {
                        "rank": len(row) + 1,
                        "id": int(i),
                        "path": entry["path"],
                        "label": entry.get("label"),
                        "score": float(s),
                    }
                )
            hits.append(row)
        return hits

    def search_images(self, images: Sequence[np.ndarray], k: int) -> list[list[dict]]:
        """:meth:`search_embeddings` for uint8 ``(H, W, 3)`` images."""
        return self.search_embeddings(self.embedder.embed_arrays(list(images)), k)

    def search_files(self, paths: Sequence[str], k: int = 5) -> list[dict]:
        """``[{"query": path, "results": [...]}]`` for image files."""
        embeddings, _ = embed_files(self.embedder, list(paths))
        hits = self.search_embeddings(embeddings, k)
        return [{"query": q, "results": h} for q, h in zip(paths, hits, strict=True)]


# -- writing -----------------------------------------------------------------------------------


def _commit(folder: str, manifest: dict, index, embedder_src: str | None = None) -> None:
    """Write ``index`` and (for a build) the embedder under new names, then switch the manifest."""
    import faiss

    from keras_roadmap import indexing

    manifest["generation"] = int(manifest.get("generation", 0)) + 1
    manifest["faiss_file"] = f"index-{manifest['generation']}.faiss"
    manifest["index_params"] = indexing.index_params(index)
    with atomic.atomic_path(os.path.join(folder, manifest["faiss_file"])) as tmp:
        faiss.write_index(index, str(tmp))
    if embedder_src is not None:
        target = os.path.join(folder, manifest["embedder"]["file"])
        if not (os.path.isfile(target) and file_sha256(target) == manifest["embedder"]["sha256"]):
            with atomic.atomic_path(target) as tmp:
                shutil.copyfile(embedder_src, tmp)
    atomic.write_text(
        os.path.join(folder, MANIFEST), json.dumps(manifest, indent=1, ensure_ascii=False), stall=STALL_POINT
    )
    _clean(folder, manifest)


def _clean(folder: str, manifest: dict) -> None:
    """Remove what earlier generations (or writers killed mid-update) left behind."""
    keep = {manifest["faiss_file"], manifest["embedder"]["file"]}
    for name in os.listdir(folder):
        stale = (name.startswith("index-") and name.endswith(".faiss")) or (
            name.startswith("embedder-") and name.endswith(".onnx")
        )
        if stale and name not in keep:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
    atomic.remove_partials(folder)


def _generation_of(name: str) -> int:
    stem = name[len("index-") : -len(".faiss")] if name.startswith("index-") and name.endswith(".faiss") else ""
    return int(stem) if stem.isdigit() else 0


def build(
    folder: str, model: str, images: str, index_type: str = "flat", batch_size: int = 32, threads: int = 2
) -> IndexStore:
    """Embed every image of gallery ``images`` (a folder or CSV) with ONNX embedder ``model`` and
    write index folder ``folder`` (replacing an index already there, atomically).

    Raises:
        ServingError: bad gallery, model or settings; ``folder`` is a file or a non-empty folder
            that holds no index.
    """
    from keras_roadmap import indexing

    if index_type not in indexing.INDEX_TYPES:
        raise ServingError(f"index type must be one of {', '.join(indexing.INDEX_TYPES)}, got {index_type!r}")
    if os.path.isfile(folder):
        raise ServingError(f"--out {folder} is a file; give a folder for the index")
    ours = lambda name: name == ".lock" or name.startswith(".partial-")  # noqa: E731 - left by a failed build
    if (
        os.path.isdir(folder)
        and not os.path.isfile(os.path.join(folder, MANIFEST))
        and [name for name in os.listdir(folder) if not ours(name)]
    ):
        raise ServingError(
            f"--out {folder} is a non-empty folder that holds no keras-roadmap index; give a new "
            "or empty folder (nothing there was changed)"
        )
    if batch_size < 1:
        raise ServingError(f"--batch-size must be >= 1, got {batch_size}")
    gallery: Gallery = read_gallery(images)
    embedder = OnnxEmbedder(model, threads=threads)
    embeddings, hashes = embed_files(embedder, [item.path for item in gallery.items], batch_size)
    ids = np.arange(len(gallery.items), dtype=np.int64)
    try:
        index = indexing.build_index(embeddings, index_type, ids=ids)
    except ValueError as exc:
        raise ServingError(str(exc)) from exc
    sha = file_sha256(model)
    entries = []
    for i, (item, digest) in enumerate(zip(gallery.items, hashes, strict=True)):
        entry = {"id": i, "path": item.path, "label": item.label, "sha256": digest}
        if item.category is not None:
            entry["category"] = item.category
        entries.append(entry)
    with _writer_lock(folder):
        # From the file names, not the manifest: a damaged index can be rebuilt in place.
        previous = max([_generation_of(name) for name in os.listdir(folder)] + [0])
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "generation": previous,
            "faiss_file": None,
            "metric": METRIC,
            "index_params": {},
            "embedder": {
                "file": f"embedder-{sha[:12]}.onnx",
                "sha256": sha,
                "source": os.path.abspath(model),
                "contract": embedder.contract,
            },
            "gallery": {
                "source": gallery.source,
                "kind": gallery.kind,
                "root": gallery.root,
                "note": gallery.note,
                "skipped": [list(pair) for pair in gallery.skipped],
            },
            "next_id": len(entries),
            "entries": entries,
        }
        _commit(folder, manifest, index, embedder_src=model)
    return IndexStore(folder, manifest, index, embedder)


def _gallery_of(manifest: dict) -> Gallery:
    info = manifest["gallery"]
    return Gallery(info["source"], info["kind"], info["root"], [])  # items are not needed to label new files


def add_files(
    folder: str,
    files: Iterable[str],
    label: str | None = None,
    skip_existing: bool = False,
    batch_size: int = 32,
    threads: int = 2,
) -> tuple[list[dict], list[str]]:
    """Embed ``files`` with the index's embedder and add them under new ids.

    ``label``: the class of every added file (default: the build's rule, i.e. the parent folder's
    name for a file inside a folder gallery, else none).

    Returns:
        ``(added entries, messages about the files skipped)``.

    Raises:
        ServingError: a file already in the index (same path or same bytes) unless
            ``skip_existing``; a missing or undecodable file. Nothing is written then.
    """
    from keras_roadmap import indexing

    with _writer_lock(folder):
        store = IndexStore.open(folder, threads=threads)
        gallery = _gallery_of(store.manifest)
        by_path = {e["path"]: e for e in store.entries}
        by_hash = {e.get("sha256"): e for e in store.entries}
        paths = [os.path.abspath(p) for p in files]
        skipped, fresh, fresh_hashes = [], [], []
        for path in paths:
            data = read_file(path)
            digest = _sha256_bytes(data)
            decode_rgb(data, path)  # a bad file stops the update before anything is written
            known = by_path.get(path) or by_hash.get(digest)
            if known is None and (path in fresh or digest in fresh_hashes):
                known = {"id": "(given twice)", "path": path}
            if known is not None:
                same = "" if known["path"] == path else f" (same bytes as {known['path']})"
                message = f"{path} is already in the index as id {known['id']}{same}"
                if not skip_existing:
                    raise ServingError(
                        message + ": nothing was added; leave it out, pass --skip-existing, or "
                        "`keras-roadmap index remove` it first to replace it"
                    )
                skipped.append(message + "; skipped")
                continue
            fresh.append(path)
            fresh_hashes.append(digest)
        if not fresh:
            return [], skipped
        embeddings, hashes = embed_files(store.embedder, fresh, batch_size)
        start = int(store.manifest["next_id"])
        ids = np.arange(start, start + len(fresh), dtype=np.int64)
        store.index.add_with_ids(embeddings, ids)
        added = []
        for i, path, digest in zip(ids, fresh, hashes, strict=True):
            found_label, category = gallery.label_for(path)
            entry = {"id": int(i), "path": path, "label": label if label is not None else found_label, "sha256": digest}
            if category is not None and label is None:
                entry["category"] = category
            added.append(entry)
        manifest = dict(store.manifest, entries=store.entries + added, next_id=start + len(fresh))
        indexing.apply_search_params(store.index, store.manifest["index_params"])
        _commit(folder, manifest, store.index)
        return added, skipped


def resolve_entries(store: IndexStore, tokens: Iterable[str]) -> list[dict]:
    """The entries named by ``tokens``: an image path (absolute, relative to the working folder or
    to the gallery root) or an id. Raises ServingError listing every unknown token."""
    by_path = {e["path"]: e for e in store.entries}
    root = store.manifest["gallery"]["root"]
    found, unknown = [], []
    for token in tokens:
        entry = by_path.get(os.path.abspath(token)) or by_path.get(os.path.abspath(os.path.join(root, token)))
        if entry is None and token.strip().isdigit():
            entry = store.by_id.get(int(token))
        if entry is None:
            unknown.append(token)
        elif entry not in found:
            found.append(entry)
    if unknown:
        raise ServingError(
            f"not in the index {store.folder}: {', '.join(unknown)} (give an id or a path it holds; "
            "`keras-roadmap search --format json` shows both); nothing was removed"
        )
    return found


def _without(index, gone_ids: np.ndarray, params: dict):
    """``index`` (an IndexIDMap2) without the vectors of ``gone_ids``."""
    import faiss

    from keras_roadmap import indexing

    if params.get("index_type") == "flat":
        index.remove_ids(gone_ids)  # IndexFlat shifts its rows as the id map expects
    else:
        # IndexIDMap.remove_ids assumes the inner index renumbers like a flat one; IVF lists and the
        # HNSW graph do not (HNSW cannot remove at all), so refill a reset copy instead.
        inner = faiss.downcast_index(index.index)
        ivf = faiss.try_extract_index_ivf(inner)
        if ivf is not None:
            ivf.make_direct_map()
        vectors = inner.reconstruct_n(0, inner.ntotal)
        ids = faiss.vector_to_array(index.id_map)
        keep = ~np.isin(ids, gone_ids)
        fresh = faiss.clone_index(inner)
        fresh.reset()
        if ivf is not None:
            faiss.extract_index_ivf(fresh).make_direct_map(False)
        index = faiss.IndexIDMap2(fresh)
        index.add_with_ids(np.ascontiguousarray(vectors[keep]), ids[keep])
    indexing.apply_search_params(index, params)
    return index


def remove_entries(folder: str, tokens: Iterable[str], threads: int = 2) -> list[dict]:
    """Remove the images named by ``tokens`` (ids or paths, see :func:`resolve_entries`).

    A flat index drops the vectors in place; an IVF or HNSW one is refilled with the remaining
    vectors (same IVF cells, same HNSW settings), as faiss cannot remove from them behind an id map.
    Returns the removed entries.

    Raises:
        ServingError: an unknown id or path, or a removal that would empty the index.
    """
    with _writer_lock(folder):
        store = IndexStore.open(folder, threads=threads, load_embedder=False)
        gone = resolve_entries(store, tokens)
        if len(gone) == store.size:
            raise ServingError(
                f"removing all {store.size} images would leave {folder} empty; build a new index "
                "instead; nothing was removed"
            )
        gone_ids = np.array(sorted(int(e["id"]) for e in gone), dtype=np.int64)
        params = store.manifest["index_params"]
        index = _without(store.index, gone_ids, params)
        gone_set = set(gone_ids.tolist())
        manifest = dict(store.manifest, entries=[e for e in store.entries if int(e["id"]) not in gone_set])
        _commit(folder, manifest, index)
        return gone
