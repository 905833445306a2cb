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
from keras_roadmap.losses.base import RetrievalLoss

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

    def __init__(
        self, pos_margin=0.9, neg_margin=0.6, *, include_self=True, gather_across_replicas=True, name="calibration_loss", dtype=None
    ):
        super().__init__(include_self=include_self, gather_across_replicas=gather_across_replicas, name=name, dtype=dtype)
        self.pos_margin, self.neg_margin = validation.margins(pos_margin, neg_margin, owner=type(self).__name__)

    def _ratio_terms(self, pairs):
        # Cosine from the shared dot-product matrix: one (B, D) x (D, N) product serves both terms.
        cosine = (
            pairs.scores
            * ops.expand_dims(inverse_norm(pairs.embeddings), 1)
            * ops.expand_dims(inverse_norm(pairs.ref_embeddings), 0)
        )
        pair_mask = pairs.membership(exclude_diagonal=pairs.batch_form)
        return calibration_terms(cosine, pairs.same_label(), pair_mask, self.pos_margin, self.neg_margin)

    def get_config(self):
        return {**super().get_config(), "pos_margin": self.pos_margin, "neg_margin": self.neg_margin}
