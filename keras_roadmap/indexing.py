"""Search indexes for big galleries: exact (flat) or approximate (IVF, HNSW), with their settings.

An exact `IndexFlatIP` search costs O(N) per query; past a million vectors an approximate index
answers far faster for a small loss of recall (`benchmarks/index_tradeoff.py` measures it):

* "flat": `faiss.IndexFlatIP` (exact).
* "ivf": `faiss.IndexIVFFlat`: k-means cells (`nlist`, trained on a sample of `train_size`
  vectors), a query scans the `nprobe` nearest cells.
* "hnsw": `faiss.IndexHNSWFlat`: a navigable graph (`hnsw_m` links per node, built with
  `ef_construction`), searched with a beam of `ef_search`; no training.

The settings live with the index: `index_params(index)` reads them back and `save_index`
writes them to a JSON sidecar (`<path>.json`) that `load_index` applies again (faiss does not
keep every search-time setting in the file). Every type scores by inner product by default
(`metric="l2"`: squared Euclidean), as `retrieval_metrics` does; pass the index to
`retrieval_metrics(..., index=...)` to measure what the approximation costs.
"""

import json
import math
import os
import weakref

import numpy as np

from keras_roadmap.evaluation import checks

INDEX_TYPES = ("flat", "ivf", "hnsw")
SIDECAR_SUFFIX = ".json"
# faiss warns below 39 training vectors per cell; 64 gives stabler cells at little cost.
_TRAIN_PER_CELL = 64


# Build-time settings faiss does not keep (train_size, seed); faiss objects refuse new attributes.
_PARAMS = weakref.WeakKeyDictionary()


def default_nlist(n: int) -> int:
    """IVF cells for `n` vectors: 2 sqrt(n) (2,000 for a million), at most n / 39."""
    return max(1, min(int(2 * math.sqrt(n)), n // 39))


def build_index(
    vectors,
    index_type: str = "flat",
    *,
    metric: str = "inner_product",
    nlist: int | None = None,
    nprobe: int | None = None,
    train_size: int | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 128,
    seed: int = 0,
    ids=None,
):
    """A faiss index holding `vectors` (row i gets id i, or `ids[i]`).

    Args:
        vectors: (N, D) float array (cast to float32; must be finite).
        index_type: "flat" (exact, default), "ivf" or "hnsw" (approximate).
        metric: "inner_product" (default) or "l2".
        nlist: IVF cells (default `default_nlist(N)`: 2 sqrt(N)).
        nprobe: IVF cells scanned per query (default max(1, nlist // 32)).
        train_size: vectors sampled (without replacement, `seed`) to train the IVF cells
            (default min(N, 64 * nlist)).
        hnsw_m: HNSW links per node (default 32).
        ef_construction: HNSW build beam (default 80).
        ef_search: HNSW search beam (default 128; faiss uses at least k).
        seed: sampling seed of the IVF training set.
        ids: optional (N,) integer ids; the index is then a `faiss.IndexIDMap2` around the index
            type, whose ids survive `remove_ids` and later `add_with_ids` (an updatable gallery).

    Returns:
        the faiss index; `index_params(index)` gives its settings.

    Raises:
        ValueError: unknown `index_type`/`metric`, bad vectors, a non-positive setting, or
            fewer vectors than IVF cells.
    """
    import faiss

    if index_type not in INDEX_TYPES:
        raise ValueError(f"`index_type` must be one of {INDEX_TYPES}; got {index_type!r}.")
    metric = checks.as_metric(metric)
    x = checks.as_embeddings(vectors, "vectors")
    n, dim = x.shape
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "inner_product" else faiss.METRIC_L2
    params = {"index_type": index_type, "metric": metric, "dim": int(dim)}
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim) if metric == "inner_product" else faiss.IndexFlatL2(dim)
    elif index_type == "ivf":
        nlist = checks.positive_int(nlist, "nlist") if nlist is not None else default_nlist(n)
        if nlist > n:
            raise ValueError(f"`nlist`={nlist} IVF cells need at least as many vectors; got {n}.")
        nprobe = checks.positive_int(nprobe, "nprobe") if nprobe is not None else max(1, nlist // 32)
        train_size = (
            checks.positive_int(train_size, "train_size") if train_size is not None else _TRAIN_PER_CELL * nlist
        )
        train_size = max(min(train_size, n), nlist)
        quantizer = faiss.IndexFlatIP(dim) if metric == "inner_product" else faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss_metric)  # faiss keeps a reference to quantizer
        sample = (
            np.random.default_rng(seed).choice(n, size=train_size, replace=False) if train_size < n else slice(None)
        )
        index.train(np.ascontiguousarray(x[sample]))
        index.nprobe = min(nprobe, nlist)
        params.update(nlist=int(nlist), nprobe=int(index.nprobe), train_size=int(train_size), seed=int(seed))
    else:
        hnsw_m = checks.positive_int(hnsw_m, "hnsw_m")
        ef_construction = checks.positive_int(ef_construction, "ef_construction")
        ef_search = checks.positive_int(ef_search, "ef_search")
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss_metric)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        params.update(hnsw_m=int(hnsw_m), ef_construction=int(ef_construction), ef_search=int(ef_search))
    if ids is None:
        index.add(x)
    else:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != n or len(np.unique(ids)) != n:
            raise ValueError(f"`ids` must hold {n} distinct integers (one per vector); got {len(ids)}.")
        index = faiss.IndexIDMap2(index)  # keeps a reference to the wrapped index
        index.add_with_ids(x, ids)
    _PARAMS[index] = params
    return index


