"""Plumbing shared by the ranking losses: Keras calling convention, batch and reference forms."""

import keras
from keras import ops

from keras_roadmap import guard as _guard
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

    Under ``tf.distribute`` with more than one replica (``MirroredStrategy``,
    ``MultiWorkerMirroredStrategy``), inside the replica context of ``model.fit`` or
    ``strategy.run``, both forms rank each replica's queries against the all-gathered global
    batch (batch form) and divide by counts summed across replicas, so that the replicas' losses
    sum to the single-device loss of the global batch and their summed gradients equal its
    gradient (see :mod:`keras_roadmap.distributed`). ``gather_across_replicas=False`` gives
    per-replica losses instead (each replica ranks its own examples only; its loss is scaled by
    ``1 / num_replicas``, as Keras scales its own losses).
    """

    # Read by tensorflow-similarity's SimilarityModel.compile(distance="auto"): its cosine
    # index ranks exactly as our dot-product scores on L2-normalised embeddings.
    distance = "cosine"

    def __init__(self, *, include_self=True, gather_across_replicas=True, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.include_self = bool(include_self)
        self.gather_across_replicas = bool(gather_across_replicas)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} does not support sample_weight: average precision ranks "
                "every item of the batch against the others, so per-example weights have no "
                "faithful meaning. Remove sample_weight (or class_weight) from fit()/the loss call "
                "and balance classes with a sampler instead."
            )
        if _in_keras_symbolic_build():
            # Keras builds the compiled loss from output specs only; under tf.distribute it feeds
            # labels averaged over replicas (floats), which the label checks would reject.
            return ops.zeros((), dtype=self.dtype)
        with keras.name_scope(self.name):
            # NaN when y_pred is not finite, also under tf.function / XLA (see keras_roadmap.guard).
            return _guard.poison_nonfinite(self.call(y_true, y_pred), ops.cast(y_pred, self.dtype))

    def _replica_context(self):
        """The current multi-replica ``tf.distribute`` context, or None (single device)."""
        if keras.backend.backend() != "tensorflow":
            return None
        from keras_roadmap import distributed  # tf.distribute lives there

        return distributed.replica_context()

    def call(self, y_true, y_pred):
        """Scalar loss of the batch ``y_pred`` ``(B, D)`` with labels ``y_true`` ``(B,)``."""
        context = self._replica_context()
        if context is not None:
            from keras_roadmap import distributed

            return distributed.batch_loss(self, context, y_true, y_pred)
        return self._loss_from_pairs(self._batch_pairs(y_true, y_pred))

    def call_with_reference(self, y_true, y_pred, ref_y_true, ref_y_pred, self_index=None, ref_mask=None):
        """Scalar loss of the queries ``y_pred`` ``(B, D)`` ranked against a reference ``(M, D)``.

        Args:
            y_true: ``(B,)`` int query labels.
            y_pred: ``(B, D)`` float query embeddings (receive gradients).
            ref_y_true: ``(M,)`` int reference labels.
            ref_y_pred: ``(M, D)`` float reference embeddings (constant).
            self_index: optional ``(B,)`` int, the reference row holding each query's own
                stored copy (-1 if none). Only used with ``include_self=False``, to take that
                copy out of the query's retrieval set.
            ref_mask: optional ``(M,)`` bool, the reference rows that hold an item (e.g. the
                filled slots of a memory); the others are ignored.
        Queries whose label is absent from the reference have no positive: they are left out of
        the mean (the official code returns NaN for the whole loss).
        """
        pairs = self._reference_pairs(y_true, y_pred, ref_y_true, ref_y_pred, self_index, ref_mask)
        context = self._replica_context()
        if context is not None:
            from keras_roadmap import distributed

            return distributed.reference_loss(self, context, pairs)
        return self._loss_from_pairs(pairs)

    def _batch_pairs(self, y_true, y_pred):
        labels, embeddings = _inputs.prepare_batch(y_true, y_pred, self.dtype)
        pairs = Pairs(labels, embeddings, labels, embeddings, batch_form=True)
        if not self.include_self:
            pairs.excluded = ops.arange(ops.shape(embeddings)[0], dtype="int32")
        return pairs

    def _reference_pairs(self, y_true, y_pred, ref_y_true, ref_y_pred, self_index=None, ref_mask=None):
        labels, embeddings = _inputs.prepare_batch(y_true, y_pred, self.dtype)
        ref_labels, ref_embeddings = _inputs.prepare_reference(ref_y_true, ref_y_pred, self.dtype, embeddings)
        pairs = Pairs(labels, embeddings, ref_labels, ref_embeddings, batch_form=False)
        if not self.include_self and self_index is not None:
            pairs.excluded = ops.reshape(ops.cast(self_index, "int32"), (-1,))
        if ref_mask is not None:
            pairs.ref_valid = ops.reshape(ops.cast(ref_mask, "bool"), (-1,))
        return pairs

    def _ratio_terms(self, pairs):
        """The loss as ``[(weight, numerator, count), ...]``: ``sum(w * n / max(count, 1))``.

        Counts carry no gradient. Written this way so that, across replicas, the counts can be
        summed before dividing (``keras_roadmap.distributed``) while one device divides at once.
        """
        raise NotImplementedError

    def _loss_from_pairs(self, pairs):
        return sum_of_ratios(self._ratio_terms(pairs))

    def get_config(self):
        return {
            "name": self.name,
            "dtype": self.dtype,
            "include_self": self.include_self,
            "gather_across_replicas": self.gather_across_replicas,
        }


def _in_keras_symbolic_build():
    """True inside ``keras.SymbolicScope`` (Keras computing output specs, no real data)."""
    try:
        from keras.src.backend import in_symbolic_scope
    except ImportError:  # a Keras without it never builds losses symbolically
        return False
    return in_symbolic_scope()


def sum_of_ratios(terms, counts=None):
    """``sum(w * n / max(count, 1))`` over ``terms = [(w, n, count), ...]``.

    ``counts``: optional replacement counts, e.g. summed over replicas (same order as terms).
    """
    total = 0.0
    for k, (weight, numerator, count) in enumerate(terms):
        count = ops.stop_gradient(ops.cast(count if counts is None else counts[k], numerator.dtype))
        total = total + weight * numerator / ops.maximum(count, 1.0)
    return total


class Pairs:
    """Queries and their retrieval set, as the loss terms see them.

    ``labels (B,)``, ``embeddings (B, D)``, ``ref_labels (N,)``, ``ref_embeddings (N, D)``;
    ``excluded`` ``(B,)`` int32: an item left out of each query's retrieval set (-1: none);
    ``ref_valid`` ``(N,)`` bool: items that exist; ``self_columns`` ``(B,)`` int32 or None: the
    column of each query's own copy in the batch form (None: column q for query q; set when the
    retrieval set is a batch gathered across replicas). The score matrix is computed once and
    shared by every term of a combined loss.
    """

    def __init__(self, labels, embeddings, ref_labels, ref_embeddings, *, batch_form):
        self.labels = labels
        self.embeddings = embeddings
        self.ref_labels = ops.cast(ref_labels, labels.dtype)
        self.ref_embeddings = ref_embeddings
        self.batch_form = batch_form
        self.excluded = None
        self.ref_valid = None
        self.self_columns = None
        self._scores = None

    @property
    def scores(self):
        """``(B, N)`` dot products ``embeddings @ ref_embeddings.T`` (as the paper's code)."""
        if self._scores is None:
            self._scores = ops.matmul(self.embeddings, ops.transpose(self.ref_embeddings))
        return self._scores

    def same_label(self):
        """``(B, N)`` bool: ``labels[q] == ref_labels[j]``."""
        return ops.equal(ops.expand_dims(self.labels, 1), ops.expand_dims(self.ref_labels, 0))

    def membership(self, exclude_diagonal=False):
        """``(B, N)`` bool retrieval-set mask; ``exclude_diagonal`` also drops pair ``(i, i)``."""
        columns = ops.expand_dims(ops.arange(ops.shape(self.ref_labels)[0], dtype="int32"), 0)
        member = ops.ones((ops.shape(self.labels)[0], ops.shape(self.ref_labels)[0]), dtype="bool")
        if self.excluded is not None:
            member = ops.logical_and(member, ops.not_equal(columns, ops.expand_dims(self.excluded, 1)))
        if exclude_diagonal:
            if self.self_columns is None:
                rows = ops.expand_dims(ops.arange(ops.shape(self.labels)[0], dtype="int32"), 1)
            else:
                rows = ops.expand_dims(self.self_columns, 1)
            member = ops.logical_and(member, ops.not_equal(columns, rows))
        if self.ref_valid is not None:
            member = ops.logical_and(member, ops.expand_dims(self.ref_valid, 0))
        return member
