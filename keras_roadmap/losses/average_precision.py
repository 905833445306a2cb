"""Average precision of each query from a score matrix, with a smooth (or exact) rank.

The rank of a positive k of query q is ``1 + sum_{j != k} H(s_qj - s_qk)`` over the query's
retrieval set and ``rank+`` the same sum over positives only; ``AP(q)`` is the mean of
``rank+ / rank`` over q's positives.

Only positives need ranks, so the work is ``(number of (query, positive) pairs) x N``, not the
``B x N x N`` of a dense implementation: 4B x N for the paper's batches of 4 images per class.
The pairs are numbered in row-major order and visited ``pairs_per_chunk`` at a time, so every
tensor has the static shape ``(pairs_per_chunk, N)`` that XLA needs, whatever the number of
positives of each query; the loop's trip count, ``ceil(pairs / pairs_per_chunk)``, is the only
data-dependent quantity. A chunk finds its pairs from the per-query positive counts (a search
in their running sum, then the positive's position in its row), so nothing of size ``B x N``
exists besides the scores and their gradient.

Automatic differentiation through such a loop would keep every step's intermediates (the dense
memory cost again), so the gradient with respect to the scores is written by hand: a second loop
recomputes each chunk and adds its rows into the gradient in place. Loops run one step at a time
(``_inputs.sequential_while_loop``); memory is ``O(pairs_per_chunk * N)`` besides the two
``(B, N)`` tensors.
"""

from keras import ops

from keras_roadmap.losses import _inputs

# One loop step holds about this many (pair, item) scores: ~4 MiB per float32 temporary.
DEFAULT_CHUNK_ELEMENTS = 2**20
# Used when the number of items is unknown at trace time (dynamic shapes outside XLA).
FALLBACK_PAIRS_PER_CHUNK = 1024


