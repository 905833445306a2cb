"""Average-precision losses: SupAP (ROADMAP's smooth upper bound), SmoothAP, and exact AP."""

import functools

import keras
from keras import ops

from keras_roadmap import validation
from keras_roadmap.losses import ranking
from keras_roadmap.losses.average_precision import ap_sums
from keras_roadmap.losses.base import RetrievalLoss

# SupAP settings of the paper's iNaturalist-2018 configuration (the others use the defaults).
INATURALIST_SUPAP = {"start": 0.0, "offset": 1.0}


def per_query_ap(pairs, pos_step, neg_step, positive_step_has_gradient, pairs_per_chunk):
    """AP of each query of ``pairs`` (a :class:`~keras_roadmap.losses.base.Pairs`).

    Returns:
        ``(ap, has_positive)``: ``(B,)`` float (0 where there is no positive) and ``(B,)`` bool.
    """
    sums, num_positives = ap_sums(
        pairs.scores,
        pairs.labels,
        pairs.ref_labels,
        pos_step,
        neg_step,
        excluded=pairs.excluded,
        ref_valid=pairs.ref_valid,
        positive_step_has_gradient=positive_step_has_gradient,
        pairs_per_chunk=pairs_per_chunk,
    )
    return sums / ops.maximum(num_positives, 1.0), ops.greater(num_positives, 0)


def mean_ap_terms(ap, has_positive):
    """``1 - mean AP`` over the queries that have a positive (0 when none has one), as one ratio."""
    valid = ops.cast(has_positive, ap.dtype)
    return [(1.0, ops.sum((1.0 - ap) * valid), ops.sum(valid))]


class _SmoothRankAPLoss(RetrievalLoss):
    """Common part of the AP losses: ``1 - mean over queries of AP`` with a smooth rank."""

    positive_step_has_gradient = True

    def __init__(
        self, tau=None, *, include_self=True, pairs_per_chunk=None, gather_across_replicas=True, name=None, dtype=None
    ):
        super().__init__(include_self=include_self, gather_across_replicas=gather_across_replicas, name=name, dtype=dtype)
        self.tau = validation.number("tau", tau, owner=type(self).__name__, minimum=0, min_open=True, allow_none=True)
        self.pairs_per_chunk = validation.integer("pairs_per_chunk", pairs_per_chunk, owner=type(self).__name__, minimum=1, allow_none=True)

    def _steps(self):
        raise NotImplementedError

    def _per_query(self, pairs):
        pos_step, neg_step = self._steps()
        return per_query_ap(pairs, pos_step, neg_step, self.positive_step_has_gradient, self.pairs_per_chunk)

    def _ratio_terms(self, pairs):
        return mean_ap_terms(*self._per_query(pairs))

    def average_precision(self, y_true, y_pred, ref_y_true=None, ref_y_pred=None, self_index=None, ref_mask=None):
        """Smoothed AP of each query, ``(B,)``; NaN for a query without positive.

        Without a reference the batch is the retrieval set (as in ``call``); with one, as in
        ``call_with_reference``.
        """
        if ref_y_pred is None:
            pairs = self._batch_pairs(y_true, y_pred)
        else:
            pairs = self._reference_pairs(y_true, y_pred, ref_y_true, ref_y_pred, self_index, ref_mask)
        ap, has_positive = self._per_query(pairs)
        return ops.where(has_positive, ap, ops.full_like(ap, float("nan")))

    def get_config(self):
        return {**super().get_config(), "pairs_per_chunk": self.pairs_per_chunk}


