"""Average precision of each query from a score matrix, with a smooth (or exact) rank.

The rank of a positive k of query q is ``1 + sum_{j != k} H(s_qj - s_qk)`` over the query's
retrieval set and ``rank+`` the same sum over positives only; ``AP(q)`` is the mean of
``rank+ / rank`` over q's positives.

Only positives need ranks, so the work is ``(number of (query, positive) pairs) x N``, not the
``B x N x N`` of a dense implementation: 4B x N for the paper's batches of 4 images per class.
The pairs are numbered in row-major order and visited ``pairs_per_chunk`` at a time, so every
tensor has the static shape ``(pairs_per_chunk, N)`` that XLA needs, whatever the number of
positives of each query; the loop's trip count, ``ceil(pairs / pairs_per_chunk)``, is the only
data-dependent quantity. A chunk finds its pairs through a label index (the items sorted once
by label, :func:`label_segments`), so nothing of size ``B x N`` exists besides the scores and
their gradient, and above ``DENSE_SCORES_LIMIT`` not even those (:func:`ap_sums` then takes the
embeddings and recomputes each chunk's score rows).

Automatic differentiation through such a loop would keep every step's intermediates (the dense
memory cost again), so the gradient with respect to the scores is written by hand: a second loop
recomputes each chunk and adds its rows into the gradient in place. Loops run one step at a time
(``_inputs.sequential_while_loop``); memory is ``O(pairs_per_chunk * N)`` besides the two
``(B, N)`` tensors.
"""

from keras import ops

from keras_roadmap import _keras_compat
from keras_roadmap.losses import _inputs

# One loop step holds about this many (pair, item) scores: ~4 MiB per float32 temporary.
DEFAULT_CHUNK_ELEMENTS = 2**20
# A chunk holds up to this many pairs per query (the paper's 4 images per class).
PAIRS_PER_QUERY_PER_CHUNK = 4
# Used when the number of items is unknown at trace time (dynamic shapes outside XLA).
FALLBACK_PAIRS_PER_CHUNK = 1024
# Up to this many query-item scores the kernel holds the (B, N) scores and their gradient (32 MiB
# each in float32: the fast path, one matrix product); above it (B = N > 2896) it recomputes each
# chunk's rows from the embeddings, so memory stops growing with B * N.
DENSE_SCORES_LIMIT = 2**23


def holds_dense_scores(num_queries, num_items, limit=None):
    """Whether :func:`ap_sums` should get the dense scores (True) or the embeddings pair for a
    ``(num_queries, num_items)`` problem; unknown sizes take the dense form."""
    if num_queries is None or num_items is None:
        return True
    return int(num_queries) * int(num_items) <= (DENSE_SCORES_LIMIT if limit is None else limit)


