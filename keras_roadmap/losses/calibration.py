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
from keras_roadmap.losses.base import RetrievalLoss, loss_pairs, sum_of_ratios
from keras_roadmap.losses.parameters import CALIBRATION_DEFAULTS, with_parameters

NORM_EPSILON = 1e-12


def inverse_norm(x):
    """``1 / max(||row||, 1e-12)`` of each row, ``(n,)`` (torch.nn.functional.normalize's guard)."""
    return 1.0 / ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=-1)), NORM_EPSILON)


def calibration_terms(cosine, same_label, pair_mask, pos_margin, neg_margin):
    """Contrastive calibration loss from a cosine-similarity matrix, as ratio terms.

    Args:
        cosine: ``(B, N)`` float cosine similarities between queries and items.
        same_label: ``(B, N)`` bool, pair shares a label.
        pair_mask: ``(B, N)`` bool, pair takes part (the batch form drops ``i == j``).
        pos_margin, neg_margin: python floats (paper: 0.9 and 0.6).
    Returns:
        ``[(1, sum, count), (1, sum, count)]`` of the non-zero ``relu(pos_margin - cos)`` over
        positive pairs and of the non-zero ``relu(cos - neg_margin)`` over negative pairs: the
        loss is the sum of the two means (an empty mean is 0).
    """
    zeros = ops.zeros_like(cosine)
    positive_pairs = ops.logical_and(same_label, pair_mask)
    negative_pairs = ops.logical_and(ops.logical_not(same_label), pair_mask)
    pos_terms = ops.where(positive_pairs, ops.relu(pos_margin - cosine), zeros)
    neg_terms = ops.where(negative_pairs, ops.relu(cosine - neg_margin), zeros)
    return [
        (1.0, ops.sum(terms), ops.sum(ops.cast(ops.greater(terms, 0), terms.dtype)))
        for terms in (pos_terms, neg_terms)
    ]


def calibration_pair_terms(pairs, pos_margin, neg_margin):
    """Calibration loss of ``pairs`` (a :class:`~keras_roadmap.losses.base.Pairs`) as ratio terms.

    Cosine similarities come from the shared dot-product matrix (one ``(B, D) x (D, N)``
    product serves every term of a combined loss); the batch form leaves out pairs ``(i, i)``.
    """
    cosine = (
        pairs.scores
        * ops.expand_dims(inverse_norm(pairs.embeddings), 1)
        * ops.expand_dims(inverse_norm(pairs.ref_embeddings), 0)
    )
    pair_mask = pairs.membership(exclude_diagonal=pairs.batch_form)
    return calibration_terms(cosine, pairs.same_label(), pair_mask, float(pos_margin), float(neg_margin))


@keras.saving.register_keras_serializable(package="keras_roadmap")
class CalibrationLoss(RetrievalLoss):
    """ROADMAP's calibration loss (contrastive, on cosine similarity).

    Args:
        pos_margin: positive pairs with cosine below it are penalised (default 0.9).
        neg_margin: negative pairs with cosine above it are penalised (default 0.6).
        include_self: kept for a uniform API; a pair of an item with itself is never counted.
        gather_across_replicas: see :class:`~keras_roadmap.losses.RetrievalLoss` (True).
        name, dtype: as for any ``keras.losses.Loss`` (dtype defaults to float32).

    Call: ``loss(y_true=labels (B,) int, y_pred=embeddings (B, D))`` -> scalar, over all ordered
    pairs ``i != j`` of the batch. ``call_with_reference`` uses only batch-to-reference pairs.

    Example:
    >>> loss = CalibrationLoss()
    >>> float(loss([0, 0, 1], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    0.0
    """

    # Signature: (pos_margin, neg_margin) from CALIBRATION_DEFAULTS, then the keywords below.
    @with_parameters(CALIBRATION_DEFAULTS, after="self")
    def __init__(self, *, include_self=True, gather_across_replicas=True, name="calibration_loss", dtype=None, **margins):
        super().__init__(include_self=include_self, gather_across_replicas=gather_across_replicas, name=name, dtype=dtype)
        self.pos_margin, self.neg_margin = validation.margins(margins["pos_margin"], margins["neg_margin"], owner=type(self).__name__)

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
    y_true, y_pred, ref_y_true=None, ref_y_pred=None, *, self_index=None, ref_mask=None, include_self=True, dtype=None,
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