def _unwrap(index):
    """The index inside a `faiss.IndexIDMap`/`IndexIDMap2` (else `index` itself)."""
    import faiss

    return faiss.downcast_index(index.index) if hasattr(index, "id_map") else index


def index_params(index) -> dict:
    """The settings of `index` as a JSON-able dict (`index_type`, `metric`, `dim`, `ntotal` and
    the type's own: `nlist`/`nprobe`/`train_size` or `hnsw_m`/`ef_construction`/`ef_search`),
    read from the index itself where faiss keeps them."""
    import faiss

    params = dict(_PARAMS.get(index, {}))
    params["ntotal"] = int(index.ntotal)
    params["dim"] = int(index.d)
    params["metric"] = "inner_product" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
    index = _unwrap(index)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        params.update(index_type="ivf", nlist=int(ivf.nlist), nprobe=int(ivf.nprobe))
    elif hasattr(index, "hnsw"):
        params.update(index_type="hnsw", hnsw_m=int(index.hnsw.nb_neighbors(1)), ef_search=int(index.hnsw.efSearch))
        params.setdefault("ef_construction", int(index.hnsw.efConstruction))
    else:
        params["index_type"] = "flat"
    return params


def save_index(index, path: str) -> str:
    """Write `index` to `path` (faiss format) and its settings to `path + ".json"`; returns the
    sidecar's path. Both are written to a temporary name first, then renamed."""
    import faiss

    sidecar = path + SIDECAR_SUFFIX
    faiss.write_index(index, path + ".tmp")
    os.replace(path + ".tmp", path)
    with open(sidecar + ".tmp", "w") as f:
        json.dump(index_params(index), f, indent=2, sort_keys=True)
    os.replace(sidecar + ".tmp", sidecar)
    return sidecar


def load_index(path: str):
    """Read an index written by `save_index` (or any faiss index file) and apply the search
    settings of its sidecar, if any (`nprobe`, `ef_search`).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the sidecar does not describe this index (type or size differ).
    """
    import faiss

    if not os.path.exists(path):
        raise FileNotFoundError(f"No index file at {path!r}.")
    index = faiss.read_index(path)
    sidecar = path + SIDECAR_SUFFIX
    if os.path.exists(sidecar):
        with open(sidecar) as f:
            params = json.load(f)
        found = index_params(index)
        if params.get("index_type") != found["index_type"] or params.get("ntotal") != found["ntotal"]:
            raise ValueError(
                f"{sidecar} describes a {params.get('index_type')} index of {params.get('ntotal')} vectors but "
                f"{path} holds a {found['index_type']} index of {found['ntotal']}: they do not belong together."
            )
        apply_search_params(index, params)
    return index


def apply_search_params(index, params: dict) -> None:
    """Set the search-time settings of `params` (`nprobe`, `ef_search`: what faiss does not keep
    in every file) on `index` (an `IndexIDMap` is seen through); `index_params` then reports them."""
    import faiss

    inner = _unwrap(index)
    if params.get("index_type") == "ivf":
        faiss.extract_index_ivf(inner).nprobe = int(params["nprobe"])
    elif params.get("index_type") == "hnsw":
        inner.hnsw.efSearch = int(params["ef_search"])
    _PARAMS[index] = dict(params)
