"""SupRecall@k: the smooth upper bound of ``1 - recall@k`` of the journal extension of ROADMAP
("Optimization of Rank Losses for Image Retrieval", Ramzi et al., code ``elias-ramzi/SupRank``).

Each positive's rank is SupAP's smooth rank (exact step for positives, SupAP's upper bound for
negatives); recall@k of a query is ``sum over positives p of sigmoid((k - rank_p) / temp) /
min(|P|, k)``, averaged over the k set. Defaults: ``suprank/config/loss/suprecall.yaml``.
"""

import keras
from keras import ops

from keras_roadmap import validation
from keras_roadmap.losses import rank_sums, ranking
from keras_roadmap.losses.ap_losses import supap_steps
from keras_roadmap.losses.base import RetrievalLoss, loss_pairs, sum_of_ratios
from keras_roadmap.losses.calibration import calibration_pair_terms
from keras_roadmap.losses.parameters import CALIBRATION_DEFAULTS, SUPAP_DEFAULTS, SupAPPresets, with_parameters
from keras_roadmap.losses.roadmap import weighted_terms

# suprank/config/loss/suprecall.yaml: `at_k: [1, 2, 4, 8, 16]`, `temp: 1.0`.
RECALL_DEFAULTS = {"at_k": (1, 2, 4, 8, 16), "temp": 1.0}
# suprank/config/loss/ROADRatk_SOP.yaml: SupRecall + CalibrationLoss with `weight:` empty, which
# suprank/getter.py turns into equal weights 1 / len(losses).
WITH_CALIBRATION_WEIGHTS = {"recall_weight": 0.5, "calibration_weight": 0.5}


def check_at_k(at_k, owner=None):
    """The k set as a tuple of ints >= 1 (non-empty); raises ValueError naming ``at_k``."""
    if isinstance(at_k, (int, float)) and not isinstance(at_k, bool):
        at_k = (at_k,)
    try:
        values = tuple(at_k)
    except TypeError:
        raise TypeError(
            f"{owner or 'SupRecallLoss'}: at_k must be a list of ints >= 1, e.g. [1, 2, 4, 8, 16]; got {at_k!r}."
        ) from None
    if not values:
        raise ValueError(f"{owner or 'SupRecallLoss'}: at_k must hold at least one k, got {at_k!r}.")
    return tuple(validation.integer("at_k", k, owner=owner, minimum=1) for k in values)


def recall_pair_fn(at_k, temp):
    """``f(rank+, rank, n) = mean over k of sigmoid((k - rank) / temp) / min(n, k)`` and its
    derivatives (the official ``compute_recall_loss``, its sigmoid clamped at +-50 as there)."""
    at_k = tuple(float(k) for k in at_k)

    def pair_fn(rank_plus, rank, num_positives):
        value = ops.zeros_like(rank)
        d_rank = ops.zeros_like(rank)
        for k in at_k:
            sig, dsig = ranking.clamped_sigmoid_step(k - rank, temp)
            norm = ops.maximum(ops.minimum(num_positives, k), 1.0)
            value = value + sig / norm
            d_rank = d_rank - dsig / norm
        scale = 1.0 / len(at_k)
        return value * scale, ops.zeros_like(rank), d_rank * scale

    return pair_fn


def suprecall_terms(pairs, *, at_k, temp, pairs_per_chunk=None, **supap):
    """SupRecall@k of ``pairs`` as ratio terms: ``1 - mean recall`` over queries with a positive."""
    pos_step, neg_step = supap_steps(**supap)
    sums, num_positives = rank_sums.rank_function_sums(
        pairs,
        pos_step,
        neg_step,
        recall_pair_fn(at_k, float(temp)),
        positive_step_has_gradient=False,
        pairs_per_chunk=pairs_per_chunk,
    )
    return rank_sums.mean_score_terms(sums, num_positives)


