"""Average-precision losses: SupAP (ROADMAP's smooth upper bound), SmoothAP, and exact AP."""

import functools

import keras
from keras import ops

from keras_roadmap import validation
from keras_roadmap.losses import _inputs, average_precision, ranking
from keras_roadmap.losses.base import RetrievalLoss, loss_pairs, sum_of_ratios
from keras_roadmap.losses.parameters import SUPAP_DEFAULTS, SUPAP_PRESETS, SupAPPresets, with_parameters

# SupAP settings of the paper's iNaturalist-2018 configuration (the others use the defaults).
INATURALIST_SUPAP = SUPAP_PRESETS["inaturalist"]


def check_tau(tau):
    """Raise TypeError/ValueError unless the sigmoid temperature ``tau`` is a number > 0."""
    validation.number("tau", tau, minimum=0, min_open=True)


def per_query_ap(pairs, pos_step, neg_step, positive_step_has_gradient, pairs_per_chunk):
    """AP of each query of ``pairs`` (a :class:`~keras_roadmap.losses.base.Pairs`).

    Returns:
        ``(ap, has_positive)``: ``(B,)`` float (0 where there is no positive) and ``(B,)`` bool.
    """
    if average_precision.holds_dense_scores(pairs.embeddings.shape[0], pairs.ref_embeddings.shape[0]):
        scores = pairs.scores
    else:
        scores = (pairs.embeddings, pairs.ref_embeddings)
    sums, num_positives = average_precision.ap_sums(
        scores,
        pairs.labels,
        pairs.ref_labels,
        pos_step,
        neg_step,
        excluded=pairs.excluded,
        ref_valid=pairs.ref_valid,
        positive_step_has_gradient=positive_step_has_gradient,
        pairs_per_chunk=pairs_per_chunk,
    )
    return sums / _inputs.floor_at(num_positives, 1.0), ops.greater(num_positives, 0)


def mean_ap_terms(ap, has_positive):
    """``1 - mean AP`` over the queries that have a positive (0 when none has one), as one ratio."""
    valid = ops.cast(has_positive, ap.dtype)
    return [(1.0, ops.sum((1.0 - ap) * valid), ops.sum(valid))]


def supap_steps(tau, rho, delta, start, offset):
    """SupAP's ``(positive step, negative step)``: exact Heaviside, then the smooth upper bound."""
    negative = functools.partial(
        ranking.supap_negative_step,
        tau=float(tau),
        rho=float(rho),
        delta=float(delta),
        start=float(start),
        offset=float(offset),
    )
    return ranking.heaviside_step, negative


def smooth_ap_steps(tau):
    """SmoothAP's steps: ``sigmoid(t / tau)`` for positives and negatives alike."""
    step = functools.partial(ranking.clamped_sigmoid_step, tau=float(tau))
    return step, step


def supap_terms(pairs, *, pairs_per_chunk=None, **supap):
    """SupAP of ``pairs`` as ratio terms; ``supap``: the five parameters (see ``SUPAP_DEFAULTS``)."""
    check_tau(supap["tau"])
    return mean_ap_terms(*per_query_ap(pairs, *supap_steps(**supap), False, pairs_per_chunk))


def smooth_ap_terms(pairs, *, tau, pairs_per_chunk=None):
    """SmoothAP of ``pairs`` as ratio terms."""
    check_tau(tau)
    return mean_ap_terms(*per_query_ap(pairs, *smooth_ap_steps(tau), True, pairs_per_chunk))


