"""Average precision of each query from a score matrix, with a smooth (or exact) rank.

The rank of a positive k of query q is ``1 + sum_{j != k} H(s_qj - s_qk)`` over the query's
retrieval set and ``rank+`` the same sum over positives only; ``AP(q)`` is the mean of
``rank+ / rank`` over q's positives.

Only positives need ranks, so the work is ``(number of (query, positive) pairs) x N``, not the
``B x N x N`` of a dense implementation: 4B x N for the paper's batches of 4 images per class.
The pairs are enumerated in row-major order and visited ``pairs_per_chunk`` at a time, so every
tensor has the static shape ``(pairs_per_chunk, N)`` that XLA needs, whatever the number of
positives of each query; the loop's trip count, ``ceil(pairs / pairs_per_chunk)``, is the only
data-dependent quantity.

Automatic differentiation through such a loop would keep every step's intermediates (the dense
memory cost again), so the gradient with respect to the scores is written by hand: a second loop
recomputes each chunk. Memory stays ``O(pairs_per_chunk * N)`` in both passes.
"""

from keras import ops

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


def _segment_sum(data, segment_ids, num_segments):
    """``ops.segment_sum`` in ``data``'s dtype on every backend.

    Keras 3.15's torch ``segment_sum`` computes in float32 (``data.float()``), which would make
    ``dtype="float64"`` silently float32; ``index_add`` keeps the dtype.
    """
    from keras import backend

    if backend.backend() == "torch":
        import torch

        out = torch.zeros((num_segments,) + tuple(data.shape[1:]), dtype=data.dtype, device=data.device)
        return out.index_add(0, segment_ids.long(), data)
    return ops.segment_sum(data, segment_ids, num_segments=num_segments)


def _chunk_ranks(scores, labels, ref_labels, excluded, ref_valid, pair_flat_index, total, first_pair, chunk, pos_step, neg_step):
    """Ranks of the (query, positive) pairs ``first_pair .. first_pair + chunk - 1``.

    Returns the query of each pair ``(C,)``, its validity ``(C,)``, the one-hot position of the
    ranked positive ``(C, N)``, ``rank+`` and ``rank`` ``(C,)``, and what the backward pass needs.
    """
    num_items = ops.shape(scores)[1]
    pair = first_pair + ops.arange(chunk, dtype="int32")
    valid = ops.less(pair, total)
    flat = ops.take(pair_flat_index, ops.minimum(pair, total - 1))
    query, item = flat // num_items, flat % num_items
    columns = ops.expand_dims(ops.arange(num_items, dtype="int32"), 0)
    same = ops.equal(ops.expand_dims(ref_labels, 0), ops.expand_dims(ops.take(labels, query), 1))
    member = _membership(columns, ops.take(excluded, query) if excluded is not None else None, ref_valid)
    dtype = scores.dtype
    row_positive = ops.cast(same if member is None else ops.logical_and(same, member), dtype)
    not_same = ops.logical_not(same)
    row_negative = ops.cast(not_same if member is None else ops.logical_and(not_same, member), dtype)
    onehot = ops.cast(ops.equal(columns, ops.expand_dims(item, 1)), dtype) * ops.cast(ops.expand_dims(valid, 1), dtype)
    row_scores = ops.take(scores, query, axis=0)
    anchor = ops.take(ops.reshape(scores, (-1,)), flat)
    t = row_scores - ops.expand_dims(anchor, 1)
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


def _enumerate_pairs(positive_flat):
    """Row-major flat indices of the positives, compacted to the front of a static-size vector.

    A scatter (rather than a sort or a search) keeps this one O(B * N) pass; non-positives all go
    to a spare last slot with value 0, so no index is out of range on any backend.
    """
    size = ops.shape(positive_flat)[0]
    position = ops.cumsum(positive_flat) - 1
    is_positive = ops.greater(positive_flat, 0)
    destination = ops.where(is_positive, position, size)
    flat_index = ops.where(is_positive, ops.arange(size, dtype="int32"), 0)
    compacted = ops.scatter(ops.expand_dims(destination, 1), flat_index, (size + 1,))
    return compacted, position[-1] + 1


def positive_mask(labels, ref_labels, excluded=None, ref_valid=None):
    """``(B, N)`` bool: item j is a positive of query q and belongs to q's retrieval set."""
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(ref_labels, 0))
    columns = ops.expand_dims(ops.arange(ops.shape(ref_labels)[0], dtype="int32"), 0)
    member = _membership(columns, excluded, ref_valid)
    return same if member is None else ops.logical_and(same, member)


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
    positive = ops.cast(positive_mask(labels, ref_labels, excluded, ref_valid), "int32")
    num_positives = ops.sum(positive, axis=1)
    pair_flat_index, total = _enumerate_pairs(ops.reshape(positive, (-1,)))
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
            scores_now, labels, ref_labels, excluded, ref_valid, pair_flat_index, total, i * chunk, chunk, pos_step, neg_step
        )

    @ops.custom_gradient
    def _ap_sums(scores_in):
        def forward_body(i, total):
            query, valid, _, rank_plus, rank, *_ = ranks(scores_in, i)
            return i + 1, total + _segment_sum(valid * rank_plus / rank, query, batch)

        _, total = ops.while_loop(
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
                return i + 1, dscores + _segment_sum(row_grad, query, batch)

            _, dscores = ops.while_loop(
                lambda i, d: ops.less(i, num_chunks),
                backward_body,
                (ops.convert_to_tensor(0, "int32"), ops.zeros_like(scores_in)),
                maximum_iterations=max_chunks,
            )
            return dscores

        return total, grad

    return _ap_sums(scores), ops.cast(num_positives, scores.dtype)