def pairs_per_chunk_for(num_queries, num_items, chunk_elements=DEFAULT_CHUNK_ELEMENTS):
    """Static chunk size: about ``chunk_elements`` scores per step, at most every pair."""
    if num_items is None:
        return FALLBACK_PAIRS_PER_CHUNK
    pairs = max(1, chunk_elements // max(1, int(num_items)))
    if num_queries is not None:
        pairs = min(pairs, int(num_queries) * int(num_items))
    return pairs


def _chunk_ranks(scores, labels, ref_labels, excluded, ref_valid, pair_starts, pair_ends, total, first_pair, chunk, pos_step, neg_step):
    """Ranks of the (query, positive) pairs ``first_pair .. first_pair + chunk - 1``.

    Query q's pairs are numbered ``pair_starts[q] .. pair_ends[q] - 1`` (``(B,)`` each), one
    per positive in column order.
    Returns the query of each pair ``(C,)``, its validity ``(C,)``, the one-hot position of the
    ranked positive ``(C, N)``, ``rank+`` and ``rank`` ``(C,)``, and what the backward pass needs.
    """
    num_items = ops.shape(scores)[1]
    pair = first_pair + ops.arange(chunk, dtype="int32")
    valid = ops.less(pair, total)
    pair = ops.minimum(pair, total - 1)
    query = ops.cast(ops.searchsorted(pair_ends, pair, side="right"), "int32")
    nth = pair - ops.take(pair_starts, query)
    columns = ops.expand_dims(ops.arange(num_items, dtype="int32"), 0)
    same = ops.equal(ops.expand_dims(ref_labels, 0), ops.expand_dims(ops.take(labels, query), 1))
    member = _membership(columns, ops.take(excluded, query) if excluded is not None else None, ref_valid)
    positive = same if member is None else ops.logical_and(same, member)
    # The nth positive (0-based) of a row sits after the columns whose running count is <= nth.
    running = ops.cumsum(ops.cast(positive, "int32"), axis=1)
    item = ops.sum(ops.cast(ops.less_equal(running, ops.expand_dims(nth, 1)), "int32"), axis=1)
    dtype = scores.dtype
    row_positive = ops.cast(positive, dtype)
    not_same = ops.logical_not(same)
    row_negative = ops.cast(not_same if member is None else ops.logical_and(not_same, member), dtype)
    onehot = ops.cast(ops.equal(columns, ops.expand_dims(item, 1)), dtype) * ops.cast(ops.expand_dims(valid, 1), dtype)
    row_scores = ops.take(scores, query, axis=0)
    anchor = ops.take_along_axis(row_scores, ops.expand_dims(ops.minimum(item, num_items - 1), 1), axis=1)
    t = row_scores - anchor
    other_positives = row_positive - onehot
    pos_value, pos_deriv = pos_step(t)
    neg_value, neg_deriv = neg_step(t)
    rank_plus = 1.0 + ops.sum(pos_value * other_positives, axis=1)
    rank = rank_plus + ops.sum(neg_value * row_negative, axis=1)
    return query, ops.cast(valid, dtype), onehot, rank_plus, rank, other_positives, row_negative, pos_deriv, neg_deriv


def _membership(columns, excluded, ref_valid):
    """``(rows, N)`` bool retrieval-set mask (or None: every item), from an excluded item per row
    (-1: none) and a per-item validity."""
    member = None
    if excluded is not None:
        member = ops.not_equal(columns, ops.expand_dims(excluded, 1))
    if ref_valid is not None:
        valid = ops.expand_dims(ref_valid, 0)
        member = valid if member is None else ops.logical_and(member, valid)
    return member


def positive_counts(labels, ref_labels, excluded=None, ref_valid=None, rows_per_chunk=None):
    """``(B,)`` int32: number of positives of each query in its retrieval set.

    Counted ``rows_per_chunk`` query rows at a time, so no ``(B, N)`` mask is built.
    """
    num_queries, num_items = labels.shape[0], ref_labels.shape[0]
    chunk = int(rows_per_chunk or pairs_per_chunk_for(num_queries, num_items))
    if num_queries is not None:
        chunk = min(chunk, int(num_queries))
    batch = ops.shape(labels)[0]
    columns = ops.expand_dims(ops.arange(ops.shape(ref_labels)[0], dtype="int32"), 0)
    num_chunks = (batch + (chunk - 1)) // chunk
    max_chunks = None if num_queries is None else -(-int(num_queries) // chunk)

    def body(i, counts):
        rows = i * chunk + ops.arange(chunk, dtype="int32")
        valid = ops.less(rows, batch)
        rows = ops.minimum(rows, batch - 1)
        same = ops.equal(ops.expand_dims(ops.take(labels, rows), 1), ops.expand_dims(ref_labels, 0))
        member = _membership(columns, ops.take(excluded, rows) if excluded is not None else None, ref_valid)
        positive = same if member is None else ops.logical_and(same, member)
        row_counts = ops.sum(ops.cast(positive, "int32"), axis=1) * ops.cast(valid, "int32")
        return i + 1, _inputs.add_rows(counts, rows, row_counts)

    _, counts = _inputs.sequential_while_loop(
        lambda i, counts: ops.less(i, num_chunks),
        body,
        (ops.convert_to_tensor(0, "int32"), ops.zeros((batch,), "int32")),
        maximum_iterations=max_chunks,
    )
    return counts


def ap_sums(
    scores,
    labels,
    ref_labels,
    pos_step,
    neg_step,
    *,
    excluded=None,
    ref_valid=None,
    positive_step_has_gradient,
    pairs_per_chunk=None,
):
    """Per-query ``sum over positives of rank+ / rank`` and number of positives.

    Differentiable w.r.t. ``scores`` (only).

    Args:
        scores: ``(B, N)`` float, query-by-item similarities.
        labels: ``(B,)`` int query labels; ref_labels: ``(N,)`` int item labels (same dtype).
        pos_step, neg_step: callables ``t -> (H(t), H'(t))`` from ``ranking.py``.
        excluded: optional ``(B,)`` int32, an item left out of each query's retrieval set
            (-1: none), e.g. the query itself for the textbook AP.
        ref_valid: optional ``(N,)`` bool, items that exist (a partly filled memory).
        positive_step_has_gradient: False when ``pos_step`` is the exact step, so the backward
            pass can skip its (zero) term.
        pairs_per_chunk: (query, positive) pairs ranked per loop step (static); None picks
            about 2**20 scores per step.
    Returns:
        ``(sums (B,), num_positives (B,))``; AP = sums / num_positives.
    """
    num_queries, num_items = scores.shape
    chunk = pairs_per_chunk or pairs_per_chunk_for(num_queries, num_items)
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"pairs_per_chunk must be a positive integer, got {pairs_per_chunk!r}.")
    num_positives = positive_counts(labels, ref_labels, excluded, ref_valid)
    pair_ends = ops.cast(ops.cumsum(num_positives), "int32")
    pair_starts = pair_ends - num_positives
    total = pair_ends[-1]
    num_chunks = (total + (chunk - 1)) // chunk
    max_chunks = None
    if num_queries is not None and num_items is not None:
        max_chunks = -(-int(num_queries) * int(num_items) // chunk)
    batch = ops.shape(scores)[0]

    # The chunk function takes the scores as an argument: inside ops.custom_gradient it must see
    # the custom-gradient input, never the outer `scores` (under JAX a captured outer tensor is a
    # leaked tracer: jax.grad raises UnexpectedTracerError).
    def ranks(scores_now, i):
        return _chunk_ranks(
            scores_now, labels, ref_labels, excluded, ref_valid, pair_starts, pair_ends, total, i * chunk, chunk, pos_step, neg_step
        )

    @ops.custom_gradient
    def _ap_sums(scores_in):
        def forward_body(i, total):
            query, valid, _, rank_plus, rank, *_ = ranks(scores_in, i)
            return i + 1, _inputs.add_rows(total, query, valid * rank_plus / rank)

        _, total = _inputs.sequential_while_loop(
            lambda i, total: ops.less(i, num_chunks),
            forward_body,
            (ops.convert_to_tensor(0, "int32"), ops.zeros_like(scores_in[:, 0])),
            maximum_iterations=max_chunks,
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, scores_in.dtype)

            def backward_body(i, dscores):
                query, valid, onehot, rank_plus, rank, other_pos, negatives, pos_deriv, neg_deriv = ranks(scores_in, i)
                coef = ops.take(upstream, query) * valid / rank
                # d(rank+/rank) = d(rank+) (1/rank - rank+/rank^2) - d(rank_negatives) rank+/rank^2
                dt = ops.expand_dims(-coef * rank_plus / rank, 1) * neg_deriv * negatives
                if positive_step_has_gradient:
                    dt = dt + ops.expand_dims(coef * (1.0 - rank_plus / rank), 1) * pos_deriv * other_pos
                # t = s_qj - s_qk: +dt to each other item j, -sum_j dt to the ranked positive k.
                row_grad = dt - onehot * ops.sum(dt, axis=1, keepdims=True)
                return i + 1, _inputs.add_rows(dscores, query, row_grad)

            _, dscores = _inputs.sequential_while_loop(
                lambda i, d: ops.less(i, num_chunks),
                backward_body,
                (ops.convert_to_tensor(0, "int32"), ops.zeros_like(scores_in)),
                maximum_iterations=max_chunks,
            )
            return dscores

        return total, grad

    return _ap_sums(scores), ops.cast(num_positives, scores.dtype)
