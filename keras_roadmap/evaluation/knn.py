"""Exact k-nearest-neighbour search with faiss, in query chunks so memory stays bounded."""

from collections.abc import Iterator

import faiss
import numpy as np

from keras_roadmap.evaluation import checks


def build_index(references: np.ndarray, metric: str) -> "faiss.Index":
    """Exact faiss index (`IndexFlatIP` for "inner_product", `IndexFlatL2` for "l2") holding
    `references` ((N, D) float32, C-contiguous)."""
    dim = references.shape[1]
    index = faiss.IndexFlatIP(dim) if metric == "inner_product" else faiss.IndexFlatL2(dim)
    index.add(references)
    return index


def iter_knn_chunks(
    index, queries: np.ndarray, k: int, chunk_size: int, exclude_self: bool
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield `(start, scores, indices)` for consecutive chunks of `queries`.

    `scores`/`indices` are (chunk, k): float32 inner products (descending) or squared L2
    distances (ascending), and int64 reference rows. With `exclude_self`, query i is reference i:
    it is removed from its own list by index (not by position), searching k + 1 and dropping
    the last entry where the query is not among them (possible with duplicates or un-normalised
    vectors under the inner product).
    """
    extra = 1 if exclude_self else 0
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size]
        scores, indices = index.search(block, k + extra)
        if exclude_self:
            own = np.arange(start, start + block.shape[0])[:, None]
            drop = indices == own
            drop[~drop.any(axis=1), -1] = True
            keep = ~drop
            scores = scores[keep].reshape(block.shape[0], k)
            indices = indices[keep].reshape(block.shape[0], k)
        yield start, scores, indices


def order_ties_by_index(scores: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Reorder each row's equal `scores` (higher = better, sorted) so that ties go by reference index.

    faiss breaks ties differently for inner product and L2; this gives both a stable order.
    """
    tied = np.flatnonzero((scores[:, 1:] == scores[:, :-1]).any(axis=1))
    if tied.size:
        neighbours = neighbours.copy()
        for row in tied:
            order = np.lexsort((neighbours[row], -scores[row]))
            neighbours[row] = neighbours[row, order]
    return neighbours


def exact_knn(
    queries,
    references=None,
    k: int = 10,
    *,
    metric: str = "inner_product",
    chunk_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest references of each query.

    Args:
        queries: (Nq, D) float array.
        references: (Nr, D) float array, or None for same-source search (references are the
            queries; each query's own row is excluded by index).
        k: neighbours per query, 1 <= k <= number of available references.
        metric: "inner_product" (largest first) or "l2" (squared Euclidean, smallest first).
        chunk_size: queries searched at once; memory is O(chunk_size * k) on top of the index.

    Returns:
        `(indices, scores)`: (Nq, k) int64 reference rows and (Nq, k) float32 scores
        (inner products or squared distances), best first; equal scores in reference order.
    """
    metric = checks.as_metric(metric)
    queries = checks.as_embeddings(queries, "queries")
    same_source = references is None
    references = queries if same_source else checks.as_embeddings(references, "references")
    if references.shape[1] != queries.shape[1]:
        raise ValueError(
            f"queries have dimension {queries.shape[1]} but references {references.shape[1]}; they must match."
        )
    k = checks.positive_int(k, "k")
    chunk_size = checks.positive_int(chunk_size, "chunk_size")
    available = references.shape[0] - (1 if same_source else 0)
    if k > available:
        raise ValueError(f"k={k} exceeds the {available} references available to each query.")
    index = build_index(references, metric)
    indices = np.empty((queries.shape[0], k), np.int64)
    scores = np.empty((queries.shape[0], k), np.float32)
    for start, s, i in iter_knn_chunks(index, queries, k, chunk_size, same_source):
        indices[start : start + len(i)] = order_ties_by_index(-s if metric == "l2" else s, i)
        scores[start : start + len(s)] = s
    return indices, scores
