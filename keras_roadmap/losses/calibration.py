"""Calibration term of ROADMAP: a contrastive loss on cosine similarities.

Positive pairs below ``pos_margin`` and negative pairs above ``neg_margin`` are penalised
linearly. Fixing absolute score levels across batches is what lets the batch AP approximate the
whole-set AP (the paper's decomposability argument). As in the reference implementation, each
of the two parts is averaged over its *non-zero* terms only (an empty mean is 0), and the
embeddings are L2-normalised first whatever the model outputs.
"""

import keras
from keras import ops

from keras_roadmap import validation
from keras_roadmap.losses import _inputs
from keras_roadmap.losses.average_precision import pairs_per_chunk_for
from keras_roadmap.losses.base import RetrievalLoss, loss_pairs, sum_of_ratios
from keras_roadmap.losses.parameters import CALIBRATION_DEFAULTS, with_parameters

NORM_EPSILON = 1e-12


def inverse_norm(x):
    """``1 / max(||row||, 1e-12)`` of each row, ``(n,)`` (torch.nn.functional.normalize's guard)."""
    return 1.0 / _inputs.floor_at(ops.sqrt(ops.sum(ops.square(x), axis=-1)), NORM_EPSILON)


def _row_chunk(
    i,
    rows_per_chunk,
    num_queries,
    embeddings,
    ref_embeddings,
    inv_q,
    inv_r,
    labels,
    ref_labels,
    masks,
    pos_margin,
    neg_margin,
):
    """Calibration terms of query rows ``i * R .. i * R + R - 1`` (rows past the end are masked).

    Returns the rows ``(R,)``, their scores ``(R, N)``, the positive and negative terms
    ``(R, N)`` (zero off their pairs) and the rows' embeddings and inverse norms.
    """
    excluded, self_columns, exclude_diagonal, ref_valid = masks
    rows = i * rows_per_chunk + ops.arange(rows_per_chunk, dtype="int32")
    valid = ops.less(rows, num_queries)
    rows = ops.minimum(rows, num_queries - 1)
    q = ops.take(embeddings, rows, axis=0)
    a = ops.take(inv_q, rows)
    scores = _inputs.pairwise_dot(q, ref_embeddings)
    # Same formula as the dense form (dot product, then both inverse norms): same values.
    cosine = scores * ops.expand_dims(a, 1) * ops.expand_dims(inv_r, 0)
    columns = ops.expand_dims(ops.arange(ops.shape(ref_labels)[0], dtype="int32"), 0)
    member = ops.expand_dims(valid, 1)
    if excluded is not None:
        member = ops.logical_and(member, ops.not_equal(columns, ops.expand_dims(ops.take(excluded, rows), 1)))
    if exclude_diagonal:
        own = rows if self_columns is None else ops.take(self_columns, rows)
        member = ops.logical_and(member, ops.not_equal(columns, ops.expand_dims(own, 1)))
    if ref_valid is not None:
        member = ops.logical_and(member, ops.expand_dims(ref_valid, 0))
    same = ops.equal(ops.expand_dims(ops.take(labels, rows), 1), ops.expand_dims(ref_labels, 0))
    zeros = ops.zeros_like(cosine)
    pos_terms = ops.where(ops.logical_and(same, member), ops.relu(pos_margin - cosine), zeros)
    neg_terms = ops.where(ops.logical_and(ops.logical_not(same), member), ops.relu(cosine - neg_margin), zeros)
    return rows, scores, pos_terms, neg_terms, q, a