@keras.saving.register_keras_serializable(package="keras_roadmap")
class SupRecallLoss(SupAPPresets, RetrievalLoss):
    """SupRecall@k: ``1 - mean over queries of the smooth recall@k``, averaged over a k set.

    For query q with positives P (itself included, as in the official code and
    :class:`SupAPLoss`), ``rank_p`` is SupAP's smooth rank of positive p and::

        recall_q = mean_{k in at_k} sum_{p in P} sigmoid((k - rank_p) / temp) / min(|P|, k)
        loss = recall_weight * (1 - mean_q recall_q) + calibration_weight * calibration

    Args:
        at_k: the k set (``(1, 2, 4, 8, 16)``, ``suprecall.yaml``; ``suprecall_at_10.yaml``: ``[10]``).
        temp: temperature of the sigmoid around k (1.0).
        tau: (with rho, delta, start, offset) SupAP's rank parameters (0.01, 100.0, 0.05, 0.5, 1.44;
            ``SupRecallLoss.inaturalist()``: start 0.0, offset 1.0, ``suprecall_inat.yaml``).
        pos_margin: (with neg_margin) margins of the calibration term (0.9, 0.6, ``ROADRatk_SOP.yaml``).
        recall_weight: (with calibration_weight) weights of the two terms (1.0 and 0.0: SupRecall
            alone, ``suprecall.yaml``). ``SupRecallLoss.with_calibration()`` gives 0.5 / 0.5, the
            official ``ROADRatk_SOP.yaml`` (its empty ``weight:`` means equal weights).
        include_self: (with pairs_per_chunk, gather_across_replicas, name, dtype) as for
            :class:`SupAPLoss`. Classes of any sizes work (the official batch path needs equal
            ones); a query without positive is left out of the mean.

    Call: ``loss(y_true=labels (B,) int, y_pred=embeddings (B, D))`` -> scalar;
    ``call_with_reference`` ranks against a reference set (e.g. a ``CrossBatchMemory``).
    """

    @with_parameters(SUPAP_DEFAULTS, CALIBRATION_DEFAULTS, after="temp")
    def __init__(
        self,
        at_k=RECALL_DEFAULTS["at_k"],
        temp=RECALL_DEFAULTS["temp"],
        recall_weight=1.0,
        calibration_weight=0.0,
        *,
        include_self=True,
        pairs_per_chunk=None,
        gather_across_replicas=True,
        name="suprecall_loss",
        dtype=None,
        **parameters,
    ):
        super().__init__(
            include_self=include_self, gather_across_replicas=gather_across_replicas, name=name, dtype=dtype
        )
        owner = type(self).__name__
        self.at_k = check_at_k(at_k, owner)
        self.temp = validation.number("temp", temp, owner=owner, minimum=0, min_open=True)
        self.supap_parameters = validation.supap_parameters(owner=owner, **{k: parameters[k] for k in SUPAP_DEFAULTS})
        pos, neg = validation.margins(parameters["pos_margin"], parameters["neg_margin"], owner=owner)
        self.margins = {"pos_margin": pos, "neg_margin": neg}
        self.recall_weight, self.calibration_weight = validation.loss_weights(
            recall_weight=recall_weight, calibration_weight=calibration_weight, owner=owner
        )
        self.pairs_per_chunk = validation.integer(
            "pairs_per_chunk", pairs_per_chunk, owner=owner, minimum=1, allow_none=True
        )

    @classmethod
    def with_calibration(cls, **kwargs):
        """SupRecall@k + calibration with the official ``ROADRatk_SOP.yaml`` weights (0.5 / 0.5)."""
        return cls(**{**WITH_CALIBRATION_WEIGHTS, **kwargs})

    def ratio_terms(self, pairs):
        """SupRecall's ratio (weighted) and, with a calibration weight, the calibration's."""
        return weighted_terms(
            (
                self.recall_weight,
                lambda: suprecall_terms(
                    pairs, at_k=self.at_k, temp=self.temp, pairs_per_chunk=self.pairs_per_chunk, **self.supap_parameters
                ),
            ),
            (self.calibration_weight, lambda: calibration_pair_terms(pairs, **self.margins)),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "at_k": list(self.at_k),
            "temp": self.temp,
            **self.supap_parameters,
            **self.margins,
            "recall_weight": self.recall_weight,
            "calibration_weight": self.calibration_weight,
            "pairs_per_chunk": self.pairs_per_chunk,
        }


@with_parameters(SUPAP_DEFAULTS, CALIBRATION_DEFAULTS, after="temp")
def suprecall(
    y_true,
    y_pred,
    ref_y_true=None,
    ref_y_pred=None,
    at_k=RECALL_DEFAULTS["at_k"],
    temp=RECALL_DEFAULTS["temp"],
    recall_weight=1.0,
    calibration_weight=0.0,
    *,
    self_index=None,
    ref_mask=None,
    include_self=True,
    pairs_per_chunk=None,
    dtype=None,
    **parameters,
):
    """SupRecall@k loss of a batch (or of queries ranked against a reference set): the
    functional form of :class:`SupRecallLoss` (same arguments, one device).

    Example:
    >>> import numpy as np
    >>> round(float(suprecall([0, 0, 1, 1], np.eye(4, dtype="float32")[[0, 0, 1, 1]])), 4)  # temp 1: never 0
    0.2168
    """
    pairs = loss_pairs(y_true, y_pred, ref_y_true, ref_y_pred, dtype, include_self, self_index, ref_mask)
    at_k = check_at_k(at_k, "suprecall")
    supap = {key: parameters[key] for key in SUPAP_DEFAULTS}
    margins = {key: parameters[key] for key in CALIBRATION_DEFAULTS}
    return sum_of_ratios(
        weighted_terms(
            (
                float(recall_weight),
                lambda: suprecall_terms(pairs, at_k=at_k, temp=temp, pairs_per_chunk=pairs_per_chunk, **supap),
            ),
            (float(calibration_weight), lambda: calibration_pair_terms(pairs, **margins)),
        )
    )
