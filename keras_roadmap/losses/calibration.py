"""Calibration term of ROADMAP: a contrastive loss on cosine similarities.

Positive pairs below ``pos_margin`` and negative pairs above ``neg_margin`` are penalised
linearly. Fixing absolute score levels across batches is what lets the batch AP approximate the
whole-set AP (the paper's decomposability argument). As in the reference implementation, each
of the two parts is averaged over its *non-zero* terms only (an empty mean is 0), and the
embeddings are L2-normalised first whatever the model outputs.
"""

import keras
from keras import ops

from keras_roadmap.losses.base import RetrievalLoss, not_self, same_label_matrix

NORM_EPSILON = 1e-12


def l2_normalize(x):
    """Rows divided by ``max(||row||, 1e-12)``; shape preserved."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, NORM_EPSILON)


def _mean_of_nonzero(terms):
    count = ops.sum(ops.cast(ops.greater(terms, 0), terms.dtype))
    return ops.sum(terms) / ops.maximum(count, 1.0)


def calibration_loss(query_embeddings, reference_embeddings, same_label, pair_mask, pos_margin, neg_margin):
    """Contrastive calibration loss between queries and a reference set.

    Args:
        query_embeddings: ``(B, D)`` float.
        reference_embeddings: ``(N, D)`` float (the batch itself for the batch form).
        same_label: ``(B, N)`` bool, pair shares a label.
        pair_mask: ``(B, N)`` bool, pair takes part (the batch form drops ``i == j``).
        pos_margin, neg_margin: python floats (paper: 0.9 and 0.6).
    Returns:
        Scalar: mean of non-zero ``relu(pos_margin - cos)`` over positive pairs plus mean of
        non-zero ``relu(cos - neg_margin)`` over negative pairs.
    """
    cos = ops.matmul(l2_normalize(query_embeddings), ops.transpose(l2_normalize(reference_embeddings)))
    zeros = ops.zeros_like(cos)
    positive_pairs = ops.logical_and(same_label, pair_mask)
    negative_pairs = ops.logical_and(ops.logical_not(same_label), pair_mask)
    pos_terms = ops.where(positive_pairs, ops.relu(pos_margin - cos), zeros)
    neg_terms = ops.where(negative_pairs, ops.relu(cos - neg_margin), zeros)
    return _mean_of_nonzero(pos_terms) + _mean_of_nonzero(neg_terms)


@keras.saving.register_keras_serializable(package="keras_roadmap")
class CalibrationLoss(RetrievalLoss):
    """ROADMAP's calibration loss (contrastive, on cosine similarity).

    Args:
        pos_margin: positive pairs with cosine below it are penalised (default 0.9).
        neg_margin: negative pairs with cosine above it are penalised (default 0.6).
        include_self: kept for a uniform API; a pair of an item with itself is never counted.
        name, dtype: as for any ``keras.losses.Loss`` (dtype defaults to float32).

    Call: ``loss(y_true=labels (B,) int, y_pred=embeddings (B, D))`` -> scalar, over all ordered
    pairs ``i != j`` of the batch. ``call_with_reference`` uses only batch-to-reference pairs.

    Example:
    >>> loss = CalibrationLoss()
    >>> float(loss([0, 0, 1], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    0.0
    """

    def __init__(self, pos_margin=0.9, neg_margin=0.6, *, include_self=True, name="calibration_loss", dtype=None):
        super().__init__(include_self=include_self, name=name, dtype=dtype)
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def _loss_from_pairs(self, labels, embeddings, ref_labels, ref_embeddings, in_set, batch_form):
        same = same_label_matrix(labels, ref_labels)
        pair_mask = ops.ones_like(same) if in_set is None else in_set
        if batch_form:
            pair_mask = ops.logical_and(pair_mask, not_self(embeddings))
        return calibration_loss(embeddings, ref_embeddings, same, pair_mask, self.pos_margin, self.neg_margin)

    def get_config(self):
        return {**super().get_config(), "pos_margin": self.pos_margin, "neg_margin": self.neg_margin}
