"""Chunked per-query sums of a function of each positive's smooth rank (SupRecall@k, SupNDCG).

The AP kernel (:mod:`keras_roadmap.losses.average_precision`) sums ``rank+ / rank`` over each
query's positives. SupRecall@k and SupNDCG sum another function of the same ranks:
``f(rank+, rank, n)`` where ``n`` is the query's number of positives (recall@k divides by
``min(n, k)``, NDCG by the ideal DCG of ``n`` positives). This module runs the same chunked
loop as the AP kernel, with the same pair numbering, the same ranks (its ``_chunk_ranks``) and a
hand-written gradient, for any such ``f``: memory stays ``O(pairs_per_chunk * N)`` besides the
``(B, N)`` scores (and not even those above ``DENSE_SCORES_LIMIT``).
"""

from keras import ops

from keras_roadmap.losses import _inputs
from keras_roadmap.losses import average_precision as _ap


def rank_function_sums(
    pairs,
    pos_step,
    neg_step,
    pair_fn,
    *,
    positive_step_has_gradient,
    pairs_per_chunk=None,
):
    """Per-query ``sum over positives k of f(rank+_qk, rank_qk, n_q)`` and ``n_q``.

    Args:
        pairs: a :class:`~keras_roadmap.losses.base.Pairs` (queries and their retrieval set).
        pos_step, neg_step: callables ``t -> (H(t), H'(t))`` from ``ranking.py``.
        pair_fn: ``(rank_plus (C,), rank (C,), num_positives (C,)) -> (f, df/drank_plus,
            df/drank)``, each ``(C,)``: the value of one (query, positive) pair and its
            derivatives (``num_positives`` is the pair's query's count, a constant).
        positive_step_has_gradient: False when ``pos_step`` is the exact step.
        pairs_per_chunk: (query, positive) pairs per loop step (static; None: automatic).
    Returns:
        ``(sums (B,), num_positives (B,))`` in the pairs' dtype; differentiable w.r.t. the
        embeddings (through the scores).
    """
    num_queries, num_items = pairs.embeddings.shape[0], pairs.ref_embeddings.shape[0]
    if _ap.holds_dense_scores(num_queries, num_items):
        operands = (pairs.scores,)

        def rows_of(operands, query):
            return ops.take(operands[0], query, axis=0)

        def add_row_grads(operands, grads, query, row_grad):
            return (_inputs.add_rows(grads[0], query, row_grad),)

    else:
        operands = (pairs.embeddings, pairs.ref_embeddings)

        def rows_of(operands, query):
            queries, items = operands
            return _inputs.pairwise_dot(ops.take(queries, query, axis=0), items)

        def add_row_grads(operands, grads, query, row_grad):
            queries, items = operands
            dq, di = grads
            dq = _inputs.add_rows(dq, query, _inputs.matmul(row_grad, items))
            di = di + _inputs.matmul(ops.transpose(row_grad), ops.take(queries, query, axis=0))
            return dq, di

    labels, ref_labels, excluded, ref_valid = pairs.labels, pairs.ref_labels, pairs.excluded, pairs.ref_valid
    chunk = int(pairs_per_chunk or _ap.pairs_per_chunk_for(num_queries, num_items))
    if chunk < 1:
        raise ValueError(f"pairs_per_chunk must be a positive integer, got {pairs_per_chunk!r}.")
    segments = _ap.label_segments(labels, ref_labels, excluded, ref_valid)
    num_positives, total = segments["num_positives"], segments["total"]
    num_chunks = (total + (chunk - 1)) // chunk
    max_chunks = None
    if num_queries is not None and num_items is not None:
        max_chunks = -(-int(num_queries) * int(num_items) // chunk)
    batch = ops.shape(labels)[0]
    dynamic_items = ops.shape(ref_labels)[0]
    dtype = operands[0].dtype
    positives_float = ops.cast(num_positives, dtype)

    # As in the AP kernel: the operands are an argument, never captured (JAX tracers).
    def ranks(operands_now, i):
        return _ap._chunk_ranks(
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
            value, _, _ = pair_fn(rank_plus, rank, ops.take(positives_float, query))
            return i + 1, _inputs.add_rows(sums, query, valid * value)

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
                _, d_rank_plus, d_rank = pair_fn(rank_plus, rank, ops.take(positives_float, query))
                coef = ops.take(upstream, query) * valid
                # rank = rank+ + sum_negatives H_neg: a negative moves rank only, a positive both.
                dt = ops.expand_dims(coef * d_rank, 1) * neg_deriv * negatives
                if positive_step_has_gradient:
                    dt = dt + ops.expand_dims(coef * (d_rank + d_rank_plus), 1) * pos_deriv * other_pos
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

    return _sums(*operands), positives_float


def mean_score_terms(score_sums, num_positives):
    """``1 - mean score`` over the queries with a positive (0 when none has one), as one ratio."""
    valid = ops.cast(ops.greater(num_positives, 0), score_sums.dtype)
    return [(1.0, ops.sum((1.0 - score_sums) * valid), ops.sum(valid))]