class _SmoothRankAPLoss(RetrievalLoss):
    """Common part of the AP losses: ``1 - mean over queries of AP`` with a smooth rank."""

    positive_step_has_gradient = True

    def __init__(
        self, tau=None, *, include_self=True, pairs_per_chunk=None, gather_across_replicas=True, name=None, dtype=None
    ):
        super().__init__(
            include_self=include_self, gather_across_replicas=gather_across_replicas, name=name, dtype=dtype
        )
        self.tau = validation.number("tau", tau, owner=type(self).__name__, minimum=0, min_open=True, allow_none=True)
        self.pairs_per_chunk = validation.integer(
            "pairs_per_chunk", pairs_per_chunk, owner=type(self).__name__, minimum=1, allow_none=True
        )

    def _steps(self):
        raise NotImplementedError

    def _per_query(self, pairs):
        pos_step, neg_step = self._steps()
        return per_query_ap(pairs, pos_step, neg_step, self.positive_step_has_gradient, self.pairs_per_chunk)

    def ratio_terms(self, pairs):
        """``[(1, sum over queries with a positive of 1 - AP, their number)]``."""
        return mean_ap_terms(*self._per_query(pairs))

    def average_precision(self, y_true, y_pred, ref_y_true=None, ref_y_pred=None, self_index=None, ref_mask=None):
        """Smoothed AP of each query, ``(B,)``; NaN for a query without positive.

        Without a reference the batch is the retrieval set (as in ``call``); with one, as in
        ``call_with_reference``.
        """
        if ref_y_pred is None:
            pairs = self.batch_pairs(y_true, y_pred)
        else:
            pairs = self.reference_pairs(y_true, y_pred, ref_y_true, ref_y_pred, self_index, ref_mask)
        ap, has_positive = self._per_query(pairs)
        return ops.where(has_positive, ap, ops.full_like(ap, float("nan")))

    def get_config(self):
        return {**super().get_config(), "pairs_per_chunk": self.pairs_per_chunk}


@keras.saving.register_keras_serializable(package="keras_roadmap")
class SupAPLoss(SupAPPresets, _SmoothRankAPLoss):
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
        name: as for ``keras.losses.Loss``.
        dtype: as for ``keras.losses.Loss``; ``dtype="float64"`` computes in float64.

    Call: ``loss(y_true=labels (B,) or (B, 1) int, y_pred=embeddings (B, D))`` -> scalar.

    Example:
    >>> import numpy as np
    >>> emb = np.eye(4, dtype="float32")[[0, 0, 1, 1]]
    >>> float(SupAPLoss()([0, 0, 1, 1], emb))
    0.0
    """

    positive_step_has_gradient = False

    # Signature: (tau, rho, delta, start, offset) from SUPAP_DEFAULTS, then the keywords below.
    @with_parameters(SUPAP_DEFAULTS, after="self")
    def __init__(
        self,
        *,
        include_self=True,
        pairs_per_chunk=None,
        gather_across_replicas=True,
        name="supap_loss",
        dtype=None,
        **supap,
    ):
        super().__init__(
            supap["tau"],
            include_self=include_self,
            pairs_per_chunk=pairs_per_chunk,
            gather_across_replicas=gather_across_replicas,
            name=name,
            dtype=dtype,
        )
        validated = validation.supap_parameters(
            owner=type(self).__name__, **{key: supap[key] for key in SUPAP_DEFAULTS}
        )
        for key in SUPAP_DEFAULTS:  # tau too: the base class validated it
            setattr(self, key, validated[key])

    @property
    def supap_parameters(self):
        """``{tau, rho, delta, start, offset}`` of this loss (a new dict)."""
        return {key: getattr(self, key) for key in SUPAP_DEFAULTS}

    def _steps(self):
        return supap_steps(**self.supap_parameters)

    def get_config(self):
        return {**super().get_config(), **self.supap_parameters}


@keras.saving.register_keras_serializable(package="keras_roadmap")
class SmoothAPLoss(_SmoothRankAPLoss):
    """SmoothAP (Brown et al. 2020): ``1 - mAP`` with ``sigmoid(t / tau)`` for every item.

    Args:
        tau: sigmoid temperature (0.01).
        include_self: as for :class:`SupAPLoss`.
        pairs_per_chunk: as for :class:`SupAPLoss`.
        gather_across_replicas: as for :class:`SupAPLoss`.
        name: as for :class:`SupAPLoss`.
        dtype: as for :class:`SupAPLoss`.

    Call: ``loss(y_true=labels (B,) int, y_pred=embeddings (B, D))`` -> scalar.
    """

    def __init__(
        self,
        tau=0.01,
        *,
        include_self=True,
        pairs_per_chunk=None,
        gather_across_replicas=True,
        name="smoothap_loss",
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

    def _steps(self):
        return smooth_ap_steps(self.tau)

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
        labels: ``(B,)`` int.
        embeddings: ``(B, D)`` float.
        reference_labels: optional ``(N,)`` int.
        reference_embeddings: optional ``(N, D)`` float.
    """
    exact = _HeavisideAP(include_self=include_self, dtype=dtype)
    ap = exact.average_precision(labels, embeddings, reference_labels, reference_embeddings, self_index, ref_mask)
    return ops.stop_gradient(ap)


