"""A chunked loop over (query, positive) pairs with a hand-written gradient, for rank losses whose
per-pair term is not SupAP's ``rank+ / rank`` (HAPPIER's H-AP, the Recall@k surrogate).

The pairs are enumerated as in :mod:`keras_roadmap.losses.average_precision` (its
:func:`~keras_roadmap.losses.average_precision.label_segments`: items sorted once by label, a
query's candidates contiguous), ``pairs_per_chunk`` at a time, so every tensor of a step has the
static shape ``(pairs_per_chunk, N)``. A loss supplies two functions of a :class:`PairChunk`:

* ``terms(chunk) -> (C, W)``: each pair's contribution to its query's ``W`` sums;
* ``grads(chunk, upstream (C, W)) -> (C, N)``: the derivative of ``sum(upstream * terms)`` with
  respect to ``t = s_qj - s_qk`` (the kernel turns it into the gradient of the score rows).

Memory: the ``(B, N)`` scores and their gradient plus ``O(pairs_per_chunk * N)`` per step;
nothing of size ``B x N x N`` exists.
"""

from keras import ops

from keras_roadmap.losses import _inputs
from keras_roadmap.losses.average_precision import DEFAULT_CHUNK_ELEMENTS, FALLBACK_PAIRS_PER_CHUNK


class PairChunk:
    """One step's pairs: ``query``, ``item`` ``(C,)`` int32, ``valid`` ``(C,)`` (scores dtype),
    ``onehot`` ``(C, N)`` (the ranked positive's column), ``rows`` ``(C, N)`` score rows and
    ``t = rows - rows[item]``; ``columns`` ``(1, N)`` int32."""

    def __init__(self, query, item, valid, onehot, rows, t, columns):
        self.query, self.item, self.valid, self.onehot = query, item, valid, onehot
        self.rows, self.t, self.columns = rows, t, columns


def pairs_per_chunk_for(num_items, chunk_elements=DEFAULT_CHUNK_ELEMENTS):
    """About ``chunk_elements`` scores per step (static)."""
    if num_items is None:
        return FALLBACK_PAIRS_PER_CHUNK
    return max(1, chunk_elements // max(1, int(num_items)))


def _chunk(scores, segments, skip_item, first_pair, chunk):
    order, first, pair_ends, total = segments["order"], segments["first"], segments["pair_ends"], segments["total"]
    num_items = ops.shape(scores)[1]
    pair = first_pair + ops.arange(chunk, dtype="int32")
    valid = ops.less(pair, total)
    pair = ops.minimum(pair, ops.maximum(total - 1, 0))
    query = ops.cast(ops.searchsorted(pair_ends, pair, side="right"), "int32")
    query = ops.minimum(query, ops.shape(pair_ends)[0] - 1)
    pair_start = ops.take(pair_ends, query) - ops.take(segments["candidates"], query)
    item = ops.take(order, ops.minimum(ops.take(first, query) + pair - pair_start, num_items - 1))
    if skip_item is not None:
        valid = ops.logical_and(valid, ops.not_equal(item, ops.take(skip_item, query)))
    rows = ops.take(scores, query, axis=0)
    dtype = rows.dtype
    columns = ops.expand_dims(ops.arange(num_items, dtype="int32"), 0)
    valid = ops.cast(valid, dtype)
    onehot = ops.cast(ops.equal(columns, ops.expand_dims(item, 1)), dtype) * ops.expand_dims(valid, 1)
    anchor = ops.take_along_axis(rows, ops.expand_dims(item, 1), axis=1)
    return PairChunk(query, item, valid, onehot, rows, rows - anchor, columns)


def pair_sums(scores, segments, terms, grads, width, *, skip_item=None, pairs_per_chunk=None):
    """Per-query sums ``(B, W)`` of ``terms`` over the pairs of ``segments``; differentiable
    w.r.t. ``scores`` ``(B, N)`` through ``grads`` (see the module docstring).

    ``skip_item``: optional ``(B,)`` int32, a candidate that is not a pair of its query (-1:
    none), e.g. the query itself when it stays in its own ranking but is not its own positive.
    """
    num_queries, num_items = scores.shape
    chunk = int(pairs_per_chunk or pairs_per_chunk_for(num_items))
    if chunk < 1:
        raise ValueError(f"pairs_per_chunk must be a positive integer, got {pairs_per_chunk!r}.")
    num_chunks = (segments["total"] + (chunk - 1)) // chunk
    max_chunks = None
    if num_queries is not None and num_items is not None:
        max_chunks = -(-int(num_queries) * int(num_items) // chunk)
    batch = ops.shape(scores)[0]
    dtype = scores.dtype

    @ops.custom_gradient
    def _sums(scores_in):
        def forward_body(i, sums):
            pairs = _chunk(scores_in, segments, skip_item, i * chunk, chunk)
            values = terms(pairs) * ops.expand_dims(pairs.valid, 1)
            return i + 1, _inputs.add_rows(sums, pairs.query, values)

        _, sums = _inputs.sequential_while_loop(
            lambda i, sums: ops.less(i, num_chunks),
            forward_body,
            (ops.convert_to_tensor(0, "int32"), ops.zeros((batch, width), dtype)),
            maximum_iterations=max_chunks,
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, dtype)

            def backward_body(i, grad_scores):
                pairs = _chunk(scores_in, segments, skip_item, i * chunk, chunk)
                rows_up = ops.take(upstream, pairs.query, axis=0) * ops.expand_dims(pairs.valid, 1)
                dt = grads(pairs, rows_up)
                # t = s_qj - s_qk: +dt to each item j, -sum_j dt to the ranked positive k.
                row_grad = dt - pairs.onehot * ops.sum(dt, axis=1, keepdims=True)
                return i + 1, _inputs.add_rows(grad_scores, pairs.query, row_grad)

            _, grad_scores = _inputs.sequential_while_loop(
                lambda i, g: ops.less(i, num_chunks),
                backward_body,
                (ops.convert_to_tensor(0, "int32"), ops.zeros_like(scores_in)),
                maximum_iterations=max_chunks,
            )
            return grad_scores

        return sums, grad

    return _sums(scores)
