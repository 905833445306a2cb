"""Plumbing shared by the ranking losses: Keras calling convention, batch and reference forms.

The public protocol of a loss, what :mod:`keras_roadmap.distributed` and a new loss rely on:

* ``batch_pairs(y_true, y_pred)`` / ``reference_pairs(...)``: the inputs checked and put in a
  :class:`Pairs` (queries, their retrieval set, the shared score matrix);
* ``ratio_terms(pairs)``: the loss as ``[(weight, numerator, count), ...]``, its value being
  ``sum(weight * numerator / max(count, 1))`` (:func:`sum_of_ratios`). **A new loss is one
  class implementing this method** (see ``docs/custom_loss.md``); counts carry no gradient,
  which is what lets the replicas of ``tf.distribute`` sum them before dividing;
* ``loss_from_pairs(pairs)``: the scalar loss (``sum_of_ratios(ratio_terms(pairs))``).
"""

import keras
from keras import ops

from keras_roadmap import _keras_compat
from keras_roadmap import guard as _guard
from keras_roadmap.losses import _inputs


class RetrievalLoss(keras.losses.Loss):
    """A loss over a whole batch of ``(label, embedding)`` pairs, returning one scalar.

    Subclasses implement ``ratio_terms(pairs)`` (see the module docstring). Two forms share it:

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

    # Before the protocol was public, a custom loss overrode these private names; they still work.
    _LEGACY_NAMES = {"_ratio_terms": "ratio_terms", "_loss_from_pairs": "loss_from_pairs"}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for legacy, public in cls._LEGACY_NAMES.items():
            if legacy in cls.__dict__ and public not in cls.__dict__:
                setattr(cls, public, cls.__dict__[legacy])

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} does not support sample_weight: average precision ranks "
                "every item of the batch against the others, so per-example weights have no "
                "faithful meaning. Remove sample_weight (or class_weight) from fit()/the loss call "
                "and balance classes with a sampler instead."
            )
        if _keras_compat.in_symbolic_scope():
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
        return self.loss_from_pairs(self.batch_pairs(y_true, y_pred))

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
        pairs = self.reference_pairs(y_true, y_pred, ref_y_true, ref_y_pred, self_index, ref_mask)
        context = self._replica_context()
        if context is not None:
            from keras_roadmap import distributed

            return distributed.reference_loss(self, context, pairs)
        return self.loss_from_pairs(pairs)

    def batch_pairs(self, y_true, y_pred):
        """:class:`Pairs` of the batch form: every item queries the batch (see :func:`batch_pairs`)."""
        return batch_pairs(y_true, y_pred, self.dtype, include_self=self.include_self)

    def reference_pairs(self, y_true, y_pred, ref_y_true, ref_y_pred, self_index=None, ref_mask=None):
        """:class:`Pairs` of the queries against a constant reference (see :func:`reference_pairs`)."""
        return reference_pairs(
            y_true,
            y_pred,
            ref_y_true,
            ref_y_pred,
            self.dtype,
            include_self=self.include_self,
            self_index=self_index,
            ref_mask=ref_mask,
        )

    def ratio_terms(self, pairs):
        """The loss of ``pairs`` as ``[(weight, numerator, count), ...]``: ``sum(w * n / max(count, 1))``.

        The one method a new loss implements. ``weight`` is a python float, ``numerator`` and
        ``count`` scalar tensors; counts carry no gradient. Written this way so that, across
        replicas, the counts can be summed before dividing (``keras_roadmap.distributed``) while
        one device divides at once.
        """
        raise NotImplementedError

    def loss_from_pairs(self, pairs):
        """The scalar loss of ``pairs``: :func:`sum_of_ratios` of :meth:`ratio_terms`."""
        return sum_of_ratios(self.ratio_terms(pairs))

    @staticmethod
    def sum_of_ratios(terms, counts=None):
        """:func:`sum_of_ratios`, reachable from any loss (the reduction across replicas uses it)."""
        return sum_of_ratios(terms, counts)

    # The private names of the protocol before it was public, kept for existing callers (an
    # override of the old `_ratio_terms` / `_loss_from_pairs` is honoured by __init_subclass__).
    def _batch_pairs(self, y_true, y_pred):
        return self.batch_pairs(y_true, y_pred)

    def _reference_pairs(self, *args, **kwargs):
        return self.reference_pairs(*args, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "dtype": self.dtype,
            "include_self": self.include_self,
            "gather_across_replicas": self.gather_across_replicas,
        }


def batch_pairs(y_true, y_pred, dtype, *, include_self=True):
    """:class:`Pairs` of a batch that is both the queries and the retrieval set.

    Args:
        y_true: ``(B,)`` or ``(B, 1)`` int labels. y_pred: ``(B, D)`` float embeddings, cast to
            ``dtype``. include_self: False takes each query out of its own retrieval set.
    Raises ValueError (naming the argument) for a bad shape, dtype or non-finite value.
    """
    labels, embeddings = _inputs.prepare_batch(y_true, y_pred, dtype)
    pairs = Pairs(labels, embeddings, labels, embeddings, batch_form=True)
    if not include_self:
        pairs.excluded = ops.arange(ops.shape(embeddings)[0], dtype="int32")
    return pairs


def reference_pairs(
    y_true, y_pred, ref_y_true, ref_y_pred, dtype, *, include_self=True, self_index=None, ref_mask=None
):
    """:class:`Pairs` of the queries ``y_pred`` ``(B, D)`` against a constant reference ``(M, D)``.

    ``self_index`` (``(B,)`` int, -1: none) is the reference row of each query's own copy, left
    out with ``include_self=False``; ``ref_mask`` (``(M,)`` bool) the rows that hold an item.
    """
    labels, embeddings = _inputs.prepare_batch(y_true, y_pred, dtype)
    ref_labels, ref_embeddings = _inputs.prepare_reference(ref_y_true, ref_y_pred, dtype, embeddings)
    pairs = Pairs(labels, embeddings, ref_labels, ref_embeddings, batch_form=False)
    if not include_self and self_index is not None:
        pairs.excluded = ops.reshape(ops.cast(self_index, "int32"), (-1,))
    if ref_mask is not None:
        pairs.ref_valid = ops.reshape(ops.cast(ref_mask, "bool"), (-1,))
    return pairs


def has_reference(ref_y_true, ref_y_pred) -> bool:
    """Whether a functional loss got the reference form; one of the two alone is an error."""
    if (ref_y_true is None) != (ref_y_pred is None):
        given, missing = ("ref_y_true", "ref_y_pred") if ref_y_pred is None else ("ref_y_pred", "ref_y_true")
        raise ValueError(f"{given} was given without {missing}; pass both or neither.")
    return ref_y_pred is not None


def call_loss(loss, y_true, y_pred, ref_y_true, ref_y_pred, self_index=None, ref_mask=None):
    """A functional form's call of its loss object: the batch form, or the reference form."""
    if not has_reference(ref_y_true, ref_y_pred):
        return loss(y_true, y_pred)
    return loss.call_with_reference(y_true, y_pred, ref_y_true, ref_y_pred, self_index, ref_mask)


