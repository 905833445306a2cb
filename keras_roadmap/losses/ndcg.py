"""SupNDCG: the smooth upper bound of ``1 - NDCG`` of the journal extension of ROADMAP
("Optimization of Rank Losses for Image Retrieval", Ramzi et al., code ``elias-ramzi/SupRank``).

With binary relevance (a class label per item) the gain of a positive is ``2**1 - 1 = 1``, so
``DCG_q = sum over positives p of 1 / log2(1 + rank_p)`` with SupAP's smooth rank, and the ideal
DCG of ``n`` positives is ``sum_{i=1..n} 1 / log2(1 + i)``. Defaults: ``supndcg.yaml``.
"""

import math

import keras
import numpy as np
from keras import backend, ops

from keras_roadmap import validation
from keras_roadmap.losses import hierarchical, rank_sums
from keras_roadmap.losses.ap_losses import supap_steps
from keras_roadmap.losses.base import RetrievalLoss, loss_pairs, sum_of_ratios
from keras_roadmap.losses.parameters import SUPAP_DEFAULTS, SupAPPresets, with_parameters

_LN2 = math.log(2.0)


def _graded(y_true) -> bool:
    """Whether ``y_true`` holds hierarchical labels ``(B, L)`` with L >= 2 (graded relevance)."""
    shape = getattr(y_true, "shape", None)
    shape = tuple(shape) if shape is not None else np.shape(y_true)
    return len(shape) == 2 and shape[1] is not None and shape[1] >= 2


def ideal_dcg_table(num_items, dtype):
    """``(N,)``: entry ``n - 1`` is the ideal DCG of ``n`` positives, ``sum_{i<=n} 1/log2(1+i)``."""
    positions = ops.cast(ops.arange(1, num_items + 1), dtype)
    gains = _LN2 / ops.log1p(positions)
    if backend.backend() == "torch":
        # Keras 3.15's torch cumsum returns float32 for float64 input (its result_type).
        import torch

        return torch.cumsum(gains, dim=0)
    return ops.cumsum(gains)


def ndcg_pair_fn(num_items, dtype):
    """``f(rank+, rank, n) = (1 / log2(1 + rank)) / IDCG(n)`` and its derivatives."""
    table = ideal_dcg_table(num_items, dtype)

    def pair_fn(rank_plus, rank, num_positives):
        index = ops.maximum(ops.cast(num_positives, "int32") - 1, 0)
        ideal = ops.take(table, index)
        log1p = ops.log1p(rank)
        value = (_LN2 / log1p) / ideal
        d_rank = -_LN2 / (ops.square(log1p) * (1.0 + rank)) / ideal
        return value, ops.zeros_like(rank), d_rank

    return pair_fn


def supndcg_terms(pairs, *, pairs_per_chunk=None, **supap):
    """SupNDCG of ``pairs`` as ratio terms: ``1 - mean NDCG`` over queries with a positive."""
    pos_step, neg_step = supap_steps(**supap)
    pair_fn = ndcg_pair_fn(ops.shape(pairs.ref_labels)[0], pairs.embeddings.dtype)
    sums, num_positives = rank_sums.rank_function_sums(
        pairs,
        pos_step,
        neg_step,
        pair_fn,
        positive_step_has_gradient=False,
        pairs_per_chunk=pairs_per_chunk,
    )
    return rank_sums.mean_score_terms(sums, num_positives)