def pairs_per_chunk_for(num_queries, num_items, chunk_elements=DEFAULT_CHUNK_ELEMENTS):
    """Static chunk size: about ``chunk_elements`` scores per step, at most ``4 B`` pairs.

    The paper's batches hold 4 images per class, so the batch form has ``4 B`` (query,
    positive) pairs: one step ranks them all, and a chunk never computes rows no pair fills
    (a bound of ``B * N`` pairs made a B = 128 batch rank 8,192 rows for its 512 pairs). More
    pairs (more images per class, a memory) take more steps of the same size.
    """
    if num_items is None:
        return FALLBACK_PAIRS_PER_CHUNK
    pairs = max(1, chunk_elements // max(1, int(num_items)))
    if num_queries is not None:
        pairs = min(pairs, PAIRS_PER_QUERY_PER_CHUNK * int(num_queries))
    return pairs


def _chunk_ranks(
    row_scores_of, num_items, labels, ref_labels, excluded, ref_valid, segments, first_pair, chunk, pos_step, neg_step
):
    """Ranks of the (query, positive) pairs ``first_pair .. first_pair + chunk - 1``.

    ``segments``: the :func:`label_segments` of the problem (query q's pairs are its
    same-label items, in label-index order); ``row_scores_of(query)`` gives the ``(C, N)`` score
    rows. Returns the query of each pair ``(C,)``, its validity ``(C,)``, the one-hot position of
    the ranked positive ``(C, N)``, ``rank+`` and ``rank`` ``(C,)``, and what the backward pass
    needs.
    """
    order, first, pair_ends, total = segments["order"], segments["first"], segments["pair_ends"], segments["total"]
    pair = first_pair + ops.arange(chunk, dtype="int32")
    valid = ops.less(pair, total)
    pair = ops.minimum(pair, ops.maximum(total - 1, 0))
    query = ops.cast(_keras_compat.searchsorted(pair_ends, pair, side="right"), "int32")
    query = ops.minimum(query, ops.shape(pair_ends)[0] - 1)
    pair_start = ops.take(pair_ends, query) - ops.take(segments["candidates"], query)
    item = ops.take(order, ops.minimum(ops.take(first, query) + pair - pair_start, num_items - 1))
    columns = ops.expand_dims(ops.arange(num_items, dtype="int32"), 0)
    if excluded is not None:
        valid = ops.logical_and(valid, ops.not_equal(item, ops.take(excluded, query)))
    same = ops.equal(ops.expand_dims(ref_labels, 0), ops.expand_dims(ops.take(labels, query), 1))
    member = _membership(columns, ops.take(excluded, query) if excluded is not None else None, ref_valid)
    positive = same if member is None else ops.logical_and(same, member)
    row_scores = row_scores_of(query)
    dtype = row_scores.dtype
    row_positive = ops.cast(positive, dtype)
    not_same = ops.logical_not(same)
    row_negative = ops.cast(not_same if member is None else ops.logical_and(not_same, member), dtype)
    onehot = ops.cast(ops.equal(columns, ops.expand_dims(item, 1)), dtype) * ops.cast(ops.expand_dims(valid, 1), dtype)
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


def label_segments(labels, ref_labels, excluded=None, ref_valid=None):
    """Where each query's positives are, without any ``(B, N)`` tensor.

    The items are sorted once by (validity, label, index): query q's candidates (the valid
    items of its label) are then ``order[first[q] : first[q] + candidates[q]]``, found by two
    binary searches; its positives are those candidates but its excluded item. The pairs of all
    queries are numbered in row-major order, query q's ending at ``pair_ends[q]``.

    Returns a dict of int32 tensors: ``order`` ``(N,)``, ``first``, ``candidates``,
    ``pair_ends``, ``num_positives`` ``(B,)`` and ``total`` (scalar, the number of pairs).
    """
    num_items = ops.shape(ref_labels)[0]
    order = _inputs.stable_argsort(ref_labels)
    if ref_valid is not None:
        invalid = ops.cast(ops.logical_not(ops.take(ref_valid, order)), "int32")
        order = ops.take(order, _inputs.stable_argsort(invalid))
        num_valid = ops.sum(ops.cast(ref_valid, "int32"))
    else:
        num_valid = num_items
    sorted_labels = ops.take(ref_labels, order)
    if ref_valid is not None:
        # Invalid items (at the end) take the largest label, so the sequence stays sorted; the
        # searches below are clipped to the valid prefix.
        top = ops.maximum(ops.max(ref_labels), ops.max(labels))
        sorted_labels = ops.where(ops.arange(num_items, dtype="int32") < num_valid, sorted_labels, top)
    first = ops.cast(_keras_compat.searchsorted(sorted_labels, labels, side="left"), "int32")
    last = ops.minimum(ops.cast(_keras_compat.searchsorted(sorted_labels, labels, side="right"), "int32"), num_valid)
    candidates = ops.maximum(last - first, 0)
    num_positives = candidates
    if excluded is not None:
        safe = ops.maximum(excluded, 0)
        excluded_is_candidate = ops.logical_and(
            ops.greater_equal(excluded, 0), ops.equal(ops.take(ref_labels, safe), labels)
        )
        if ref_valid is not None:
            excluded_is_candidate = ops.logical_and(excluded_is_candidate, ops.take(ref_valid, safe))
        num_positives = candidates - ops.cast(excluded_is_candidate, "int32")
    pair_ends = ops.cast(ops.cumsum(candidates), "int32")
    return {
        "order": ops.cast(order, "int32"),
        "first": first,
        "candidates": candidates,
        "pair_ends": pair_ends,
        "num_positives": num_positives,
        "total": pair_ends[-1],
    }


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
        scores: ``(B, N)`` float, query-by-item similarities; or a pair ``(embeddings (B, D),
            ref_embeddings (N, D))`` whose product ``embeddings @ ref_embeddings.T`` is never
            held whole: each chunk recomputes its score rows (one ``(C, D) x (D, N)`` product)
            and the gradient goes straight onto both, so memory is ``O(pairs_per_chunk * N +
            (B + N) * D)`` at any batch size, for about ``positives per query`` times the
            matrix-product work of the dense form (see :func:`holds_dense_scores`).
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
    if isinstance(scores, (tuple, list)):
        operands = tuple(scores)
        shape = (operands[0].shape[0], operands[1].shape[0])

        def rows_of(operands, query):
            queries, items = operands
            return _inputs.pairwise_dot(ops.take(queries, query, axis=0), items)

        def add_row_grads(operands, grads, query, row_grad):
            queries, items = operands
            dq, di = grads
            dq = _inputs.add_rows(dq, query, _inputs.matmul(row_grad, items))
            di = di + _inputs.matmul(ops.transpose(row_grad), ops.take(queries, query, axis=0))
            return dq, di

    else:
        operands, shape = (scores,), scores.shape

        def rows_of(operands, query):
            return ops.take(operands[0], query, axis=0)

        def add_row_grads(operands, grads, query, row_grad):
            return (_inputs.add_rows(grads[0], query, row_grad),)

    return _chunked_ap_sums(
        operands,
        shape,
        rows_of,
        add_row_grads,
        labels,
        ref_labels,
        pos_step,
        neg_step,
        excluded,
        ref_valid,
        positive_step_has_gradient,
        pairs_per_chunk,
    )


def _chunked_ap_sums(
    operands,
    shape,
    rows_of,
    add_row_grads,
    labels,
    ref_labels,
    pos_step,
    neg_step,
    excluded,
    ref_valid,
    positive_step_has_gradient,
    pairs_per_chunk,
):
    """The loops of :func:`ap_sums`: ``rows_of(operands, query)`` gives a chunk's ``(C, N)``
    score rows, ``add_row_grads(operands, grads, query, row_grad)`` adds their gradient into
    the operands' gradients."""
    num_queries, num_items = shape
    chunk = pairs_per_chunk or pairs_per_chunk_for(num_queries, num_items)
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"pairs_per_chunk must be a positive integer, got {pairs_per_chunk!r}.")
    segments = label_segments(labels, ref_labels, excluded, ref_valid)
    num_positives, total = segments["num_positives"], segments["total"]
    num_chunks = (total + (chunk - 1)) // chunk
    max_chunks = None
    if num_queries is not None and num_items is not None:
        max_chunks = -(-int(num_queries) * int(num_items) // chunk)
    batch = ops.shape(labels)[0]
    dynamic_items = ops.shape(ref_labels)[0]
    dtype = operands[0].dtype

    # The chunk function takes the operands as an argument: inside ops.custom_gradient it must
    # see the custom-gradient inputs, never the outer tensors (under JAX a captured outer tensor
    # is a leaked tracer: jax.grad raises UnexpectedTracerError).
    def ranks(operands_now, i):
        return _chunk_ranks(
            lambda query: rows_of(operands_now, query),
            dynamic_items,
            labels,
            ref_labels,
            excluded,
            ref_valid,
            segments,
            i * chunk,
            chunk,
            pos_step,
            neg_step,
        )

    @ops.custom_gradient
    def _sums(*operands_in):
        def forward_body(i, sums):
            query, valid, _, rank_plus, rank, *_ = ranks(operands_in, i)
            return i + 1, _inputs.add_rows(sums, query, valid * rank_plus / rank)

        _, sums = _inputs.sequential_while_loop(
            lambda i, sums: ops.less(i, num_chunks),
            forward_body,
            (ops.convert_to_tensor(0, "int32"), ops.zeros((batch,), dtype)),
            maximum_iterations=max_chunks,
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, dtype)

            def backward_body(i, *grads):
                query, valid, onehot, rank_plus, rank, other_pos, negatives, pos_deriv, neg_deriv = ranks(
                    operands_in, i
                )
                coef = ops.take(upstream, query) * valid / rank
                # d(rank+/rank) = d(rank+) (1/rank - rank+/rank^2) - d(rank_negatives) rank+/rank^2
                dt = ops.expand_dims(-coef * rank_plus / rank, 1) * neg_deriv * negatives
                if positive_step_has_gradient:
                    dt = dt + ops.expand_dims(coef * (1.0 - rank_plus / rank), 1) * pos_deriv * other_pos
                # t = s_qj - s_qk: +dt to each other item j, -sum_j dt to the ranked positive k.
                row_grad = dt - onehot * ops.sum(dt, axis=1, keepdims=True)
                return (i + 1,) + tuple(add_row_grads(operands_in, grads, query, row_grad))

            _, *grads = _inputs.sequential_while_loop(
                lambda i, *_: ops.less(i, num_chunks),
                backward_body,
                (ops.convert_to_tensor(0, "int32"),) + tuple(ops.zeros_like(x) for x in operands_in),
                maximum_iterations=max_chunks,
            )
            return grads[0] if len(grads) == 1 else tuple(grads)

        return sums, grad

    return _sums(*operands), ops.cast(num_positives, dtype)