def calibration_terms(
    embeddings,
    ref_embeddings,
    labels,
    ref_labels,
    pos_margin,
    neg_margin,
    *,
    excluded=None,
    self_columns=None,
    exclude_diagonal=False,
    ref_valid=None,
    rows_per_chunk=None,
):
    """Contrastive calibration loss of queries against items, as ratio terms, in row chunks.

    Cosine similarities are computed ``rows_per_chunk`` query rows at a time and never held
    whole, and the gradient is written by hand (a second loop recomputes each chunk), so memory
    is ``O(rows_per_chunk * N)`` in both passes (about 4 MiB per temporary by default) instead
    of several dense ``(B, N)`` matrices, with the same values and gradients.

    Args:
        embeddings: ``(B, D)`` float query embeddings; ref_embeddings: ``(N, D)`` items (the
            same tensor in the batch form). Neither needs to be normalised.
        labels: ``(B,)`` int; ref_labels: ``(N,)`` int (same dtype).
        pos_margin, neg_margin: python floats (paper: 0.9 and 0.6).
        excluded: optional ``(B,)`` int32, an item left out of each query's pairs (-1: none).
        self_columns: optional ``(B,)`` int32, the column of each query's own copy (default:
            column q for query q); used with ``exclude_diagonal``.
        exclude_diagonal: drop the pair of each query with its own copy (the batch form).
        ref_valid: optional ``(N,)`` bool, items that exist.
        rows_per_chunk: query rows per loop step (static); None: about 2**20 pairs per step.
    Returns:
        ``[(1, sum, count), (1, sum, count)]`` of the non-zero ``relu(pos_margin - cos)`` over
        positive pairs and of the non-zero ``relu(cos - neg_margin)`` over negative pairs: the
        loss is the sum of the two means (an empty mean is 0).
    """
    num_queries, num_items = embeddings.shape[0], ref_embeddings.shape[0]
    chunk = int(rows_per_chunk or pairs_per_chunk_for(num_queries, num_items))
    if num_queries is not None:
        chunk = min(chunk, int(num_queries))
    if chunk < 1:
        raise ValueError(f"rows_per_chunk must be a positive integer, got {rows_per_chunk!r}.")
    batch = ops.shape(embeddings)[0]
    num_chunks = (batch + (chunk - 1)) // chunk
    max_chunks = None if num_queries is None else -(-int(num_queries) // chunk)
    masks = (excluded, self_columns, exclude_diagonal, ref_valid)
    inv_q, inv_r = inverse_norm(embeddings), inverse_norm(ref_embeddings)

    @ops.custom_gradient
    def _sums(e, r, a, b):
        def step(i):
            return _row_chunk(i, chunk, batch, e, r, a, b, labels, ref_labels, masks, pos_margin, neg_margin)

        def forward_body(i, totals):
            _, _, pos_terms, neg_terms, _, _ = step(i)
            dtype = pos_terms.dtype
            update = ops.stack(
                [
                    ops.sum(pos_terms),
                    ops.sum(ops.cast(ops.greater(pos_terms, 0), dtype)),
                    ops.sum(neg_terms),
                    ops.sum(ops.cast(ops.greater(neg_terms, 0), dtype)),
                ]
            )
            return i + 1, totals + update

        _, totals = _inputs.sequential_while_loop(
            lambda i, totals: ops.less(i, num_chunks),
            forward_body,
            (ops.convert_to_tensor(0, "int32"), ops.zeros((4,), e.dtype)),
            maximum_iterations=max_chunks,
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, e.dtype)

            def backward_body(i, de, dr, da, db):
                rows, scores, pos_terms, neg_terms, q, a_rows = step(i)
                dtype = pos_terms.dtype
                # Only the sums carry a gradient (counts are piecewise constant): d relu = 1 above 0.
                dcos = upstream[2] * ops.cast(ops.greater(neg_terms, 0), dtype) - upstream[0] * ops.cast(
                    ops.greater(pos_terms, 0), dtype
                )
                dscores = dcos * ops.expand_dims(a_rows, 1) * ops.expand_dims(b, 0)
                de = _inputs.add_rows(de, rows, _inputs.matmul(dscores, r))
                dr = dr + _inputs.matmul(ops.transpose(dscores), q)
                scaled = dcos * scores
                da = _inputs.add_rows(da, rows, ops.sum(scaled * ops.expand_dims(b, 0), axis=1))
                db = db + ops.sum(scaled * ops.expand_dims(a_rows, 1), axis=0)
                return i + 1, de, dr, da, db

            _, de, dr, da, db = _inputs.sequential_while_loop(
                lambda i, *_: ops.less(i, num_chunks),
                backward_body,
                (
                    ops.convert_to_tensor(0, "int32"),
                    ops.zeros_like(e),
                    ops.zeros_like(r),
                    ops.zeros_like(a),
                    ops.zeros_like(b),
                ),
                maximum_iterations=max_chunks,
            )
            return de, dr, da, db

        return totals, grad

    totals = _sums(embeddings, ref_embeddings, inv_q, inv_r)
    return [(1.0, totals[0], totals[1]), (1.0, totals[2], totals[3])]


def calibration_pair_terms(pairs, pos_margin, neg_margin):
    """Calibration loss of ``pairs`` (a :class:`~keras_roadmap.losses.base.Pairs`) as ratio terms.

    Cosines are recomputed in row chunks from the embeddings (not read from the shared dense
    score matrix), so no ``(B, N)`` temporary exists in the forward or the backward pass; the
    batch form leaves out pairs ``(i, i)``.
    """
    return calibration_terms(
        pairs.embeddings,
        pairs.ref_embeddings,
        pairs.labels,
        pairs.ref_labels,
        float(pos_margin),
        float(neg_margin),
        excluded=pairs.excluded,
        self_columns=pairs.self_columns,
        exclude_diagonal=pairs.batch_form,
        ref_valid=pairs.ref_valid,
    )


@keras.saving.register_keras_serializable(package="keras_roadmap")
class CalibrationLoss(RetrievalLoss):
    """ROADMAP's calibration loss (contrastive, on cosine similarity).

    Args:
        pos_margin: positive pairs with cosine below it are penalised (default 0.9).
        neg_margin: negative pairs with cosine above it are penalised (default 0.6).
        include_self: kept for a uniform API; a pair of an item with itself is never counted.
        gather_across_replicas: see :class:`~keras_roadmap.losses.RetrievalLoss` (True).
        name: as for any ``keras.losses.Loss``.
        dtype: as for any ``keras.losses.Loss`` (defaults to float32).

    Call: ``loss(y_true=labels (B,) int, y_pred=embeddings (B, D))`` -> scalar, over all ordered
    pairs ``i != j`` of the batch. ``call_with_reference`` uses only batch-to-reference pairs.

    Example:
    >>> loss = CalibrationLoss()
    >>> float(loss([0, 0, 1], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    0.0
    """

    # Signature: (pos_margin, neg_margin) from CALIBRATION_DEFAULTS, then the keywords below.
    @with_parameters(CALIBRATION_DEFAULTS, after="self")
    def __init__(
        self, *, include_self=True, gather_across_replicas=True, name="calibration_loss", dtype=None, **margins
    ):
        super().__init__(
            include_self=include_self, gather_across_replicas=gather_across_replicas, name=name, dtype=dtype
        )
        self.pos_margin, self.neg_margin = validation.margins(
            margins["pos_margin"], margins["neg_margin"], owner=type(self).__name__
        )

    @property
    def margins(self):
        """``{pos_margin, neg_margin}`` of this loss (a new dict)."""
        return {key: getattr(self, key) for key in CALIBRATION_DEFAULTS}

    def ratio_terms(self, pairs):
        """``[(1, positive sum, count), (1, negative sum, count)]``, see :func:`calibration_terms`."""
        return calibration_pair_terms(pairs, **self.margins)

    def get_config(self):
        return {**super().get_config(), **self.margins}


@with_parameters(CALIBRATION_DEFAULTS, after="ref_y_pred")
def calibration(
    y_true,
    y_pred,
    ref_y_true=None,
    ref_y_pred=None,
    *,
    self_index=None,
    ref_mask=None,
    include_self=True,
    dtype=None,
    **margins,
):
    """ROADMAP's calibration loss of a batch (or of queries against a reference set).

    Formula:

    ```python
    cos = cosine similarity of each (query i, item j) pair, i != j in the batch form
    pos = relu(pos_margin - cos)   over pairs with the same label
    neg = relu(cos - neg_margin)   over pairs with different labels
    loss = mean(pos[pos > 0]) + mean(neg[neg > 0])    # an empty mean is 0
    ```

    Args:
        y_true: ``(B,)`` or ``(B, 1)`` int class ids. y_pred: ``(B, D)`` float embeddings.
        ref_y_true, ref_y_pred: optional ``(M,)`` / ``(M, D)`` constant reference set; then
            only query-to-reference pairs count.
        pos_margin, neg_margin: margins on cosine similarity (0.9, 0.6).
        self_index, ref_mask, include_self: as in :class:`CalibrationLoss` (a pair of an item
            with itself is never counted in the batch form).
        dtype: computation dtype (default ``keras.config.floatx()``).

    Returns:
        Scalar loss tensor, equal to ``CalibrationLoss(...)(y_true, y_pred)`` on one device.

    Example:
    >>> float(calibration([0, 0, 1], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    0.0
    """
    pairs = loss_pairs(y_true, y_pred, ref_y_true, ref_y_pred, dtype, include_self, self_index, ref_mask)
    return sum_of_ratios(calibration_pair_terms(pairs, **margins))
