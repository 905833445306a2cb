"""Exact rank of every relevant reference of each query: the package's one ranking routine.

`retrieval_metrics` (ties broken by reference index) and `diagnostics.full_set_average_precision`
(ties counted pessimistically) both read their numbers from `iter_positive_ranks`.

Cost per block of queries: one matrix product (the floor of any exact search) and three cheap
passes over the block's scores: gather the positives' scores, mark the items scoring at least
the lowest positive ("candidates"), copy those out. Only the candidates are sorted, row by row,
and each positive's rank is read by binary search among them: O(N + c log c) per query, c the
number of references scoring at least its worst positive (small when the embedding is good,
up to N for a class spread over the whole ranking). No k-NN list, no N x N matrix: memory is
one block of scores (`block_bytes`) plus its candidates.
"""

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

TIES = ("stable", "pessimistic")
# Bytes of the score block of one step (float32 or float64); the candidates take at most as much.
DEFAULT_BLOCK_BYTES = 128 * 2**20


class ReferenceClasses:
    """Reference rows grouped by label: class sizes and members, without N x N masks."""

    def __init__(self, ref_labels: np.ndarray):
        self.order = np.argsort(ref_labels, kind="stable")
        self.unique, self.starts, self.counts = np.unique(ref_labels[self.order], return_index=True, return_counts=True)

    def _slot(self, labels: np.ndarray):
        slot = np.minimum(np.searchsorted(self.unique, labels), max(len(self.unique) - 1, 0))
        return slot, self.unique[slot] == labels

    def count(self, labels: np.ndarray) -> np.ndarray:
        """(n,) int64 number of references of each label (0 for a label absent from them)."""
        slot, found = self._slot(np.asarray(labels))
        return np.where(found, self.counts[slot], 0).astype(np.int64)

    def members(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(pair_row, columns)`: for each i, the reference rows of class `labels[i]` (ascending),
        concatenated in order of i; `pair_row` says which i each belongs to."""
        slot, found = self._slot(np.asarray(labels))
        size = np.where(found, self.counts[slot], 0)
        first = np.where(found, self.starts[slot], 0)
        pair_row = np.repeat(np.arange(len(size)), size)
        offsets = np.cumsum(size) - size
        within = np.arange(pair_row.size) - np.repeat(offsets, size)
        columns = self.order[np.repeat(first, size) + within]
        return pair_row, columns


def iter_positive_ranks(
    queries: np.ndarray,
    references: np.ndarray,
    query_labels: np.ndarray,
    ref_labels: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    exclude_self: bool = False,
    metric: str = "inner_product",
    ties: str = "stable",
    max_rows: int | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    classes: ReferenceClasses | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield, block by block of queries, the exact ranks of each query's relevant references.

    Args:
        queries: (Nq, D) float32 or float64 array; references: (N, D), same dtype.
        query_labels: (Nq,) int; ref_labels: (N,) int. A reference is relevant to a query when
            their labels are equal.
        rows: the queries to rank (int array into `queries`; default all, in order).
        exclude_self: query i is reference i (same-source evaluation): it is left out of its
            own ranking and of its positives.
        metric: "inner_product" (larger is nearer) or "l2" (squared Euclidean, smaller is
            nearer; scored as 2 q.r - |r|^2, which orders references identically).
        ties: "stable": an item tied with a positive ranks before it iff its index is smaller
            (a stable sort, as faiss lists ties). "pessimistic": every other item tied with a
            positive ranks before it (Heaviside with H(0) = 1).
        max_rows: at most this many queries per block (default: as many as `block_bytes` allows).
        block_bytes: size of one block of scores (default 128 MiB).
        classes: a `ReferenceClasses(ref_labels)` to reuse (built if None).

    Yields:
        `(query_rows (b,), offsets (b + 1,), rank (P,), rank_plus (P,))`: the ranks of query
        `query_rows[i]`'s positives are `rank[offsets[i]:offsets[i + 1]]`, ascending, 1-based,
        and `rank_plus` the number of positives ranked at or before each (1, 2, ... for stable
        ties); AP of the query is `mean(rank_plus / rank)`. A query without positives has an
        empty range.
    """
    if ties not in TIES:
        raise ValueError(f"`ties` must be one of {TIES}; got {ties!r}.")
    rows = np.arange(queries.shape[0]) if rows is None else np.asarray(rows, np.int64)
    classes = ReferenceClasses(ref_labels) if classes is None else classes
    n_ref = references.shape[0]
    block = max(1, block_bytes // (references.dtype.itemsize * n_ref))
    if max_rows is not None:
        block = min(block, max_rows)
    sq_norms = np.einsum("ij,ij->i", references, references) if metric == "l2" else None
    for start in range(0, len(rows), block):
        ids = rows[start : start + block]
        yield (
            ids,
            *_block_ranks(queries[ids], references, query_labels[ids], ids, classes, sq_norms, exclude_self, ties),
        )


def _block_ranks(q, references, q_labels, ids, classes, sq_norms, exclude_self, ties):
    b = len(ids)
    scores = q @ references.T
    if sq_norms is not None:
        # Larger is nearer: -(|q|^2 + |r|^2 - 2 q.r) without the per-query constant.
        scores *= 2.0
        scores -= sq_norms
    local = np.arange(b)
    if exclude_self:
        scores[local, ids] = -np.inf
    pair_row, columns = classes.members(q_labels)
    if exclude_self:
        keep = columns != ids[pair_row]
        pair_row, columns = pair_row[keep], columns[keep]
    size = np.bincount(pair_row, minlength=b)
    offsets = np.zeros(b + 1, np.int64)
    np.cumsum(size, out=offsets[1:])
    pos_scores = scores[pair_row, columns]
    has = size > 0
    lowest = np.full(b, np.inf, scores.dtype)
    if has.any():
        lowest[has] = np.minimum.reduceat(pos_scores, offsets[:-1][has])
    rank = np.empty(pair_row.size, np.int64)
    rank_plus = np.empty(pair_row.size, np.int64)
    # numpy's sorts and passes run on one core and release the GIL: split the rows over threads.
    pieces = np.array_split(np.arange(b), min(_THREADS, b))
    work = [
        (piece, scores, lowest, pos_scores, columns, offsets, rank, rank_plus, ties) for piece in pieces if piece.size
    ]
    if len(work) == 1:
        _rows_ranks(*work[0])
    else:
        list(_pool().map(lambda args: _rows_ranks(*args), work))
    return offsets, rank, rank_plus


def _rows_ranks(piece, scores, lowest, pos_scores, columns, offsets, rank, rank_plus, ties):
    """Ranks of the positives of block rows `piece` (contiguous), written into `rank`/`rank_plus`."""
    lo_row, hi_row = piece[0], piece[-1] + 1
    sub = scores[lo_row:hi_row]
    # Every item that can rank before some positive scores at least the lowest positive.
    candidate = sub >= lowest[lo_row:hi_row, None]
    cand_count = np.count_nonzero(candidate, axis=1)
    cand_values = sub[candidate]
    del candidate
    cand_offsets = np.zeros(len(piece) + 1, np.int64)
    np.cumsum(cand_count, out=cand_offsets[1:])
    for j in np.flatnonzero(offsets[lo_row + 1 : hi_row + 1] > offsets[lo_row:hi_row]):
        i = lo_row + j
        lo, hi = offsets[i], offsets[i + 1]
        values = cand_values[cand_offsets[j] : cand_offsets[j + 1]]
        values.sort()
        p = pos_scores[lo:hi]
        below = values.searchsorted(p, side="left")
        r = values.size - below  # items scoring >= p (p itself included)
        if ties == "stable":
            above = values.size - values.searchsorted(p, side="right")
            tied = np.flatnonzero(r - above > 1)
            r = above + 1
            cols = columns[lo:hi]
            row = scores[i]
            # Another item shares a positive's score: those of smaller index rank before it.
            for t in tied:
                r[t] += np.count_nonzero(row[: cols[t]] == p[t])
            r.sort()
            rank_plus[lo:hi] = np.arange(1, hi - lo + 1)
        else:
            sorted_p = np.sort(p)
            plus = p.size - sorted_p.searchsorted(p, side="left")
            order = np.argsort(r, kind="stable")
            r, plus = r[order], plus[order]
            rank_plus[lo:hi] = plus
        rank[lo:hi] = r


_THREADS = max(1, min(os.cpu_count() or 1, 8))
_POOL = None


def _pool():
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="keras_roadmap_ranks")
    return _POOL
