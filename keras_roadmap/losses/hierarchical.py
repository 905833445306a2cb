"""HAPPIER's hierarchical average precision loss (Ramzi et al., ECCV 2022).

Labels are ``(B, L)`` integer ids, **coarse to fine**: column 0 the coarsest level (e.g. SOP's
super-class), column ``L - 1`` the finest (the class). The official code stores SOP's labels
fine first (``[class, super_class]``); its label matrix counts the equal columns, so for labels
that form a tree both orders give the same numbers.

* **Level** of item j for query q: the depth of their deepest common ancestor, i.e. the number
  of leading (coarse-to-fine) columns on which they agree, 0..L. A negative id means "unknown at
  this level": the item is then its own singleton there (it agrees with no other item, only with
  itself), so its finer columns never count.
* **Relevance** (the official ``pop`` relevance with ``alpha``): ``rel(q, j) = w(level) / n_q(level)``
  with ``w(l) = (l / (L - 1)) ** alpha`` (``l ** alpha`` when L = 1, where the official formula
  divides by zero; the loss does not depend on the scale of w) and ``n_q(l)`` the number of items
  of q's retrieval set at level l.
* **H-AP** of q: ``sum_k hrank(k) / rank(k) / sum_k rel(q, k)`` over the items k with level >= 1,
  ``rank(k) = 1 + sum_{j != k} H(s_j - s_k)`` with SupAP's smooth upper bound of the step for items
  j of lower level than k and the exact Heaviside (H(0) = 1) for the others, and
  ``hrank(k) = rel(q, k) + sum_{j != k} H(s_j - s_k) min(rel(q, j), rel(q, k))`` (exact step: no
  gradient, as the official ``with_hrank=False``).
* Loss: ``1 - mean over queries of H-AP`` (queries with no item of level >= 1 are left out).
"""

import keras
import numpy as np
from keras import ops

from keras_roadmap import validation
from keras_roadmap.losses import _inputs, _pair_kernel, ranking
from keras_roadmap.losses.average_precision import _membership, label_segments
from keras_roadmap.losses.base import RetrievalLoss, call_loss, sum_of_ratios

# The official HAPLoss kwargs of config/loss/HAPPIER.yaml (SOP, DyML): tau, rho, offset, delta, start.
HAPPIER_DEFAULTS = {"tau": 0.01, "rho": 100.0, "offset": 1.44, "delta": 0.05, "start": 0.5}
# config/loss/HAPPIER_inat.yaml: offset 1.0, start 0.0.
HAPPIER_INATURALIST = {**HAPPIER_DEFAULTS, "offset": 1.0, "start": 0.0}
# config/dataset/*.yaml `alpha` (relevance_type: pop).
DEFAULT_ALPHA = 1.0


def prepare_hierarchical_labels(labels, *, batch_size=None, what="y_true"):
    """Integer labels ``(B, L)`` (a ``(B,)`` vector is one level). Raises ValueError naming ``what``."""
    if isinstance(labels, (list, tuple, np.ndarray)):
        labels = np.asarray(labels)
    labels = ops.convert_to_tensor(labels)
    dtype = _inputs._dtype_name(labels)
    shape = tuple(labels.shape)
    if not _inputs._is_integer_dtype(dtype):
        raise ValueError(f"{what} must hold integer class ids per level, got dtype {dtype} (shape {shape}).")
    if len(shape) == 1:
        labels = ops.reshape(labels, (-1, 1))
    elif len(shape) != 2 or shape[1] == 0:
        raise ValueError(f"{what} must have shape (batch, levels) with coarse-to-fine integer ids, got shape {shape}.")
    n = labels.shape[0]
    if batch_size is not None and n is not None and n != batch_size:
        raise ValueError(f"{what} has {n} rows but the embeddings have {batch_size}: give one label row per embedding.")
    return ops.cast(labels, "int32")


def singleton_unknowns(labels, first_id):
    """Labels with each negative (unknown) id replaced by an id no other row has (``-(first_id + row)``,
    below every real id), so an unknown level matches only the row itself."""
    rows = ops.expand_dims(ops.arange(ops.shape(labels)[0], dtype="int32"), 1)
    return ops.where(ops.less(labels, 0), -(first_id + rows) - 1, labels)


def common_depth(labels, ref_labels):
    """``(C, N)`` int32: number of leading columns on which ``labels`` ``(C, L)`` and ``ref_labels``
    ``(N, L)`` agree."""
    equal = ops.cast(ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(ref_labels, 0)), "int32")
    return ops.sum(ops.cumprod(equal, axis=2), axis=2)


