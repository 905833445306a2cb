"""Retrieval metrics (Recall@K, P@1, R-precision, MAP@R, mAP, MRR) from exact faiss k-NN.

Conventions follow the official ROADMAP evaluation (pytorch-metric-learning's
`AccuracyCalculator` plus ROADMAP's `recall_at_k`):

* same-source mode (no query set): every embedding is a query and a reference; the query's own
  row is removed from its ranking by index.
* R = number of references sharing the query's label (class size - 1 in same-source mode). A
  query with R = 0 is "lone": it counts as a miss in Recall@K (ROADMAP's definition) and is left
  out of every other metric (pytorch-metric-learning's).
* ties between equal scores are broken by reference index (a stable sort). faiss does not cut
  ties that way, so rows with equal scores are reordered, and a query whose positive ties with
  the k-th score is recounted exactly (below).

Cost: one exact faiss search with k = max(max(ks), R_max, 100), in query chunks: O(chunk_size * k)
memory on top of the index. P@1, R-precision, MAP@R, Recall@K and MRR come from that list. The
full mAP needs the rank of every relevant reference: a query with a relevant reference beyond
the k-th neighbour (usually few) has its full score row recomputed in small float32 blocks and
sorted, and each positive's rank is read by binary search (O(N log N) per query); its metrics
then all come from those exact ranks. No N x N matrix is ever held.
"""

import numpy as np

from keras_roadmap.evaluation import checks, knn

