"""Hierarchical retrieval metrics of HAPPIER (Ramzi et al., ECCV 2022): H-AP, ASI and NDCG, exact.

Labels are ``(N, L)`` integer ids, coarse to fine (column 0 the coarsest); a negative id is
"unknown at this level" (the item is its own singleton there). The **level** of a reference for a
query is the number of leading columns on which they agree (0..L), as in
:mod:`keras_roadmap.losses.hierarchical`.

Each query's full ranking is sorted exactly, by decreasing score, ties by reference index (a
stable sort: the tie policy of :func:`keras_roadmap.evaluation.retrieval_metrics`); in
same-source mode the query's own row is left out of its ranking.

* **H-AP** (official ``hap``): with ``rel_i = w(level_i) / n(level_i)`` (``w(l) = (l / (L - 1))
  ** alpha``, ``n(l)`` the number of items of that level; in same-source mode the query counts in
  ``n``, as in the official relevance table), ``H-AP = sum_i hrank_i / i / sum_i rel_i``,
  ``hrank_i = sum_{j <= i} min(rel_i, rel_j)``.
* **ASI** (official ``asi``, at R): ``R`` the number of items of level >= 1, ``ASI = (1 / R)
  sum_{i <= R} (1 / i) sum_l min(#items of level l in the top i, the same in the ideal top i)``.
* **NDCG** (official ``ndcg``): gain ``2 ** level - 1``, discount ``log2(1 + i)``, over the whole
  ranking.

A query with no item of level >= 1 is "lone": left out of the three means (the official code
gives NaN). Memory: one block of ``(queries, N)`` scores and the matching sorted levels.
"""

import numpy as np

from keras_roadmap.evaluation import checks

DEFAULT_BLOCK_BYTES = 64 * 2**20


