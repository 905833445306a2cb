"""Retrieval metrics (Recall@K, P@1, R-precision, MAP@R, mAP, MRR), exact, from the ranks of the
relevant references.

Conventions follow the official ROADMAP evaluation (pytorch-metric-learning's
`AccuracyCalculator` plus ROADMAP's `recall_at_k`):

* same-source mode (no query set): every embedding is a query and a reference; the query's own
  row is removed from its ranking by index.
* R = number of references sharing the query's label (class size - 1 in same-source mode). A
  query with R = 0 is "lone": it counts as a miss in Recall@K (ROADMAP's definition) and is left
  out of every other metric (pytorch-metric-learning's).
* ties between equal scores are broken by reference index (a stable sort).

Every metric is a function of the sorted ranks of the query's R relevant references (Recall@K:
is the first one within K; AP: the mean of i / rank_i; ...), so no k-NN list is needed: the
ranks come from `ranks.iter_positive_ranks`, one matrix product per block of queries plus a sort
of the few references scoring above the query's worst positive (see that module). Memory: one
128 MiB block of scores and its candidates; no N x N matrix is ever held.

With `index=` (an approximate faiss index, see `keras_roadmap.indexing`) the metrics are read
from the index's k-NN lists instead, to measure what the approximation costs.
"""

import numpy as np

from keras_roadmap.evaluation import checks, knn, ranks
from keras_roadmap.evaluation.progress import Progress

DEFAULT_KS = (1, 2, 4, 8, 10, 16, 32, 100, 1000)
# Neighbours listed per query when metrics come from an approximate index (Recall@1000 needs 1000).
_MIN_SEARCH_K = 100