# --- Functional forms: what a JAX or custom-training-loop user calls (the classes wrap the same terms).


@with_parameters(SUPAP_DEFAULTS, after="ref_y_pred")
def supap(
    y_true,
    y_pred,
    ref_y_true=None,
    ref_y_pred=None,
    *,
    self_index=None,
    ref_mask=None,
    include_self=True,
    pairs_per_chunk=None,
    dtype=None,
    **supap_parameters,
):
    """SupAP loss, ROADMAP's smooth upper bound of ``1 - mAP``, of a batch (or of queries
    ranked against a reference set).

    Formula:

    ```python
    t = s_qj - s_qk       # item j against positive k of query q (dot products)
    H_pos(t) = t >= 0     # exact step for positives j (no gradient)
    H_neg(t) = sigmoid(t / tau)                  if t <= 0
             = start + sigmoid(t / tau)          if 0 < t <= delta
             = rho * (t - delta) + offset        if t > delta
    rank_plus(q, k) = 1 + sum_{positives j != k} H_pos(t)
    rank(q, k) = rank_plus(q, k) + sum_{negatives j} H_neg(t)
    AP(q) = mean_{positives k} rank_plus(q, k) / rank(q, k)
    loss = 1 - mean_{queries q with a positive} AP(q)
    ```

    Args:
        y_true: ``(B,)`` or ``(B, 1)`` int class ids of the queries.
        y_pred: ``(B, D)`` float query embeddings.
        ref_y_true, ref_y_pred: optional ``(M,)`` int and ``(M, D)`` float reference set
            (constant, e.g. a cross-batch memory); default None: the batch is its own
            retrieval set.
        tau, rho, delta, start, offset: SupAP parameters (0.01, 100.0, 0.05, 0.5, 1.44;
            iNaturalist: ``**SUPAP_PRESETS["inaturalist"]``), as in :class:`SupAPLoss`.
        self_index, ref_mask: with a reference, as in ``SupAPLoss.call_with_reference``.
        include_self, pairs_per_chunk: as in :class:`SupAPLoss`.
        dtype: computation dtype (default ``keras.config.floatx()``).

    Returns:
        Scalar loss tensor, equal to ``SupAPLoss(...)(y_true, y_pred)`` (or its
        ``call_with_reference``) on one device. Under ``tf.distribute`` this function sees the
        local batch only; the class ranks against the batch gathered across replicas.

    Example:
    >>> import numpy as np
    >>> float(supap([0, 0, 1, 1], np.eye(4, dtype="float32")[[0, 0, 1, 1]]))
    0.0
    """
    pairs = loss_pairs(y_true, y_pred, ref_y_true, ref_y_pred, dtype, include_self, self_index, ref_mask)
    return sum_of_ratios(supap_terms(pairs, pairs_per_chunk=pairs_per_chunk, **supap_parameters))


def smooth_ap(
    y_true,
    y_pred,
    ref_y_true=None,
    ref_y_pred=None,
    tau=0.01,
    *,
    self_index=None,
    ref_mask=None,
    include_self=True,
    pairs_per_chunk=None,
    dtype=None,
):
    """SmoothAP loss (Brown et al. 2020): ``1 - mAP`` with a sigmoid for every step.

    Formula:

    ```python
    t = s_qj - s_qk       # item j against positive k of query q (dot products)
    H(t) = sigmoid(clip(t / tau, -50, 50))
    rank_plus(q, k) = 1 + sum_{positives j != k} H(t)
    rank(q, k) = rank_plus(q, k) + sum_{negatives j} H(t)
    loss = 1 - mean_{queries q with a positive} mean_{positives k} rank_plus / rank
    ```

    Args:
        y_true, y_pred, ref_y_true, ref_y_pred, self_index, ref_mask, include_self,
        pairs_per_chunk, dtype: as for :func:`supap`.
        tau: sigmoid temperature (0.01).

    Returns:
        Scalar loss tensor, equal to ``SmoothAPLoss(tau)(y_true, y_pred)`` on one device.
    """
    pairs = loss_pairs(y_true, y_pred, ref_y_true, ref_y_pred, dtype, include_self, self_index, ref_mask)
    return sum_of_ratios(smooth_ap_terms(pairs, tau=tau, pairs_per_chunk=pairs_per_chunk))