@keras.saving.register_keras_serializable(package="keras_roadmap")
class SupAPLoss(_SmoothRankAPLoss):
    """SupAP: ``1 - mAP`` with ROADMAP's smooth upper bound of the rank (Ramzi et al. 2021).

    The step counting how much an item j ranks before a positive k (``t = s_j - s_k``) is the
    exact Heaviside for positives j (no gradient flows through positives) and, for negatives,
    ``sigmoid(t / tau)`` for ``t <= 0``, ``start + sigmoid(t / tau)`` for ``0 < t <= delta`` and
    ``rho * (t - delta) + offset`` above: an upper bound of the true rank, hence of ``1 - AP``.

    Args:
        tau: sigmoid temperature (0.01).
        rho: slope of the linear piece (100.0).
        delta: where the linear piece starts (0.05).
        start: offset added in ``(0, delta]`` (0.5).
        offset: value of the linear piece at ``delta`` (1.44).
            iNaturalist: ``SupAPLoss(start=0.0, offset=1.0)``, or ``SupAPLoss.inaturalist()``.
        include_self: True (default) reproduces the paper's code, where each query is part of
            its own retrieval set (its own top positive). False gives the textbook AP over the
            other items; a query without any other positive is then left out of the mean, and a
            batch without any positive pair gives 0.
        pairs_per_chunk: (query, positive) pairs ranked per loop step; memory is
            ``O(pairs_per_chunk * N)``. None (default) picks about 2**20 scores per step.
        gather_across_replicas: under ``tf.distribute`` with several replicas, rank each
            replica's queries against the gathered global batch (True, default) or only against
            its own examples (see :class:`~keras_roadmap.losses.RetrievalLoss`).
        name, dtype: as for ``keras.losses.Loss``; ``dtype="float64"`` computes in float64.

    Call: ``loss(y_true=labels (B,) or (B, 1) int, y_pred=embeddings (B, D))`` -> scalar.

    Example:
    >>> import numpy as np
    >>> emb = np.eye(4, dtype="float32")[[0, 0, 1, 1]]
    >>> float(SupAPLoss()([0, 0, 1, 1], emb))
    0.0
    """

    positive_step_has_gradient = False

    def __init__(
        self,
        tau=0.01,
        rho=100.0,
        delta=0.05,
        start=0.5,
        offset=1.44,
        *,
        include_self=True,
        pairs_per_chunk=None,
        gather_across_replicas=True,
        name="supap_loss",
        dtype=None,
    ):
        super().__init__(
            tau,
            include_self=include_self,
            pairs_per_chunk=pairs_per_chunk,
            gather_across_replicas=gather_across_replicas,
            name=name,
            dtype=dtype,
        )
        self.rho, self.delta = validation.supap_slopes(rho, delta, owner=type(self).__name__)
        self.start, self.offset = validation.number("start", start, owner=type(self).__name__), validation.number("offset", offset, owner=type(self).__name__)

    @classmethod
    def inaturalist(cls, **kwargs):
        """SupAP with the paper's iNaturalist-2018 settings (``start=0.0, offset=1.0``)."""
        return cls(**{**INATURALIST_SUPAP, **kwargs})

    def _steps(self):
        negative = functools.partial(
            ranking.supap_negative_step, tau=self.tau, rho=self.rho, delta=self.delta, start=self.start, offset=self.offset
        )
        return ranking.heaviside_step, negative

    def get_config(self):
        return {
            **super().get_config(),
            "tau": self.tau,
            "rho": self.rho,
            "delta": self.delta,
            "start": self.start,
            "offset": self.offset,
        }


@keras.saving.register_keras_serializable(package="keras_roadmap")
class SmoothAPLoss(_SmoothRankAPLoss):
    """SmoothAP (Brown et al. 2020): ``1 - mAP`` with ``sigmoid(t / tau)`` for every item.

    Args:
        tau: sigmoid temperature (0.01).
        include_self, pairs_per_chunk, gather_across_replicas, name, dtype: as for :class:`SupAPLoss`.

    Call: ``loss(y_true=labels (B,) int, y_pred=embeddings (B, D))`` -> scalar.
    """

    def __init__(
        self, tau=0.01, *, include_self=True, pairs_per_chunk=None, gather_across_replicas=True, name="smoothap_loss", dtype=None
    ):
        super().__init__(
            tau,
            include_self=include_self,
            pairs_per_chunk=pairs_per_chunk,
            gather_across_replicas=gather_across_replicas,
            name=name,
            dtype=dtype,
        )

    def _steps(self):
        step = functools.partial(ranking.clamped_sigmoid_step, tau=self.tau)
        return step, step

    def get_config(self):
        return {**super().get_config(), "tau": self.tau}


class _HeavisideAP(_SmoothRankAPLoss):
    positive_step_has_gradient = False

    def _steps(self):
        return ranking.heaviside_step, ranking.heaviside_step


def heaviside_average_precision(
    labels,
    embeddings,
    reference_labels=None,
    reference_embeddings=None,
    *,
    include_self=True,
    self_index=None,
    ref_mask=None,
    dtype="float32",
):
    """Exact (non-smooth) AP of each query, as a ``(B,)`` tensor (NaN without a positive).

    Ties are pessimistic: an item scored equal to a positive counts as ranked before it. By
    default (as in the paper's code) each query belongs to its own retrieval set; see
    :class:`SupAPLoss` for ``include_self``. With a reference set, queries are ranked against it
    (``self_index``: the reference row of each query's own copy, -1 if none, used with
    ``include_self=False``). No gradient: for tests and evaluation on moderate sizes; use
    ``keras_roadmap.evaluation`` for whole datasets.

    Args:
        labels: ``(B,)`` int. embeddings: ``(B, D)`` float.
        reference_labels, reference_embeddings: optional ``(N,)`` and ``(N, D)``.
    """
    exact = _HeavisideAP(include_self=include_self, dtype=dtype)
    ap = exact.average_precision(labels, embeddings, reference_labels, reference_embeddings, self_index, ref_mask)
    return ops.stop_gradient(ap)