def retrieval_metrics(
    embeddings,
    labels,
    *,
    query_embeddings=None,
    query_labels=None,
    ks=DEFAULT_KS,
    metric: str = "inner_product",
    chunk_size: int = 2048,
    exclude_lone_from_recall: bool = False,
    return_per_query: bool = False,
    search_k: int | None = None,
    index=None,
    progress: bool | None = None,
):
    """Exact retrieval metrics of `query_embeddings` against `embeddings` (the references).

    Args:
        embeddings: (N, D) float array of reference (gallery) embeddings; also the queries when
            `query_embeddings` is None (same-source / leave-one-out evaluation).
        labels: (N,) integer class ids of `embeddings`.
        query_embeddings: optional (Nq, D) float array; gives query/gallery mode.
        query_labels: (Nq,) integer class ids, required with `query_embeddings`.
        ks: the K of each `recall@K` (positive ints; default 1, 2, 4, 8, 10, 16, 32, 100, 1000).
            A K above the number of references is computed over all of them.
        metric: "inner_product" (default: the score ROADMAP trains on; faiss `IndexFlatIP`) or
            "l2" (squared Euclidean, `IndexFlatL2`, what pytorch-metric-learning uses). They rank
            unit-norm embeddings identically (up to float32 rounding at near-ties).
        chunk_size: at most this many queries scored at once (default 2048; fewer when a
            128 MiB block of scores holds fewer rows); results do not depend on it.
        exclude_lone_from_recall: False (default, ROADMAP): lone queries count as misses in
            `recall@K`. True: `recall@K` is averaged over non-lone queries only.
        return_per_query: also return a dict of per-query numpy arrays (see Returns).
        search_k: only with `index`: neighbours listed per query (default max(max(ks), 100),
            capped at the number of references). Exact evaluation (no `index`) needs no list
            and ignores it (it is still checked to be a positive int).
        index: optional faiss index (or `keras_roadmap.indexing.RetrievalIndex`) holding
            `embeddings` in the same order, e.g. an approximate IVF / HNSW index: the metrics
            are then computed from its `search_k`-neighbour lists, positives outside a list
            counting as not retrieved (so `map`, `r_precision` and `map@r` are lower bounds
            of the exact values when R > search_k). Default None: exact.
        progress: print a progress line on stderr: None (default) once the run has taken
            more than 2 seconds, True always, False never.

    Returns:
        dict of python numbers: `recall@K` for each K, `precision@1`, `r_precision`, `map@r`,
        `map` (full AP over all references), `mrr`, `num_queries`, `num_lone_queries`,
        `num_references`. Metrics other than recall are NaN when every query is lone.
        With `return_per_query=True`, `(metrics, per_query)` where `per_query` holds float64 (Nq,)
        arrays `ap`, `ap_at_r`, `r_precision` (NaN for lone queries) and int64 (Nq,) arrays
        `num_relevant` (R) and `first_pos_rank` (1-based rank of the nearest relevant reference,
        0 for lone queries, and with `index` for queries without a positive in their list).

    Raises:
        ValueError: bad shapes, non-finite embeddings, non-integer labels, empty sets, invalid
            `ks`/`metric`/`chunk_size`/`search_k`, an `index` not holding the N references,
            or fewer than one reference per query.
    """
    metric = checks.as_metric(metric)
    ks = checks.as_ks(ks)
    chunk_size = checks.positive_int(chunk_size, "chunk_size")
    if search_k is not None:
        search_k = checks.positive_int(search_k, "search_k")
    references = checks.as_embeddings(embeddings, "embeddings")
    ref_labels = checks.as_labels(labels, references.shape[0], "labels")
    same_source = query_embeddings is None
    if same_source:
        if query_labels is not None:
            raise ValueError("`query_labels` was given without `query_embeddings`; pass both or neither.")
        queries, q_labels = references, ref_labels
    else:
        if query_labels is None:
            raise ValueError("`query_embeddings` needs `query_labels` (their integer class ids).")
        queries = checks.as_embeddings(query_embeddings, "query_embeddings")
        q_labels = checks.as_labels(query_labels, queries.shape[0], "query_labels")
        if queries.shape[1] != references.shape[1]:
            raise ValueError(
                f"query_embeddings have dimension {queries.shape[1]} but embeddings {references.shape[1]}; "
                "they must come from the same model."
            )
    available = references.shape[0] - (1 if same_source else 0)
    if available < 1:
        raise ValueError("Same-source evaluation needs at least 2 embeddings (one query, one other reference).")

    classes = ranks.ReferenceClasses(ref_labels)
    num_relevant = classes.count(q_labels) - (1 if same_source else 0)
    n_q = queries.shape[0]
    per_query = {
        "ap": np.full(n_q, np.nan),
        "ap_at_r": np.full(n_q, np.nan),
        "r_precision": np.full(n_q, np.nan),
        "num_relevant": num_relevant,
        "first_pos_rank": np.zeros(n_q, np.int64),
    }
    bar = Progress(n_q, "retrieval_metrics", progress)
    if index is None:
        _exact_per_query(
            queries, references, q_labels, ref_labels, classes, metric, same_source, chunk_size, per_query, bar
        )
    else:
        k = min(available, search_k or max(ks[-1], _MIN_SEARCH_K))
        _listed_per_query(index, queries, q_labels, ref_labels, k, metric, same_source, chunk_size, per_query, bar)
    bar.close()

    results = summarise_per_query(per_query, ks, exclude_lone_from_recall=exclude_lone_from_recall)
    results["num_references"] = int(references.shape[0])
    if not return_per_query:
        return results
    return results, per_query