def level_weights(num_levels, alpha, dtype):
    """``(L + 1,)`` ``w(l) = (l / (L - 1)) ** alpha`` (``l ** alpha`` for L = 1), w(0) = 0."""
    levels = np.arange(num_levels + 1, dtype=np.float64)
    scale = float(num_levels - 1) if num_levels > 1 else 1.0
    return ops.convert_to_tensor((levels / scale) ** float(alpha), dtype=dtype)


def level_counts(labels, ref_labels, num_levels, excluded, ref_valid, dtype, block=None):
    """``(B, L + 1)`` number of retrieval-set items at each level of each query, by blocks of queries."""
    batch, num_items = labels.shape[0], ref_labels.shape[0]
    block = int(block or max(1, _pair_kernel.DEFAULT_CHUNK_ELEMENTS // max(1, int(num_items or 1) * (num_levels + 1))))
    steps = -(-int(batch) // block) if batch is not None else None
    dynamic_batch = ops.shape(labels)[0]
    columns = ops.expand_dims(ops.arange(ops.shape(ref_labels)[0], dtype="int32"), 0)

    def body(i, counts):
        rows = i * block + ops.arange(block, dtype="int32")
        valid = ops.cast(ops.less(rows, dynamic_batch), dtype)
        rows = ops.minimum(rows, dynamic_batch - 1)
        depth = common_depth(ops.take(labels, rows, axis=0), ref_labels)
        onehot = ops.one_hot(depth, num_levels + 1, dtype=dtype)
        member = _membership(columns, ops.take(excluded, rows) if excluded is not None else None, ref_valid)
        if member is not None:
            onehot = onehot * ops.expand_dims(ops.cast(member, dtype), 2)
        return i + 1, _inputs.add_rows(counts, rows, ops.sum(onehot, axis=1) * ops.expand_dims(valid, 1))

    num_steps = (dynamic_batch + (block - 1)) // block
    _, counts = _inputs.sequential_while_loop(
        lambda i, c: ops.less(i, num_steps),
        body,
        (ops.convert_to_tensor(0, "int32"), ops.zeros((dynamic_batch, num_levels + 1), dtype)),
        maximum_iterations=steps,
    )
    return counts


def hap_per_query(scores, labels, ref_labels, *, alpha, excluded=None, ref_valid=None, pairs_per_chunk=None, **steps):
    """Smooth H-AP of each query and whether it has an item of level >= 1.

    Args:
        scores: ``(B, N)`` float similarities.
        labels: ``(B, L)`` int32, ref_labels: ``(N, L)`` int32, unknown ids already made singletons.
        alpha: relevance exponent. excluded: ``(B,)`` int32 item out of each query's retrieval
            set (-1: none). ref_valid: ``(N,)`` bool. steps: tau, rho, offset, delta, start.
    Returns:
        ``(hap (B,), has_positive (B,) bool)``.
    """
    dtype = scores.dtype
    num_levels = int(labels.shape[1])
    counts = ops.stop_gradient(level_counts(labels, ref_labels, num_levels, excluded, ref_valid, dtype))
    weights = level_weights(num_levels, alpha, dtype)
    present = ops.cast(ops.greater(counts, 0), dtype)
    relevance = ops.expand_dims(weights, 0) / _inputs.floor_at(counts, 1.0) * present  # (B, L + 1)
    total_relevance = ops.sum(ops.expand_dims(weights, 0) * present, axis=1)
    segments = label_segments(labels[:, 0], ref_labels[:, 0], excluded, ref_valid)
    negative_step = _negative_step(**steps)

    def ranks(pairs):
        depth = common_depth(ops.take(labels, pairs.query, axis=0), ref_labels)
        member = _membership(
            pairs.columns, ops.take(excluded, pairs.query) if excluded is not None else None, ref_valid
        )
        member = ops.ones_like(depth, dtype="bool") if member is None else member
        level_k = ops.take_along_axis(depth, ops.expand_dims(pairs.item, 1), axis=1)
        rel_q = ops.take(relevance, pairs.query, axis=0)
        rel_rows = ops.take_along_axis(rel_q, depth, axis=1)
        rel_k = ops.take_along_axis(rel_q, level_k, axis=1)
        others = ops.logical_and(member, ops.equal(pairs.onehot, 0))
        lower = ops.logical_and(others, ops.less(depth, level_k))
        not_lower = ops.logical_and(others, ops.logical_not(lower))
        neg_value, neg_deriv = negative_step(pairs.t)
        step, _ = ranking.heaviside_step(pairs.t)
        zero = ops.zeros_like(pairs.t)
        rank = 1.0 + ops.sum(ops.where(lower, neg_value, zero) + ops.where(not_lower, step, zero), axis=1)
        hrank = rel_k[:, 0] + ops.sum(ops.where(others, step * _elementwise_min(rel_rows, rel_k), zero), axis=1)
        return rank, hrank, ops.where(lower, neg_deriv, zero)

    def terms(pairs):
        rank, hrank, _ = ranks(pairs)
        return ops.expand_dims(hrank / rank, 1)

    def grads(pairs, upstream):
        rank, hrank, lower_deriv = ranks(pairs)
        return ops.expand_dims(-upstream[:, 0] * hrank / (rank * rank), 1) * lower_deriv

    sums = _pair_kernel.pair_sums(
        scores, segments, terms, grads, 1, skip_item=excluded, pairs_per_chunk=pairs_per_chunk
    )[:, 0]
    has_positive = ops.greater(total_relevance, 0)
    return sums / _inputs.floor_at(total_relevance, 1e-30), has_positive


def graded_ndcg_per_query(scores, labels, ref_labels, *, excluded=None, ref_valid=None, pairs_per_chunk=None, **steps):
    """Smooth NDCG of each query with graded relevance (SupRank's SupNDCG, ``hierarchy_level:
    MULTI``) and whether it has an item of level >= 1.

    An item k at level l (the number of levels it shares with the query) has gain ``2**l - 1``;
    ``DCG_q = sum_k gain_k / log2(1 + rank_k)`` with ``rank_k`` HAPLoss's smooth rank (SupAP's
    bound for items of lower level than k, the exact step for the others); ``IDCG_q`` is the DCG
    of the items sorted by level. Arguments as :func:`hap_per_query` (no alpha).

    Returns:
        ``(ndcg (B,), has_positive (B,) bool)``.
    """
    dtype = scores.dtype
    num_levels = int(labels.shape[1])
    num_items = ops.shape(ref_labels)[0]
    counts = ops.stop_gradient(level_counts(labels, ref_labels, num_levels, excluded, ref_valid, dtype))
    gains = ops.convert_to_tensor(2.0 ** np.arange(num_levels + 1) - 1.0, dtype=dtype)  # (L + 1,)
    # Ideal DCG: positions 1.. taken by the finest level first. `discounts[n]` = sum of
    # 1 / log2(1 + i) over i <= n (discounts[0] = 0).
    positions = ops.cast(ops.arange(1, num_items + 1), dtype)
    discounts = ops.concatenate([ops.zeros((1,), dtype), _cumsum(_LN2 / ops.log1p(positions))])
    ideal = ops.zeros_like(counts[:, 0])
    above = ops.zeros_like(counts[:, 0])
    for level in range(num_levels, 0, -1):
        start = ops.cast(above, "int32")
        end = ops.cast(above + counts[:, level], "int32")
        ideal = ideal + gains[level] * (ops.take(discounts, end) - ops.take(discounts, start))
        above = above + counts[:, level]
    segments = label_segments(labels[:, 0], ref_labels[:, 0], excluded, ref_valid)
    negative_step = _negative_step(**steps)

    def ranks(pairs):
        depth = common_depth(ops.take(labels, pairs.query, axis=0), ref_labels)
        member = _membership(
            pairs.columns, ops.take(excluded, pairs.query) if excluded is not None else None, ref_valid
        )
        member = ops.ones_like(depth, dtype="bool") if member is None else member
        level_k = ops.take_along_axis(depth, ops.expand_dims(pairs.item, 1), axis=1)[:, 0]
        others = ops.logical_and(member, ops.equal(pairs.onehot, 0))
        lower = ops.logical_and(others, ops.less(depth, ops.expand_dims(level_k, 1)))
        not_lower = ops.logical_and(others, ops.logical_not(lower))
        neg_value, neg_deriv = negative_step(pairs.t)
        step, _ = ranking.heaviside_step(pairs.t)
        zero = ops.zeros_like(pairs.t)
        rank = 1.0 + ops.sum(ops.where(lower, neg_value, zero) + ops.where(not_lower, step, zero), axis=1)
        return rank, ops.take(gains, level_k), ops.where(lower, neg_deriv, zero)

    def terms(pairs):
        rank, gain, _ = ranks(pairs)
        return ops.expand_dims(gain * _LN2 / ops.log1p(rank), 1)

    def grads(pairs, upstream):
        rank, gain, lower_deriv = ranks(pairs)
        log = ops.log1p(rank)
        d_rank = -gain * _LN2 / (ops.square(log) * (1.0 + rank))
        return ops.expand_dims(upstream[:, 0] * d_rank, 1) * lower_deriv

    dcg = _pair_kernel.pair_sums(scores, segments, terms, grads, 1, skip_item=excluded, pairs_per_chunk=pairs_per_chunk)
    has_positive = ops.greater(ideal, 0)
    return dcg[:, 0] / _inputs.floor_at(ideal, 1e-30), has_positive


_LN2 = float(np.log(2.0))


def _cumsum(x):
    if keras.backend.backend() == "torch":
        # Keras 3.15's torch cumsum returns float32 for float64 input (its result_type).
        import torch

        return torch.cumsum(x, dim=0)
    return ops.cumsum(x)


def _elementwise_min(a, b):
    """``min(a, b)`` in the inputs' dtype (Keras' ``minimum`` promotes float64 to float32 on JAX
    and torch, see ``_inputs.floor_at``)."""
    a, b = a + ops.zeros_like(b), b + ops.zeros_like(a)
    return ops.where(ops.less(a, b), a, b)


def _negative_step(tau, rho, offset, delta, start):
    def step(t):
        return ranking.supap_negative_step(
            t, tau=float(tau), rho=float(rho), delta=float(delta), start=float(start), offset=float(offset)
        )

    return step


class _HierarchicalPairs:
    """Queries and retrieval set with ``(B, L)`` labels (unknown ids made singletons)."""

    def __init__(self, labels, embeddings, ref_labels, ref_embeddings, excluded=None, ref_valid=None):
        self.labels, self.embeddings = labels, embeddings
        self.ref_labels, self.ref_embeddings = ref_labels, ref_embeddings
        self.excluded, self.ref_valid = excluded, ref_valid

    @property
    def scores(self):
        return _inputs.pairwise_dot(self.embeddings, self.ref_embeddings)


@keras.saving.register_keras_serializable(package="keras_roadmap")
class HAPLoss(RetrievalLoss):
    """HAPPIER's H-AP loss: ``1 - mean H-AP`` for hierarchical labels (Ramzi et al., ECCV 2022).

    See the module docstring (and ``docs/hierarchical.md``) for the definitions.

    Args:
        tau: (with rho, offset, delta, start) SupAP's step for items of lower level (0.01, 100.0,
            1.44, 0.05, 0.5: ``config/loss/HAPPIER.yaml``; iNaturalist: ``HAPLoss.inaturalist()``,
            offset 1.0, start 0.0).
        alpha: relevance exponent (1.0, ``config/dataset/*.yaml`` ``alpha``).
        include_self: True (default, the official code) keeps each query in its own retrieval
            set, as an item of the finest level; False leaves it out (a query with no other
            item of level >= 1 is then left out of the mean).
        pairs_per_chunk: (query, item) pairs ranked per loop step (None: about 2**20 scores).
        name: (with dtype) as for ``keras.losses.Loss``; ``dtype="float64"`` computes in float64.

    Call: ``loss(y_true=labels (B, L) int coarse-to-fine, y_pred=embeddings (B, D))`` -> scalar.

    Example:
    >>> import numpy as np
    >>> emb = np.eye(4, dtype="float32")[[0, 0, 1, 1]]
    >>> float(HAPLoss()([[0, 0], [0, 0], [0, 1], [0, 1]], emb))  # classes ranked first: perfect
    0.0
    >>> round(float(HAPLoss()([[0, 0], [0, 1], [0, 0], [0, 1]], emb)), 4)  # a class's images apart
    0.3232
    """

    def __init__(
        self,
        tau=0.01,
        rho=100.0,
        offset=1.44,
        delta=0.05,
        start=0.5,
        alpha=DEFAULT_ALPHA,
        *,
        include_self=True,
        pairs_per_chunk=None,
        name="hap_loss",
        dtype=None,
        gather_across_replicas=False,
    ):
        super().__init__(
            include_self=include_self, gather_across_replicas=gather_across_replicas, name=name, dtype=dtype
        )
        owner = type(self).__name__
        self.tau = validation.number("tau", tau, owner=owner, minimum=0, min_open=True)
        self.rho = validation.number("rho", rho, owner=owner, minimum=0)
        self.offset = validation.number("offset", offset, owner=owner)
        self.delta = validation.number("delta", delta, owner=owner, minimum=0)
        self.start = validation.number("start", start, owner=owner)
        self.alpha = validation.number("alpha", alpha, owner=owner, minimum=0, min_open=True)
        self.pairs_per_chunk = validation.integer(
            "pairs_per_chunk", pairs_per_chunk, owner=owner, minimum=1, allow_none=True
        )

    @classmethod
    def inaturalist(cls, **kwargs):
        """The iNaturalist configuration (``config/loss/HAPPIER_inat.yaml``: offset 1.0, start 0.0)."""
        return cls(**{**HAPPIER_INATURALIST, **kwargs})

    def _replica_context(self):
        return None  # each replica ranks its own batch (the official code has no cross-replica form)

    @property
    def step_parameters(self):
        return {key: getattr(self, key) for key in HAPPIER_DEFAULTS}

    def batch_pairs(self, y_true, y_pred):
        embeddings = _inputs.prepare_embeddings(y_pred, self.dtype)
        labels = prepare_hierarchical_labels(y_true, batch_size=embeddings.shape[0])
        _inputs._check_eager_values(labels, embeddings, "y_pred")
        labels = singleton_unknowns(labels, 0)
        excluded = None if self.include_self else ops.arange(ops.shape(embeddings)[0], dtype="int32")
        return _HierarchicalPairs(labels, embeddings, labels, embeddings, excluded)

    def reference_pairs(self, y_true, y_pred, ref_y_true, ref_y_pred, self_index=None, ref_mask=None):
        embeddings = _inputs.prepare_embeddings(y_pred, self.dtype)
        labels = prepare_hierarchical_labels(y_true, batch_size=embeddings.shape[0])
        ref_emb = ops.stop_gradient(_inputs.prepare_embeddings(ref_y_pred, self.dtype, what="ref_y_pred"))
        ref_labels = prepare_hierarchical_labels(ref_y_true, batch_size=ref_emb.shape[0], what="ref_y_true")
        if labels.shape[1] != ref_labels.shape[1]:
            raise ValueError(f"ref_y_true has {ref_labels.shape[1]} levels but y_true has {labels.shape[1]}.")
        ref_labels = singleton_unknowns(ref_labels, 0)
        labels = singleton_unknowns(labels, ops.shape(ref_labels)[0])
        excluded = None
        if not self.include_self and self_index is not None:
            excluded = ops.reshape(ops.cast(self_index, "int32"), (-1,))
        ref_valid = None if ref_mask is None else ops.reshape(ops.cast(ref_mask, "bool"), (-1,))
        return _HierarchicalPairs(labels, embeddings, ref_labels, ref_emb, excluded, ref_valid)

    def per_query(self, pairs):
        return hap_per_query(
            pairs.scores,
            pairs.labels,
            pairs.ref_labels,
            alpha=self.alpha,
            excluded=pairs.excluded,
            ref_valid=pairs.ref_valid,
            pairs_per_chunk=self.pairs_per_chunk,
            **self.step_parameters,
        )

    def ratio_terms(self, pairs):
        """``[(1, sum over queries with an item of level >= 1 of 1 - H-AP, their number)]``."""
        hap, has_positive = self.per_query(pairs)
        valid = ops.cast(has_positive, hap.dtype)
        return [(1.0, ops.sum((1.0 - hap) * valid), ops.sum(valid))]

    def hierarchical_average_precision(self, y_true, y_pred):
        """Smooth H-AP of each query of the batch, ``(B,)``; NaN for a query without item of level >= 1."""
        hap, has_positive = self.per_query(self.batch_pairs(y_true, y_pred))
        return ops.where(has_positive, hap, ops.full_like(hap, float("nan")))

    def get_config(self):
        return {
            **super().get_config(),
            **self.step_parameters,
            "alpha": self.alpha,
            "pairs_per_chunk": self.pairs_per_chunk,
        }


def hap_loss(y_true, y_pred, ref_y_true=None, ref_y_pred=None, *, self_index=None, ref_mask=None, dtype=None, **kwargs):
    """Functional :class:`HAPLoss`: the batch form, or the reference form with ``ref_y_true``/``ref_y_pred``.

    ``kwargs``: the class's arguments (tau, rho, offset, delta, start, alpha, include_self,
    pairs_per_chunk). Returns a scalar.
    """
    loss = HAPLoss(dtype=dtype or keras.config.floatx(), **kwargs)
    return call_loss(loss, y_true, y_pred, ref_y_true, ref_y_pred, self_index, ref_mask)


__all__ = ["HAPLoss", "hap_loss", "HAPPIER_DEFAULTS", "HAPPIER_INATURALIST", "sum_of_ratios"]
