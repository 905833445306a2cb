"""Plumbing shared by the ranking losses: Keras calling convention, batch and reference forms."""

import keras
from keras import ops

from keras_roadmap.losses import _inputs


class RetrievalLoss(keras.losses.Loss):
    """A loss over a whole batch of ``(label, embedding)`` pairs, returning one scalar.

    Subclasses implement ``_loss_from_pairs``. Two forms share it:

    * ``loss(y_true, y_pred)``: the batch is both the queries and the retrieval set.
    * ``loss.call_with_reference(y_true, y_pred, ref_y_true, ref_y_pred)``: the batch is the
      queries and a reference (e.g. a cross-batch memory) is the retrieval set; the reference
      is a constant (no gradient flows into it).

    Unlike Keras' built-in losses, labels are *not* cast to float: ``y_true`` must be integer
    class ids of shape ``(B,)`` or ``(B, 1)`` and stays exact for any id. ``y_pred`` is cast to
    the loss ``dtype`` (float32 by default, also under a mixed-precision policy; pass
    ``dtype="float64"`` for a float64 computation).

    ``sample_weight`` is rejected: AP is not a mean of independent per-example terms, so there
    is no faithful way to weight examples. Balance the data with a class-balanced sampler.
    """

    def __init__(self, *, include_self=True, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.include_self = bool(include_self)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} does not support sample_weight: average precision ranks "
                "every item of the batch against the others, so per-example weights have no "
                "faithful meaning. Remove sample_weight (or class_weight) from fit()/the loss call "
                "and balance classes with a sampler instead."
            )
        with keras.name_scope(self.name):
            return self.call(y_true, y_pred)

    def call(self, y_true, y_pred):
        """Scalar loss of the batch ``y_pred`` ``(B, D)`` with labels ``y_true`` ``(B,)``."""
        labels, embeddings = _inputs.prepare_batch(y_true, y_pred, self.dtype)
        in_set = None if self.include_self else not_self(embeddings)
        return self._loss_from_pairs(labels, embeddings, labels, embeddings, in_set, batch_form=True)

    def call_with_reference(self, y_true, y_pred, ref_y_true, ref_y_pred, self_index=None):
        """Scalar loss of the queries ``y_pred`` ``(B, D)`` ranked against a reference ``(M, D)``.

        Args:
            y_true: ``(B,)`` int query labels.
            y_pred: ``(B, D)`` float query embeddings (receive gradients).
            ref_y_true: ``(M,)`` int reference labels.
            ref_y_pred: ``(M, D)`` float reference embeddings (constant).
            self_index: optional ``(B,)`` int, the reference row holding each query's own
                stored copy (-1 if none). Only used with ``include_self=False``, to take that
                copy out of the query's retrieval set.
        Queries whose label is absent from the reference have no positive: they are left out of
        the mean (the official code returns NaN for the whole loss).
        """
        labels, embeddings = _inputs.prepare_batch(y_true, y_pred, self.dtype)
        ref_labels, ref_embeddings = _inputs.prepare_reference(ref_y_true, ref_y_pred, self.dtype, embeddings)
        in_set = None if self.include_self else reference_in_set(ref_embeddings, self_index)
        return self._loss_from_pairs(labels, embeddings, ref_labels, ref_embeddings, in_set, batch_form=False)

    def _loss_from_pairs(self, labels, embeddings, ref_labels, ref_embeddings, in_set, batch_form):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "include_self": self.include_self}


def not_self(embeddings):
    """``(B, B)`` bool: False on the diagonal (an item is not in its own retrieval set)."""
    n = ops.shape(embeddings)[0]
    return ops.logical_not(ops.cast(ops.eye(n), "bool"))


def reference_in_set(ref_embeddings, self_index):
    """``(B, M)`` bool: False at each query's own stored copy ``self_index[q]``; None if unknown."""
    if self_index is None:
        return None
    index = ops.reshape(ops.convert_to_tensor(self_index, "int32"), (-1, 1))
    columns = ops.expand_dims(ops.arange(ops.shape(ref_embeddings)[0], dtype="int32"), 0)
    return ops.not_equal(columns, index)


def same_label_matrix(labels, ref_labels):
    """``(B, N)`` bool: ``labels[q] == ref_labels[j]``."""
    ref_labels = ops.cast(ref_labels, labels.dtype)
    return ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(ref_labels, 0))