def summarise_per_query(per_query: dict, ks=DEFAULT_KS, *, rows=None, exclude_lone_from_recall: bool = False) -> dict:
    """The metrics of `retrieval_metrics` (without `num_references`) from its per-query arrays,
    over all queries or only `rows` (an int or bool index into them, e.g. one category's queries).

    Averaging the per-query values of a subset gives exactly what `retrieval_metrics` returns
    for those queries against the same references (and, in same-source mode, the same
    leave-one-out rankings)."""
    ks = checks.as_ks(ks)
    picked = {
        name: np.asarray(values) if rows is None else np.asarray(values)[rows] for name, values in per_query.items()
    }
    first_pos = picked["first_pos_rank"]
    n_q = first_pos.shape[0]
    lone = picked["num_relevant"] == 0
    counted = ~lone
    results = {}
    recall_pool = counted if exclude_lone_from_recall else np.ones(n_q, bool)
    for kk in ks:
        hit = (first_pos >= 1) & (first_pos <= kk)
        results[f"recall@{kk}"] = _mean(hit[recall_pool])
    results["precision@1"] = _mean(first_pos[counted] == 1)
    results["r_precision"] = _mean(picked["r_precision"][counted])
    results["map@r"] = _mean(picked["ap_at_r"][counted])
    results["map"] = _mean(picked["ap"][counted])
    reciprocal = np.where(first_pos > 0, 1.0 / np.maximum(first_pos, 1), 0.0)
    results["mrr"] = _mean(reciprocal[counted])
    results["num_queries"] = int(n_q)
    results["num_lone_queries"] = int(lone.sum())
    return results


def _mean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")


def _exact_per_query(queries, references, q_labels, ref_labels, classes, metric, same_source, chunk_size, out, bar):
    """Fill `out`'s per-query arrays from the exact sorted ranks of every query's positives."""
    for rows, offsets, rank, _ in ranks.iter_positive_ranks(
        queries,
        references,
        q_labels,
        ref_labels,
        exclude_self=same_source,
        metric=metric,
        max_rows=chunk_size,
        classes=classes,
    ):
        size = np.diff(offsets)
        has = size > 0
        if has.any():
            starts = offsets[:-1][has]
            r = size[has].astype(np.float64)
            row_r = np.repeat(size, size)
            precision = (np.arange(rank.size) - np.repeat(offsets[:-1], size) + 1) / rank
            within_r = rank <= row_r
            q = rows[has]
            out["ap"][q] = np.add.reduceat(precision, starts) / r
            out["ap_at_r"][q] = np.add.reduceat(np.where(within_r, precision, 0.0), starts) / r
            out["r_precision"][q] = np.add.reduceat(within_r.astype(np.float64), starts) / r
            out["first_pos_rank"][q] = rank[starts]
        bar.update(len(rows))


def _listed_per_query(index, queries, q_labels, ref_labels, k, metric, same_source, chunk_size, out, bar):
    """Fill `out`'s per-query arrays from the `k`-neighbour lists of `index` (positives outside
    a list count as not retrieved)."""
    ntotal = getattr(index, "ntotal", None)
    if ntotal != ref_labels.shape[0]:
        raise ValueError(
            f"`index` holds {ntotal} vectors but `embeddings` has {ref_labels.shape[0]} rows; it must hold "
            "exactly the references, in the same order (build it with keras_roadmap.indexing.build_index)."
        )
    r_all = out["num_relevant"]
    positions = np.arange(1, k + 1)
    for start, scores, neighbours in knn.iter_knn_chunks(index, queries, k, chunk_size, same_source):
        stop = start + neighbours.shape[0]
        if metric == "l2":
            scores = -scores
        neighbours = knn.order_ties_by_index(scores, neighbours)
        r = r_all[start:stop]
        # faiss pads a short list (an approximate index may find fewer than k) with -1.
        rel = (neighbours >= 0) & (ref_labels[np.maximum(neighbours, 0)] == q_labels[start:stop, None])
        hits = np.cumsum(rel, axis=1)
        precision_at_hit = np.where(rel, hits / positions, 0.0)
        within_r = positions <= r[:, None]
        has_pos = r > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            out["r_precision"][start:stop] = np.where(has_pos, (rel & within_r).sum(axis=1) / r, np.nan)
            out["ap_at_r"][start:stop] = np.where(has_pos, (precision_at_hit * within_r).sum(axis=1) / r, np.nan)
            out["ap"][start:stop] = np.where(has_pos, precision_at_hit.sum(axis=1) / r, np.nan)
        out["first_pos_rank"][start:stop] = np.where(rel.any(axis=1), rel.argmax(axis=1) + 1, 0)
        bar.update(stop - start)
