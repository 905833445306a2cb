"""RS@k, the Recall@k surrogate loss, and SiMix (Patel, Tolias and Matas, CVPR 2022).

For a query q with positives P (same label, q itself excluded) and a retrieval set that keeps q
(as the official code does), each positive p gets the smooth rank
``rank(p) = 1 + sum_{j != p} sigmoid((s_qj - s_qp) / tau)`` and, for each k,
``recall_k(q) = min(sum_p sigmoid((k - rank(p)) / tau_k), k) / min(k, |P|)``, with k capped at the
size of the retrieval set (the official ``min(batch_size, k)``). The loss is
``1 - mean over queries and k of recall_k`` (queries without positive are left out; the official
code divides by zero there). Both sigmoids clamp their argument to [-50, 50] as the official
``sigmoid`` does.

Defaults (``src/main.py`` of yash0307/RecallatK_surrogate): ``tau = 0.01``
(``--sigmoid_temperature``), ``k_values = (1, 2, 4, 8, 16)`` (``--k_vals_train``),
``k_temperatures = 1`` (``opt.k_temperatures = [1] * ...``).
"""

import keras
import numpy as np
from keras import ops

from keras_roadmap import validation
from keras_roadmap.losses import _inputs, _pair_kernel, ranking
from keras_roadmap.losses.average_precision import _membership, label_segments
from keras_roadmap.losses.base import RetrievalLoss, call_loss
from keras_roadmap.losses.hierarchical import _elementwise_min

RSK_DEFAULTS = {"tau": 0.01, "k_values": (1, 2, 4, 8, 16), "k_temperatures": 1.0}


def recall_at_k_per_query(pairs, *, tau, k_values, k_temperatures, pairs_per_chunk=None):
    """``(recall (B,) mean over k of the smooth recall@k, has_positive (B,) bool)`` of ``pairs``."""
    scores = pairs.scores
    dtype = scores.dtype
    num_items = scores.shape[1]
    batch = ops.shape(scores)[0]
    if pairs.batch_form:
        own = pairs.self_columns if pairs.self_columns is not None else ops.arange(batch, dtype="int32")
    else:
        own = pairs.excluded  # the query's stored copy, if any: in the ranking, not a positive
    segments = label_segments(pairs.labels, pairs.ref_labels, own, pairs.ref_valid)
    if num_items is not None:
        capped = [float(min(int(num_items), k)) for k in k_values]
        ks = ops.convert_to_tensor(np.array(capped), dtype=dtype)
    else:
        ks = _elementwise_min(
            ops.convert_to_tensor(np.array(k_values, np.float64), dtype=dtype), ops.cast(ops.shape(scores)[1], dtype)
        )
    k_tau = ops.convert_to_tensor(np.array(k_temperatures, np.float64), dtype=dtype)
    excluded = pairs.excluded

    def ranks(chunk):
        member = _membership(
            chunk.columns, ops.take(excluded, chunk.query) if excluded is not None else None, pairs.ref_valid
        )
        others = ops.equal(chunk.onehot, 0) if member is None else ops.logical_and(member, ops.equal(chunk.onehot, 0))
        value, deriv = ranking.clamped_sigmoid_step(chunk.t, tau)
        zero = ops.zeros_like(chunk.t)
        rank = 1.0 + ops.sum(ops.where(others, value, zero), axis=1)
        # sigmoid((k - rank) / tau_k) as clamped_sigmoid_step(k - rank, .) with a per-k temperature
        x = (ops.expand_dims(ks, 0) - ops.expand_dims(rank, 1)) / ops.expand_dims(k_tau, 0)
        inside = ops.logical_and(ops.greater_equal(x, -ranking.SIGMOID_CLAMP), ops.less_equal(x, ranking.SIGMOID_CLAMP))
        r = ops.sigmoid(ops.clip(x, -ranking.SIGMOID_CLAMP, ranking.SIGMOID_CLAMP))
        dr_dk = ops.where(inside, r * (1.0 - r) / ops.expand_dims(k_tau, 0), ops.zeros_like(r))
        return r, dr_dk, ops.where(others, deriv, zero)

    def terms(chunk):
        return ranks(chunk)[0]

    def grads(chunk, upstream):
        _, dr_dk, drank_dt = ranks(chunk)
        coef = -ops.sum(upstream * dr_dk, axis=1)  # d/drank of sum_k upstream_k r_k
        return ops.expand_dims(coef, 1) * drank_dt

    sums = _pair_kernel.pair_sums(
        scores, segments, terms, grads, len(k_values), skip_item=own, pairs_per_chunk=pairs_per_chunk
    )
    positives = ops.cast(segments["num_positives"], dtype)
    capped_sums = ops.where(ops.less(sums, ops.expand_dims(ks, 0)), sums, ops.zeros_like(sums) + ops.expand_dims(ks, 0))
    norm = _elementwise_min(ops.expand_dims(ks, 0), ops.expand_dims(positives, 1))
    recall = ops.mean(capped_sums / _inputs.floor_at(norm, 1.0), axis=1)
    return recall, ops.greater(positives, 0)