def as_hierarchical_labels(y, n: int, name: str) -> np.ndarray:
    """``(n, L)`` int64 labels (a ``(n,)`` vector is one level); ValueError naming ``name`` otherwise."""
    array = np.asarray(y)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(
            f"`{name}` must have shape (N, levels) with coarse-to-fine integer ids; got shape {array.shape}."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer ids; got dtype {array.dtype}.")
    if array.shape[0] != n:
        raise ValueError(
            f"`{name}` has {array.shape[0]} rows but the embeddings have {n}: give one label row per embedding."
        )
    return array.astype(np.int64)


def _singletons(labels, first_id):
    rows = np.arange(labels.shape[0])[:, None]
    return np.where(labels < 0, -(first_id + rows) - 1, labels)


def common_depth(labels, ref_labels):
    """``(b, n)`` number of leading columns on which each row pair agrees."""
    return np.cumprod(labels[:, None, :] == ref_labels[None, :, :], axis=2).sum(axis=2)


def level_weights(num_levels, alpha):
    """``(L + 1,)`` ``w(l) = (l / (L - 1)) ** alpha`` (``l ** alpha`` for one level), ``w(0) = 0``."""
    levels = np.arange(num_levels + 1, dtype=np.float64)
    return (levels / (num_levels - 1 if num_levels > 1 else 1)) ** float(alpha) * (levels > 0)


def ranking_metrics(sorted_levels, relevance):
    """Per-query H-AP, ASI and NDCG of rankings given by their levels.

    Args:
        sorted_levels: ``(b, n)`` int levels (0..L) of each query's ranked items, best first.
        relevance: ``(b, L + 1)`` float relevance of an item of each level for each query.
    Returns:
        dict of ``(b,)`` float64 arrays ``hap``, ``asi``, ``ndcg`` (NaN for a lone query).
    """
    b, n = sorted_levels.shape
    num_levels = relevance.shape[1] - 1
    positions = np.arange(1, n + 1, dtype=np.float64)
    rel = np.take_along_axis(relevance, sorted_levels, axis=1)
    one_hot = sorted_levels[:, None, :] == np.arange(num_levels + 1)[None, :, None]  # (b, L + 1, n)
    seen = np.cumsum(one_hot, axis=2)
    # hrank_i = sum over levels l of min(rel_i, rel(l)) * #items of level l ranked at or before i
    hrank = (np.minimum(rel[:, None, :], relevance[:, :, None]) * seen)[:, 1:].sum(axis=1)
    total = rel.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        hap = (hrank / positions).sum(axis=1) / total
        ideal = -np.sort(-sorted_levels, axis=1)
        ideal_seen = np.cumsum(ideal[:, None, :] == np.arange(num_levels + 1)[None, :, None], axis=2)
        num_relevant = (sorted_levels > 0).sum(axis=1)
        within = positions[None, :] <= num_relevant[:, None]
        asi = (np.minimum(seen, ideal_seen).sum(axis=1) / positions * within).sum(axis=1) / num_relevant
        discount = 1.0 / np.log2(1.0 + positions)
        ndcg = ((2.0**sorted_levels - 1) * discount).sum(axis=1) / ((2.0**ideal - 1) * discount).sum(axis=1)
    lone = num_relevant == 0
    for values in (hap, asi, ndcg):
        values[lone] = np.nan
    return {"hap": hap, "asi": asi, "ndcg": ndcg}


def hierarchical_retrieval_metrics(
    query_embeddings,
    query_labels,
    gallery_embeddings=None,
    gallery_labels=None,
    *,
    alpha: float = 1.0,
    metric: str = "inner_product",
    return_per_query: bool = False,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
):
    """H-AP, ASI and NDCG of hierarchical retrieval, exact (see the module docstring).

    Args:
        query_embeddings: ``(Nq, D)`` float array; also the gallery when ``gallery_embeddings``
            is None (same-source / leave-one-out evaluation).
        query_labels: ``(Nq, L)`` integer ids, coarse to fine (negative: unknown at that level).
        gallery_embeddings: optional ``(N, D)`` float array. gallery_labels: ``(N, L)``, with it.
        alpha: relevance exponent of H-AP (1.0, HAPPIER's ``config/dataset/*.yaml``).
        metric: "inner_product" (default) or "l2".
        return_per_query: also return ``{"hap", "asi", "ndcg"}`` ``(Nq,)`` arrays (NaN: lone).
        block_bytes: memory of one block of scores (default 64 MiB).
    Returns:
        dict ``{"H-AP", "ASI", "NDCG"}`` (means over non-lone queries; NaN if all are lone),
        ``"num_queries"``, ``"num_lone_queries"``, ``"num_references"``.
    Raises:
        ValueError: bad shapes, non-finite embeddings, non-integer labels, mismatched levels.
    """
    metric = checks.as_metric(metric)
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"`alpha` must be a number > 0; got {alpha!r}.")
    queries = checks.as_embeddings(query_embeddings, "query_embeddings")
    q_labels = as_hierarchical_labels(query_labels, queries.shape[0], "query_labels")
    same_source = gallery_embeddings is None
    if same_source:
        if gallery_labels is not None:
            raise ValueError("`gallery_labels` was given without `gallery_embeddings`; pass both or neither.")
        if queries.shape[0] < 2:
            raise ValueError("Same-source evaluation needs at least 2 embeddings.")
        gallery, g_labels = queries, _singletons(q_labels, 0)
        q_labels = g_labels
    else:
        if gallery_labels is None:
            raise ValueError("`gallery_embeddings` needs `gallery_labels` (their (N, levels) integer ids).")
        gallery = checks.as_embeddings(gallery_embeddings, "gallery_embeddings")
        if gallery.shape[1] != queries.shape[1]:
            raise ValueError(
                f"gallery_embeddings have dimension {gallery.shape[1]} but query_embeddings {queries.shape[1]}; "
                "they must come from the same model."
            )
        gallery = gallery.astype(queries.dtype, copy=False)
        g_labels = as_hierarchical_labels(gallery_labels, gallery.shape[0], "gallery_labels")
        if g_labels.shape[1] != q_labels.shape[1]:
            raise ValueError(f"gallery_labels have {g_labels.shape[1]} levels but query_labels {q_labels.shape[1]}.")
        g_labels = _singletons(g_labels, 0)
        q_labels = _singletons(q_labels, gallery.shape[0])
    num_levels = q_labels.shape[1]
    weights = level_weights(num_levels, alpha)
    sq_norms = np.einsum("ij,ij->i", gallery, gallery) if metric == "l2" else None
    n_q, n_ref = queries.shape[0], gallery.shape[0]
    block = max(1, block_bytes // (8 * n_ref * (num_levels + 2)))
    per_query = {key: np.empty(n_q) for key in ("hap", "asi", "ndcg")}
    for start in range(0, n_q, block):
        ids = np.arange(start, min(n_q, start + block))
        scores = queries[ids] @ gallery.T
        if sq_norms is not None:
            scores = 2.0 * scores - sq_norms
        depth = common_depth(q_labels[ids], g_labels)
        counts = np.stack([(depth == level).sum(axis=1) for level in range(num_levels + 1)], axis=1)
        relevance = weights[None, :] / np.maximum(counts, 1)
        order = np.argsort(-scores, axis=1, kind="stable")
        if same_source:
            order = order[order != ids[:, None]].reshape(len(ids), n_ref - 1)
        values = ranking_metrics(np.take_along_axis(depth, order, axis=1), relevance)
        for key, value in values.items():
            per_query[key][ids] = value
    lone = np.isnan(per_query["hap"])
    results = {
        "H-AP": _mean(per_query["hap"][~lone]),
        "ASI": _mean(per_query["asi"][~lone]),
        "NDCG": _mean(per_query["ndcg"][~lone]),
        "num_queries": int(n_q),
        "num_lone_queries": int(lone.sum()),
        "num_references": int(n_ref - 1 if same_source else n_ref),
    }
    return (results, per_query) if return_per_query else results


def _mean(values):
    return float(values.mean()) if values.size else float("nan")
