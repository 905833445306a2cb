"""Average precision of each query from a score matrix, with a smooth (or exact) rank.

The rank of a positive k of query q is ``1 + sum_{j != k} H(s_qj - s_qk)`` over the query's
retrieval set and ``rank+`` the same sum over positives only; ``AP(q)`` is the mean of
``rank+ / rank`` over q's positives.

Only positives need ranks, so the work is ``B x P x N`` (P = positives per query, 4 in the
paper's batches) rather than the ``B x N x N`` of a dense implementation. To keep static
shapes for XLA, positives are visited in "slots": slot s of query q is its s-th positive in
item order, and a loop takes ``slots_per_chunk`` slots at a time until every query's positives
are done (the trip count is the data-dependent ``ceil(max_q P_q / slots_per_chunk)``; each
step's tensors have the static shape ``(B, slots_per_chunk, N)``).

Automatic differentiation through such a loop would have to keep every step's intermediates,
(the dense cost again), so the gradient with respect to the scores is written by hand and
recomputes each chunk in a second loop: memory stays ``O(B * slots_per_chunk * N)`` in both
passes.
"""

import math

from keras import ops

DEFAULT_SLOTS_PER_CHUNK = 8


def _chunk_ranks(scores, positive, negative, slot_of_item, num_positives, start, slots, pos_step, neg_step):
    """Ranks of the positives in slots ``[start, start + slots)`` of every query.

    Returns the one-hot map of each slot to its item ``(B, S, N)``, the slot validity ``(B, S)``,
    ``rank+`` and ``rank`` ``(B, S)``, and the elementwise step values/derivatives needed by the
    backward pass.
    """
    targets = start + ops.arange(slots, dtype="int32")
    onehot = ops.cast(
        ops.equal(ops.expand_dims(slot_of_item, 1), ops.reshape(targets, (1, slots, 1))),
        scores.dtype,
    ) * ops.expand_dims(positive, 1)
    valid = ops.cast(
        ops.less(ops.reshape(targets, (1, slots)), ops.expand_dims(num_positives, 1)), scores.dtype
    )
    # Exactly one non-zero term per valid slot: the sum is the positive's own score, exactly.
    anchor = ops.sum(onehot * ops.expand_dims(scores, 1), axis=2)
    t = ops.expand_dims(scores, 1) - ops.expand_dims(anchor, 2)
    other_positives = ops.expand_dims(positive, 1) - onehot
    negatives = ops.expand_dims(negative, 1)
    pos_value, pos_deriv = pos_step(t)
    neg_value, neg_deriv = neg_step(t)
    rank_plus = 1.0 + ops.sum(pos_value * other_positives, axis=2)
    rank = rank_plus + ops.sum(neg_value * negatives, axis=2)
    return onehot, valid, rank_plus, rank, other_positives, negatives, pos_deriv, neg_deriv


def ap_sums(
    scores,
    positive,
    negative,
    pos_step,
    neg_step,
    *,
    positive_step_has_gradient,
    slots_per_chunk=DEFAULT_SLOTS_PER_CHUNK,
):
    """Per-query ``sum over positives of rank+ / rank``, differentiable w.r.t. ``scores``.

    Args:
        scores: ``(B, N)`` float, query-by-item similarities.
        positive: ``(B, N)`` float 0/1, item is a positive of the query (and in its retrieval set).
        negative: ``(B, N)`` float 0/1, item is a negative of the query (and in its retrieval set).
        pos_step, neg_step: callables ``t -> (H(t), H'(t))`` from ``ranking.py``.
        positive_step_has_gradient: False when ``pos_step`` is the exact step, so the backward
            pass can skip its (zero) term.
        slots_per_chunk: positives ranked per loop step (static), see the module docstring.
    Returns:
        ``(B,)`` tensor; divide by the number of positives to get AP.
    """
    slots = int(slots_per_chunk)
    if slots < 1:
        raise ValueError(f"slots_per_chunk must be a positive integer, got {slots_per_chunk!r}.")
    num_items = scores.shape[1]
    if num_items is not None:
        slots = max(1, min(slots, int(num_items)))
    positive_int = ops.cast(positive, "int32")
    slot_of_item = ops.cumsum(positive_int, axis=1) - 1
    num_positives = ops.sum(positive_int, axis=1)
    num_chunks = (ops.max(num_positives) + (slots - 1)) // slots
    max_chunks = None if num_items is None else math.ceil(int(num_items) / slots)

    def ranks(start):
        return _chunk_ranks(
            scores, positive, negative, slot_of_item, num_positives, start, slots, pos_step, neg_step
        )

    @ops.custom_gradient
    def _ap_sums(scores_in):
        def forward_body(i, total):
            _, valid, rank_plus, rank, *_ = ranks(i * slots)
            return i + 1, total + ops.sum(valid * rank_plus / rank, axis=1)

        _, total = ops.while_loop(
            lambda i, total: ops.less(i, num_chunks),
            forward_body,
            (ops.convert_to_tensor(0, "int32"), ops.zeros_like(scores_in[:, 0])),
            maximum_iterations=max_chunks,
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.expand_dims(ops.cast(upstream, scores_in.dtype), 1)

            def backward_body(i, dscores):
                onehot, valid, rank_plus, rank, other_pos, negatives, pos_deriv, neg_deriv = ranks(
                    i * slots
                )
                coef = upstream * valid / rank
                # d(rank+/rank) = d(rank+) (1/rank - rank+/rank^2) - d(rank_negatives) rank+/rank^2
                neg_coef = -coef * rank_plus / rank
                dt = ops.expand_dims(neg_coef, 2) * neg_deriv * negatives
                if positive_step_has_gradient:
                    pos_coef = coef * (1.0 - rank_plus / rank)
                    dt = dt + ops.expand_dims(pos_coef, 2) * pos_deriv * other_pos
                # t = s_qj - s_qk: +dt to the other item j, -sum_j dt to the ranked positive k.
                to_items = ops.sum(dt, axis=1)
                to_anchors = ops.sum(onehot * ops.expand_dims(ops.sum(dt, axis=2), 2), axis=1)
                return i + 1, dscores + to_items - to_anchors

            _, dscores = ops.while_loop(
                lambda i, d: ops.less(i, num_chunks),
                backward_body,
                (ops.convert_to_tensor(0, "int32"), ops.zeros_like(scores_in)),
                maximum_iterations=max_chunks,
            )
            return dscores

        return total, grad

    return _ap_sums(scores)