@keras.saving.register_keras_serializable(package="keras_roadmap")
class RecallAtKLoss(RetrievalLoss):
    """RS@k: ``1 - mean smooth Recall@k`` (Patel et al., CVPR 2022); see the module docstring.

    Args:
        k_values: the k set (``(1, 2, 4, 8, 16)``, ``--k_vals_train``).
        tau: temperature of the rank's sigmoid (0.01, ``--sigmoid_temperature``).
        k_temperatures: temperature of ``sigmoid(k - rank)``, one number or one per k (1.0).
        include_self: True (default, the official code) keeps the query in its own ranking (it
            is never its own positive); False leaves it out.
        pairs_per_chunk: (query, positive) pairs ranked per loop step (None: about 2**20 scores).
        name: (with dtype) as for ``keras.losses.Loss``; ``dtype="float64"`` computes in float64.

    Call: ``loss(y_true=labels (B,) int, y_pred=embeddings (B, D))`` -> scalar. Memory: the
    ``(B, B)`` scores and their gradient plus ``pairs_per_chunk x B`` per step, so the paper's
    B = 4,000 runs on a CPU (``benchmarks/bench_recall_surrogate.py``).
    """

    def __init__(
        self,
        k_values=RSK_DEFAULTS["k_values"],
        tau=RSK_DEFAULTS["tau"],
        k_temperatures=RSK_DEFAULTS["k_temperatures"],
        *,
        include_self=True,
        pairs_per_chunk=None,
        name="recall_at_k_loss",
        dtype=None,
    ):
        super().__init__(include_self=include_self, gather_across_replicas=False, name=name, dtype=dtype)
        owner = type(self).__name__
        if isinstance(k_values, (int, np.integer)):
            k_values = (k_values,)
        k_values = tuple(validation.integer("k_values", k, owner=owner, minimum=1) for k in k_values)
        if not k_values:
            raise ValueError(f"{owner}: k_values must hold at least one k >= 1.")
        self.k_values = k_values
        self.tau = validation.number("tau", tau, owner=owner, minimum=0, min_open=True)
        if isinstance(k_temperatures, (list, tuple)):
            temps = tuple(
                validation.number("k_temperatures", t, owner=owner, minimum=0, min_open=True) for t in k_temperatures
            )
            if len(temps) != len(k_values):
                raise ValueError(
                    f"{owner}: k_temperatures has {len(temps)} values but k_values {len(k_values)}; "
                    "give one per k or one number."
                )
        else:
            temps = (validation.number("k_temperatures", k_temperatures, owner=owner, minimum=0, min_open=True),) * len(
                k_values
            )
        self.k_temperatures = temps
        self.pairs_per_chunk = validation.integer(
            "pairs_per_chunk", pairs_per_chunk, owner=owner, minimum=1, allow_none=True
        )

    def _replica_context(self):
        return None  # each replica ranks its own batch (see docs/hierarchical.md, known limits)

    def per_query(self, pairs):
        return recall_at_k_per_query(
            pairs,
            tau=self.tau,
            k_values=self.k_values,
            k_temperatures=self.k_temperatures,
            pairs_per_chunk=self.pairs_per_chunk,
        )

    def ratio_terms(self, pairs):
        """``[(1, sum over queries with a positive of 1 - mean_k recall_k, their number)]``."""
        recall, has_positive = self.per_query(pairs)
        valid = ops.cast(has_positive, recall.dtype)
        return [(1.0, ops.sum((1.0 - recall) * valid), ops.sum(valid))]

    def get_config(self):
        return {
            **super().get_config(),
            "k_values": list(self.k_values),
            "tau": self.tau,
            "k_temperatures": list(self.k_temperatures),
            "pairs_per_chunk": self.pairs_per_chunk,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("gather_across_replicas", None)
        return cls(**config)


def recall_at_k(
    y_true, y_pred, ref_y_true=None, ref_y_pred=None, *, self_index=None, ref_mask=None, dtype=None, **kwargs
):
    """Functional :class:`RecallAtKLoss` (batch form, or reference form with ``ref_y_true``/``ref_y_pred``)."""
    loss = RecallAtKLoss(dtype=dtype or keras.config.floatx(), **kwargs)
    return call_loss(loss, y_true, y_pred, ref_y_true, ref_y_pred, self_index, ref_mask)


def simix_pairs(samples_per_class):
    """``(first, second)`` int arrays: the pairs ``i < j`` of one class block, lexicographic."""
    first, second = np.triu_indices(int(samples_per_class), k=1)
    return first, second


def simix(y_true, y_pred, *, samples_per_class=4, alphas=None, seed=None):
    """SiMix: the batch plus, for each class block, a convex mix of every pair of its embeddings.

    The batch must come in blocks of ``samples_per_class`` consecutive rows sharing a label (what
    :class:`~keras_roadmap.MPerClassSampler` yields, and the official layout). Each pair ``i < j``
    of a block gives ``alpha * e_i + (1 - alpha) * e_j`` with ``alpha ~ U(0, 1)``, labelled as
    its class; since scores are dot products, mixing embeddings mixes their similarities, which
    is the official ``pos_mixup`` (it handles 3, 4 or 6 per class; any m >= 2 works here).
    Differentiable w.r.t. ``y_pred``; static shapes (XLA).

    Args:
        y_true: ``(B,)`` int labels. y_pred: ``(B, D)`` float embeddings.
        samples_per_class: m, rows per class block (B must be a multiple).
        alphas: optional ``(B / m * m (m - 1) / 2,)`` mixing weights, block after block, pairs
            lexicographic (default: drawn with ``keras.random.uniform(seed=seed)``).
    Returns:
        ``(labels (B + B/m * m(m-1)/2,), embeddings (same rows, D))``: the batch first, then
        the mixed rows.
    """
    m = validation.integer("samples_per_class", samples_per_class, owner="simix", minimum=2)
    labels = _inputs.prepare_labels(y_true)
    embeddings = ops.convert_to_tensor(y_pred)
    batch = embeddings.shape[0]
    if batch is None or batch % m:
        raise ValueError(f"simix: the batch has {batch} rows, not a multiple of samples_per_class={m}.")
    try:
        blocks = np.asarray(ops.convert_to_numpy(labels)).reshape(-1, m)
        if np.any(blocks != blocks[:, :1]):
            raise ValueError(
                f"simix: y_true must come in blocks of samples_per_class={m} consecutive equal labels "
                "(use MPerClassSampler with the same samples_per_class)."
            )
    except ValueError:
        raise
    except Exception:  # symbolic labels (tf.function / XLA): cannot inspect them
        pass
    first, second = simix_pairs(m)
    offsets = np.arange(0, batch, m)[:, None]
    first_rows = (offsets + first[None, :]).reshape(-1)
    second_rows = (offsets + second[None, :]).reshape(-1)
    num = first_rows.size
    if alphas is None:
        alphas = keras.random.uniform((num,), dtype=embeddings.dtype, seed=seed)
    else:
        alphas = ops.cast(ops.convert_to_tensor(alphas), embeddings.dtype)
        if tuple(alphas.shape) != (num,):
            raise ValueError(
                f"simix: alphas must have shape ({num},) for {batch} rows in blocks of {m}; got {tuple(alphas.shape)}."
            )
    a = ops.expand_dims(alphas, 1)
    mixed = a * ops.take(embeddings, first_rows, axis=0) + (1.0 - a) * ops.take(embeddings, second_rows, axis=0)
    mixed_labels = ops.take(labels, first_rows)
    return ops.concatenate([labels, mixed_labels], axis=0), ops.concatenate([embeddings, mixed], axis=0)