DEFAULT_KS = (1, 2, 4, 8, 10, 16, 32, 100, 1000)
# Bytes of float32 score rows recomputed at once for queries whose positives lie beyond the k-NN list.
_FULL_ROW_BUDGET = 32 * 2**20  # held twice: the scores and their sorted copy
# A deeper list costs little in faiss and spares most queries the exact full-row recount.
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
        chunk_size: queries searched at once (default 2048; memory O(chunk_size * k)); results
            do not depend on it (except where float32 rounding reorders near-ties).
        exclude_lone_from_recall: False (default, ROADMAP): lone queries count as misses in
            `recall@K`. True: `recall@K` is averaged over non-lone queries only.
        return_per_query: also return a dict of per-query numpy arrays (see Returns).
        search_k: neighbours listed per query by the faiss search (default
            max(max(ks), largest R, 100), capped at the number of references). Any value >= 1
            gives the same results: queries whose relevant references are not all listed are
            recounted exactly from their full score row; a small value only shifts work there.

    Returns:
        dict of python numbers: `recall@K` for each K, `precision@1`, `r_precision`, `map@r`,
        `map` (full AP over all references), `mrr`, `num_queries`, `num_lone_queries`,
        `num_references`. Metrics other than recall are NaN when every query is lone.
        With `return_per_query=True`, `(metrics, per_query)` where `per_query` holds float64 (Nq,)
        arrays `ap`, `ap_at_r`, `r_precision` (NaN for lone queries) and int64 (Nq,) arrays
        `num_relevant` (R) and `first_pos_rank` (1-based rank of the nearest relevant reference,
        0 for lone queries).

    Raises:
        ValueError: bad shapes, non-finite embeddings, non-integer labels, empty sets, invalid
            `ks`/`metric`/`chunk_size`, or fewer than one reference per query.
    """
    metric = checks.as_metric(metric)
    ks = checks.as_ks(ks)
    chunk_size = checks.positive_int(chunk_size, "chunk_size")
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

    classes = _ReferenceClasses(ref_labels)
    num_relevant = classes.count(q_labels) - (1 if same_source else 0)
    if search_k is None:
        search_k = max(ks[-1], int(num_relevant.max()), _MIN_SEARCH_K)
    k = min(available, checks.positive_int(search_k, "search_k"))

    n_q = queries.shape[0]
    ap = np.full(n_q, np.nan)
    ap_at_r = np.full(n_q, np.nan)
    r_prec = np.full(n_q, np.nan)
    first_pos = np.zeros(n_q, np.int64)
    recount = []
    index = knn.build_index(references, metric)
    positions = np.arange(1, k + 1)
    for start, scores, neighbours in knn.iter_knn_chunks(index, queries, k, chunk_size, same_source):
        stop = start + neighbours.shape[0]
        if metric == "l2":
            scores = -scores
        neighbours = knn.order_ties_by_index(scores, neighbours)
        r = num_relevant[start:stop]
        rel = ref_labels[neighbours] == q_labels[start:stop, None]
        hits = np.cumsum(rel, axis=1)
        precision_at_hit = np.where(rel, hits / positions, 0.0)
        within_r = positions <= r[:, None]
        has_pos = r > 0
        # A positive tied with the k-th score may have tied references cut off by the search
        # (faiss does not cut ties by index); such queries are recounted exactly below.
        boundary_tie = (rel & (scores == scores[:, -1:])).any(axis=1)
        exact = has_pos & (hits[:, -1] == r) & ~boundary_tie
        with np.errstate(invalid="ignore", divide="ignore"):
            r_prec[start:stop] = np.where(has_pos, (rel & within_r).sum(axis=1) / r, np.nan)
            ap_at_r[start:stop] = np.where(has_pos, (precision_at_hit * within_r).sum(axis=1) / r, np.nan)
            ap[start:stop] = np.where(exact, precision_at_hit.sum(axis=1) / r, np.nan)
        first_pos[start:stop] = np.where(rel.any(axis=1), rel.argmax(axis=1) + 1, 0)
        recount.append(start + np.flatnonzero(has_pos & ~exact))

    recount = np.concatenate(recount)
    if recount.size:
        ranks = _positive_ranks(queries, references, q_labels, classes, recount, metric, same_source)
        for q, rank in zip(recount, ranks):
            ap[q], ap_at_r[q], r_prec[q], first_pos[q] = _metrics_from_ranks(rank)

    lone = num_relevant == 0
    counted = ~lone
    results = {}
    recall_pool = counted if exclude_lone_from_recall else np.ones(n_q, bool)
    for kk in ks:
        hit = (first_pos >= 1) & (first_pos <= kk)
        results[f"recall@{kk}"] = _mean(hit[recall_pool])
    results["precision@1"] = _mean(first_pos[counted] == 1)
    results["r_precision"] = _mean(r_prec[counted])
    results["map@r"] = _mean(ap_at_r[counted])
    results["map"] = _mean(ap[counted])
    results["mrr"] = _mean(1.0 / first_pos[counted])
    results["num_queries"] = int(n_q)
    results["num_lone_queries"] = int(lone.sum())
    results["num_references"] = int(references.shape[0])
    if not return_per_query:
        return results
    per_query = {
        "ap": ap,
        "ap_at_r": ap_at_r,
        "r_precision": r_prec,
        "num_relevant": num_relevant,
        "first_pos_rank": first_pos,
    }
    return results, per_query


def _mean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")


class _ReferenceClasses:
    """Reference rows grouped by label: counts and the rows of any class, without N x N masks."""

    def __init__(self, ref_labels: np.ndarray):
        self.order = np.argsort(ref_labels, kind="stable")
        self.unique, self.starts, self.counts = np.unique(
            ref_labels[self.order], return_index=True, return_counts=True
        )

    def _slot(self, labels: np.ndarray):
        slot = np.minimum(np.searchsorted(self.unique, labels), len(self.unique) - 1)
        return slot, self.unique[slot] == labels

    def count(self, labels: np.ndarray) -> np.ndarray:
        slot, found = self._slot(labels)
        return np.where(found, self.counts[slot], 0).astype(np.int64)

    def rows(self, label) -> np.ndarray:
        slot, found = self._slot(np.asarray([label]))
        if not found[0]:
            return np.empty(0, np.int64)
        start = self.starts[slot[0]]
        return self.order[start : start + self.counts[slot[0]]]


def _metrics_from_ranks(rank: np.ndarray) -> tuple[float, float, float, int]:
    """(AP, AP@R, R-precision, first positive rank) from the sorted 1-based ranks of all R positives."""
    r = len(rank)
    precision = np.arange(1, r + 1) / rank
    within_r = rank <= r
    return float(precision.mean()), float(precision[within_r].sum() / r), float(within_r.sum() / r), int(rank[0])


def _positive_ranks(queries, references, q_labels, classes, rows, metric, same_source):
    """Sorted exact ranks of every relevant reference of each query in `rows`, from its full score row.

    Scores are recomputed in float32 blocks of at most _FULL_ROW_BUDGET bytes and each row is
    sorted (numpy's SIMD sort is several times faster than counting with a per-row binary search
    of the unsorted row). The rank of a positive j is 1 + #{refs scoring higher} + #{refs tied
    with it and of smaller index}.
    """
    n_ref = references.shape[0]
    block = max(1, _FULL_ROW_BUDGET // (4 * n_ref))
    sq_norms = np.einsum("ij,ij->i", references, references) if metric == "l2" else None
    ranks = []
    for b in range(0, len(rows), block):
        ids = rows[b : b + block]
        scores = queries[ids] @ references.T
        if metric == "l2":
            # Larger is nearer: -(|q|^2 + |r|^2 - 2 q.r) without the per-query constant.
            scores *= 2.0
            scores -= sq_norms
        if same_source:
            scores[np.arange(len(ids)), ids] = -np.inf
        ascending = np.sort(scores, axis=1)
        for local, q in enumerate(ids):
            positives = classes.rows(q_labels[q])
            if same_source:
                positives = positives[positives != q]
            ranks.append(_ranks_in_row(scores[local], ascending[local], positives))
    return ranks


def _ranks_in_row(row: np.ndarray, ascending: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Sorted 1-based ranks of `positives` (reference rows) given their score `row` and its sorted copy."""
    pos_scores = row[positives]
    not_below = np.searchsorted(ascending, pos_scores, side="right")
    rank = row.size - not_below + 1
    tied = not_below - np.searchsorted(ascending, pos_scores, side="left") > 1
    # Another reference shares a positive's score: those of smaller index rank before it.
    for i in np.flatnonzero(tied):
        rank[i] += np.count_nonzero(np.flatnonzero(row == pos_scores[i]) < positives[i])
    return np.sort(rank)