def loss_pairs(y_true, y_pred, ref_y_true, ref_y_pred, dtype, include_self, self_index, ref_mask):
    """The pairs a functional loss ranks: the batch form without a reference, else the reference form."""
    dtype = dtype or keras.config.floatx()
    if not has_reference(ref_y_true, ref_y_pred):
        return batch_pairs(y_true, y_pred, dtype, include_self=include_self)
    return reference_pairs(
        y_true,
        y_pred,
        ref_y_true,
        ref_y_pred,
        dtype,
        include_self=include_self,
        self_index=self_index,
        ref_mask=ref_mask,
    )


def sum_of_ratios(terms, counts=None):
    """``sum(w * n / max(count, 1))`` over ``terms = [(w, n, count), ...]``.

    ``counts``: optional replacement counts, e.g. summed over replicas (same order as terms).
    """
    total = 0.0
    for k, (weight, numerator, count) in enumerate(terms):
        count = ops.stop_gradient(ops.cast(count if counts is None else counts[k], numerator.dtype))
        total = total + weight * numerator / _inputs.floor_at(count, 1.0)
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

    def against(self, ref_labels, ref_embeddings, self_columns):
        """These queries against another retrieval set in the batch form, e.g. the batch gathered
        across replicas, where query q's own copy is column ``self_columns[q]`` (``(B,)`` int32).
        A query kept out of its own retrieval set here is kept out of that one too."""
        pairs = Pairs(self.labels, self.embeddings, ref_labels, ref_embeddings, batch_form=True)
        pairs.self_columns = self_columns
        if self.excluded is not None:
            pairs.excluded = self_columns
        return pairs

    @property
    def scores(self):
        """``(B, N)`` dot products ``embeddings @ ref_embeddings.T`` (as the paper's code)."""
        if self._scores is None:
            self._scores = _inputs.pairwise_dot(self.embeddings, self.ref_embeddings)
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