@keras.saving.register_keras_serializable(package="keras_roadmap")
class SupNDCGLoss(SupAPPresets, RetrievalLoss):
    """SupNDCG: ``1 - mean over queries of a smooth NDCG``.

    For query q with positives P (itself included, as in the official code)::

        NDCG_q = sum_{p in P} 1 / log2(1 + rank_p)  /  sum_{i=1..|P|} 1 / log2(1 + i)
        loss = 1 - mean_q NDCG_q

    where ``rank_p`` is SupAP's smooth rank (an upper bound of the rank, so ``1 - NDCG_q`` is
    bounded from above). With hierarchical labels ``y_true`` ``(B, L)``, L >= 2, coarse to fine
    (the official ``hierarchy_level: MULTI`` of ``supndcg.yaml`` / ``roadndcg_sop.yaml``), the
    relevance is graded: an item sharing l levels with the query has gain ``2**l - 1``, its rank
    takes SupAP's bound for the items of lower level and the exact step for the others, and the
    ideal DCG sorts the items by level (:func:`keras_roadmap.losses.hierarchical.graded_ndcg_per_query`;
    unknown ids and replicas as for :class:`HAPLoss`).

    Args:
        tau: (with rho, delta, start, offset) SupAP's rank parameters (0.01, 100.0, 0.05, 0.5, 1.44,
            ``suprank/config/loss/supndcg.yaml``; ``SupNDCGLoss.inaturalist()``: start 0.0,
            offset 1.0, ``supndcg_inat.yaml``).
        include_self: (with pairs_per_chunk, gather_across_replicas, name, dtype) as for
            :class:`SupAPLoss`. A query without positive is left out of the mean.

    Call: ``loss(y_true=labels (B,) or (B, L) int, y_pred=embeddings (B, D))`` -> scalar;
    ``call_with_reference`` ranks against a reference set (e.g. a ``CrossBatchMemory``).
    """

    @with_parameters(SUPAP_DEFAULTS, after="self")
    def __init__(
        self,
        *,
        include_self=True,
        pairs_per_chunk=None,
        gather_across_replicas=True,
        name="supndcg_loss",
        dtype=None,
        **supap,
    ):
        super().__init__(
            include_self=include_self, gather_across_replicas=gather_across_replicas, name=name, dtype=dtype
        )
        owner = type(self).__name__
        self.supap_parameters = validation.supap_parameters(owner=owner, **supap)
        self.pairs_per_chunk = validation.integer(
            "pairs_per_chunk", pairs_per_chunk, owner=owner, minimum=1, allow_none=True
        )

    def ratio_terms(self, pairs):
        """``[(1, sum over queries with a positive of 1 - NDCG, their number)]``."""
        if isinstance(pairs, hierarchical._HierarchicalPairs):
            ndcg, has_positive = hierarchical.graded_ndcg_per_query(
                pairs.scores,
                pairs.labels,
                pairs.ref_labels,
                excluded=pairs.excluded,
                ref_valid=pairs.ref_valid,
                pairs_per_chunk=self.pairs_per_chunk,
                **self.supap_parameters,
            )
            valid = ops.cast(has_positive, ndcg.dtype)
            return [(1.0, ops.sum((1.0 - ndcg) * valid), ops.sum(valid))]
        return supndcg_terms(pairs, pairs_per_chunk=self.pairs_per_chunk, **self.supap_parameters)

    def call(self, y_true, y_pred):
        if _graded(y_true):
            pairs = self._hierarchical().batch_pairs(y_true, y_pred)
            pairs.batch_form = True
            return self.loss_from_pairs(pairs)
        return super().call(y_true, y_pred)

    def call_with_reference(self, y_true, y_pred, ref_y_true, ref_y_pred, self_index=None, ref_mask=None):
        if _graded(y_true):
            pairs = self._hierarchical().reference_pairs(y_true, y_pred, ref_y_true, ref_y_pred, self_index, ref_mask)
            pairs.batch_form = False
            return self.loss_from_pairs(pairs)
        return super().call_with_reference(y_true, y_pred, ref_y_true, ref_y_pred, self_index, ref_mask)

    def _hierarchical(self):
        # HAPLoss's label checks and pairs (each replica ranks its own batch, as HAPLoss does).
        return hierarchical.HAPLoss(include_self=self.include_self, dtype=self.dtype)

    def get_config(self):
        return {**super().get_config(), **self.supap_parameters, "pairs_per_chunk": self.pairs_per_chunk}


@with_parameters(SUPAP_DEFAULTS, after="ref_y_pred")
def supndcg(
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
    **supap,
):
    """SupNDCG loss of a batch (or of queries ranked against a reference set): the functional
    form of :class:`SupNDCGLoss` (same arguments, one device).

    Example:
    >>> import numpy as np
    >>> # tied positives: each ranks the other first (H(0) = 1), so both have rank 2
    >>> round(float(supndcg([0, 0, 1, 1], np.eye(4, dtype="float32")[[0, 0, 1, 1]])), 4)
    0.2263
    """
    pairs = loss_pairs(y_true, y_pred, ref_y_true, ref_y_pred, dtype, include_self, self_index, ref_mask)
    return sum_of_ratios(supndcg_terms(pairs, pairs_per_chunk=pairs_per_chunk, **supap))
