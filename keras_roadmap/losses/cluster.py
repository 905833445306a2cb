"""ClusterLoss (a proxy cross-entropy on L2-normalised class proxies) and ROADMAP++ (SupAP +
ClusterLoss), from the journal extension of ROADMAP (code ``elias-ramzi/SupRank``,
``suprank/losses/cluster_loss.py``, ``suprank/config/loss/ROADMAP_pp_SOP.yaml``).

The proxies are trainable weights, which a ``keras.losses.Loss`` cannot own in ``model.fit``
(Keras differentiates the model's variables only). They live in a :class:`ClusterProxies`
layer, an identity on the embeddings that the model calls once: the proxies are then model
weights (trained by ``fit``, saved by ``model.save``) and the optimiser can give them their own
learning rate by their variable path (``TorchAdam(group_learning_rates=...)``)::

    loss = ROADMAPPlusPlusLoss(num_classes=C, embedding_dim=D)
    model = keras.Sequential([encoder, loss.proxies])  # identity: adds the proxies' weights
"""

import math

import keras
from keras import ops

from keras_roadmap import validation
from keras_roadmap.losses import _inputs
from keras_roadmap.losses.ap_losses import supap_terms
from keras_roadmap.losses.base import RetrievalLoss, batch_pairs, loss_pairs, sum_of_ratios
from keras_roadmap.losses.parameters import SUPAP_DEFAULTS, SupAPPresets, with_parameters
from keras_roadmap.losses.roadmap import weighted_terms

# suprank/losses/cluster_loss.py: `temperature: float = 0.05` (also in ROADMAP_pp_SOP.yaml).
CLUSTER_TEMPERATURE = 0.05
# suprank/config/loss/ROADMAP_pp*.yaml: `weight: [0.9, 0.1]` (SupAPLoss, ClusterLoss).
ROADMAP_PP_WEIGHTS = {"ap_weight": 0.9, "cluster_weight": 0.1}
# ROADMAP_pp_SOP.yaml / ROADMAP_pp_inat.yaml, the proxies' own optimiser and schedule:
# torch.optim.Adam(lr=10.0, weight_decay=0.0), CosineAnnealingLR(T_max=max_iter, eta_min=0.1).
PROXY_OPTIMIZER = {"learning_rate": 10.0, "weight_decay": 0.0, "eta_min": 0.1}
DEFAULT_PROXIES_NAME = "cluster_proxies"
NORM_EPSILON = 1e-12  # torch.nn.functional.normalize's


@keras.saving.register_keras_serializable(package="keras_roadmap")
class ClusterProxies(keras.layers.Layer):
    """The ``(num_classes, embedding_dim)`` class proxies of :class:`ClusterLoss`, as a layer.

    ``call`` returns its input unchanged: a model that calls this layer once (e.g. as its last
    layer) owns the proxies as trainable weights, so ``model.fit`` trains them and
    ``model.save`` keeps them. Initialised as ``torch.nn.Linear`` weights (as the official
    code): uniform in ``+-1 / sqrt(embedding_dim)``. The variable's path starts with the
    layer's name (default ``"cluster_proxies"``), the key for a per-group learning rate.
    """

    def __init__(self, num_classes, embedding_dim, seed=None, **kwargs):
        kwargs.setdefault("name", DEFAULT_PROXIES_NAME)
        super().__init__(**kwargs)
        self.num_classes = validation.integer("num_classes", num_classes, owner="ClusterProxies", minimum=1)
        self.embedding_dim = validation.integer("embedding_dim", embedding_dim, owner="ClusterProxies", minimum=1)
        self.seed = validation.integer("seed", seed, owner="ClusterProxies", minimum=0, allow_none=True)
        bound = 1.0 / math.sqrt(self.embedding_dim)
        self.proxies = self.add_weight(
            shape=(self.num_classes, self.embedding_dim),
            initializer=keras.initializers.RandomUniform(-bound, bound, seed=self.seed),
            name="proxies",
            dtype="float32",
        )
        self.built = True

    # Set on the copy that load_model builds inside a compiled loss: the saved values went to the
    # model's own layer (Keras saves an object once), and this copy is no model weight.
    detached_copy = False

    def load_own_variables(self, store):
        if len(store.keys()) == 0:
            self.detached_copy = True
            return
        super().load_own_variables(store)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "embedding_dim": self.embedding_dim,
            "seed": self.seed,
        }


def cluster_logits(embeddings, proxies, temperature):
    """``(B, C)`` logits: ``embeddings @ normalize(proxies).T / temperature``."""
    proxies = ops.cast(proxies, embeddings.dtype)
    inverse = 1.0 / _inputs.floor_at(ops.sqrt(ops.sum(ops.square(proxies), axis=1, keepdims=True)), NORM_EPSILON)
    return _inputs.matmul(embeddings, ops.transpose(proxies * inverse)) / temperature


def cluster_terms(labels, embeddings, proxies, temperature):
    """Cross-entropy of the cluster logits, as one ratio ``(1, sum over rows, rows)``.

    Labels must be class ids in ``[0, num_classes)`` (checked when eager)."""
    num_classes = proxies.shape[0]
    _check_label_range(labels, num_classes)
    logits = cluster_logits(embeddings, proxies, float(temperature))
    log_probs = logits - ops.logsumexp(logits, axis=1, keepdims=True)
    picked = ops.take_along_axis(log_probs, ops.expand_dims(ops.cast(labels, "int32"), 1), axis=1)
    count = ops.cast(ops.shape(labels)[0], embeddings.dtype)
    return [(1.0, -ops.sum(picked), count)]


def _check_label_range(labels, num_classes):
    try:
        values = ops.convert_to_numpy(labels)
    except Exception:  # traced (tf.function / jit): the gather would clip, checked eagerly only
        return
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"ClusterLoss: y_true must hold class ids in [0, num_classes={num_classes}) (one proxy "
            f"per class), got ids from {values.min()} to {values.max()}. Map the labels to 0..C-1 "
            "or raise num_classes."
        )


@keras.saving.register_keras_serializable(package="keras_roadmap")
class ClusterLoss(RetrievalLoss):
    """Proxy cluster loss: softmax cross-entropy of ``e @ normalize(proxies).T / temperature``.

    Args:
        num_classes: number of training classes C (one proxy each; labels in ``[0, C)``).
        embedding_dim: embedding width D.
        temperature: logit temperature (0.05, ``cluster_loss.py`` / ``ROADMAP_pp_SOP.yaml``).
        proxies: an existing :class:`ClusterProxies` to use (e.g. the one of a loaded model,
            ``model.get_layer("cluster_proxies")``); default: a new one named ``proxies_name``.
        proxies_name: name of a new proxies layer (``"cluster_proxies"``).
        seed: seed of the proxies' initialiser (None).
        gather_across_replicas: (with name, dtype) as for :class:`SupAPLoss`.

    The embeddings are used as given (the official model L2-normalises them; so do ours).
    ``loss.proxies`` must be called by the model for ``fit`` to train the proxies (see the
    module docstring). The official code applies this loss to the batch only, never to a
    cross-batch memory: ``call_with_reference`` raises.
    """

    def __init__(
        self,
        num_classes,
        embedding_dim,
        temperature=CLUSTER_TEMPERATURE,
        *,
        proxies=None,
        proxies_name=DEFAULT_PROXIES_NAME,
        seed=None,
        gather_across_replicas=True,
        name="cluster_loss",
        dtype=None,
    ):
        super().__init__(gather_across_replicas=gather_across_replicas, name=name, dtype=dtype)
        self.temperature = validation.number(
            "temperature", temperature, owner=type(self).__name__, minimum=0, min_open=True
        )
        self.proxies = (
            proxies if proxies is not None else ClusterProxies(num_classes, embedding_dim, seed=seed, name=proxies_name)
        )
        if not isinstance(self.proxies, ClusterProxies):
            raise TypeError(f"ClusterLoss: proxies must be a ClusterProxies layer, got {type(self.proxies).__name__}.")
        if (self.proxies.num_classes, self.proxies.embedding_dim) != (int(num_classes), int(embedding_dim)):
            raise ValueError(
                f"ClusterLoss: the proxies have shape ({self.proxies.num_classes}, {self.proxies.embedding_dim}), "
                f"not (num_classes={num_classes}, embedding_dim={embedding_dim})."
            )

    def ratio_terms(self, pairs):
        """``[(1, sum over queries of the cross-entropy, number of queries)]`` (queries only)."""
        if self.proxies.detached_copy:
            raise ValueError(
                f"{type(self).__name__}: this loss comes from keras.models.load_model, and its "
                f"proxies are the loaded model's layer {self.proxies.name!r}, not this loss's copy. "
                "Compile again with a loss bound to them: ROADMAPPlusPlusLoss(num_classes, "
                f"embedding_dim, proxies=model.get_layer({self.proxies.name!r})) (or ClusterLoss(...))."
            )
        return cluster_terms(pairs.labels, pairs.embeddings, self.proxies.proxies, self.temperature)

    def call_with_reference(self, *args, **kwargs):
        raise ValueError(
            "ClusterLoss has no reference form: the official code applies it to the batch only "
            "(takes_ref_embeddings = False). Use ROADMAPPlusPlusLoss, whose SupAP term uses the "
            "memory, or train ClusterLoss without a CrossBatchMemory."
        )

    def get_config(self):
        config = super().get_config()
        config.pop("include_self")
        return {
            **config,
            "num_classes": self.proxies.num_classes,
            "embedding_dim": self.proxies.embedding_dim,
            "temperature": self.temperature,
            "proxies_name": self.proxies.name,
            "seed": self.proxies.seed,
        }


class FinestLevel:
    """A batch of pairs as a flat loss sees it: hierarchical ``(B, L)`` labels reduced to their
    last (finest) level, flat ``(B,)`` labels unchanged. The combinations of a rank loss with
    ClusterLoss on the finest level (HAPPIER, ROAD-NDCG) hand it to :meth:`ClusterLoss.ratio_terms`."""

    def __init__(self, pairs):
        labels = pairs.labels
        self.labels = labels[:, -1] if len(labels.shape) == 2 else labels
        self.embeddings = pairs.embeddings


class WithClusterTerm:
    """What the combinations of a rank loss with the proxy cluster term share (ROADMAP++,
    HAPPIER, ROAD-NDCG): ``rank_weight * rank term + cluster_weight * ClusterLoss`` on the finest
    labels, the cluster term in the batch form only (the official loops apply a cross-batch
    memory to the losses that take reference embeddings, which ClusterLoss does not).

    A subclass names its rank term's weight in ``RANK_WEIGHT`` (its keyword and config key),
    calls ``_build_cluster_term`` in ``__init__``, ``_with_cluster_term`` in ``ratio_terms``
    and adds ``_cluster_config()`` to its config.
    """

    RANK_WEIGHT = "rank_weight"

    def _build_cluster_term(
        self,
        num_classes,
        embedding_dim,
        rank_weight,
        cluster_weight,
        temperature,
        proxies,
        proxies_name,
        seed,
        dtype,
    ):
        self.cluster = ClusterLoss(
            num_classes, embedding_dim, temperature, proxies=proxies, proxies_name=proxies_name, seed=seed, dtype=dtype
        )
        rank_weight, self.cluster_weight = validation.loss_weights(
            **{self.RANK_WEIGHT: rank_weight, "cluster_weight": cluster_weight}, owner=type(self).__name__
        )
        setattr(self, self.RANK_WEIGHT, rank_weight)

    @property
    def proxies(self):
        """The :class:`ClusterProxies` layer (call it in the model so ``fit`` trains it)."""
        return self.cluster.proxies

    def _with_cluster_term(self, pairs, rank_terms):
        """``rank_terms()`` weighted, plus ClusterLoss's ratio on the finest level in the batch form."""
        terms = [(getattr(self, self.RANK_WEIGHT), rank_terms)]
        if getattr(pairs, "batch_form", False):
            terms.append((self.cluster_weight, lambda: self.cluster.ratio_terms(FinestLevel(pairs))))
        return weighted_terms(*terms)

    def _cluster_config(self) -> dict:
        cluster = self.cluster.get_config()
        return {
            "num_classes": cluster["num_classes"],
            "embedding_dim": cluster["embedding_dim"],
            self.RANK_WEIGHT: getattr(self, self.RANK_WEIGHT),
            "cluster_weight": self.cluster_weight,
            "temperature": self.cluster.temperature,
            "proxies_name": cluster["proxies_name"],
            "seed": cluster["seed"],
        }


@keras.saving.register_keras_serializable(package="keras_roadmap")
class ROADMAPPlusPlusLoss(WithClusterTerm, SupAPPresets, RetrievalLoss):
    """ROADMAP++: ``ap_weight * SupAP + cluster_weight * ClusterLoss`` (0.9 / 0.1).

    The official ``ROADMAP_pp_SOP.yaml``: ``weight: [0.9, 0.1]``, SupAP with the ROADMAP
    parameters, ClusterLoss with ``temperature: 0.05`` and its own optimiser for the proxies
    (Adam, lr 10.0, no weight decay, cosine to 0.1): see ``docs/rank-losses.md`` for that
    optimiser in ``model.fit``.

    Args:
        num_classes: (with embedding_dim) the proxies' shape (training classes, embedding width).
        ap_weight: (with cluster_weight) weights of the two terms (0.9, 0.1).
        tau: (with rho, delta, start, offset) SupAP parameters (0.01, 100.0, 0.05, 0.5, 1.44;
            ``ROADMAPPlusPlusLoss.inaturalist(...)``: start 0.0, offset 1.0, ``ROADMAP_pp_inat.yaml``).
        temperature: ClusterLoss temperature (0.05).
        proxies: (with proxies_name, seed) as for :class:`ClusterLoss`.
        include_self: (with pairs_per_chunk, gather_across_replicas, name, dtype) as for :class:`SupAPLoss`.

    ``call_with_reference`` (a cross-batch memory) gives the SupAP term only, weighted: the
    official training loop applies the memory to the losses that take reference embeddings,
    which ClusterLoss does not; the batch form keeps the cluster term.
    """

    RANK_WEIGHT = "ap_weight"

    @with_parameters(SUPAP_DEFAULTS, after="cluster_weight")
    def __init__(
        self,
        num_classes,
        embedding_dim,
        ap_weight=ROADMAP_PP_WEIGHTS["ap_weight"],
        cluster_weight=ROADMAP_PP_WEIGHTS["cluster_weight"],
        *,
        temperature=CLUSTER_TEMPERATURE,
        proxies=None,
        proxies_name=DEFAULT_PROXIES_NAME,
        seed=None,
        include_self=True,
        pairs_per_chunk=None,
        gather_across_replicas=True,
        name="roadmap_plus_plus_loss",
        dtype=None,
        **supap,
    ):
        super().__init__(
            include_self=include_self, gather_across_replicas=gather_across_replicas, name=name, dtype=dtype
        )
        owner = type(self).__name__
        self.supap_parameters = validation.supap_parameters(owner=owner, **supap)
        self._build_cluster_term(
            num_classes, embedding_dim, ap_weight, cluster_weight, temperature, proxies, proxies_name, seed, dtype
        )
        self.pairs_per_chunk = validation.integer(
            "pairs_per_chunk", pairs_per_chunk, owner=owner, minimum=1, allow_none=True
        )

    def ratio_terms(self, pairs):
        """SupAP's ratio and, in the batch form only, ClusterLoss's, each weighted."""
        return self._with_cluster_term(
            pairs, lambda: supap_terms(pairs, pairs_per_chunk=self.pairs_per_chunk, **self.supap_parameters)
        )

    def get_config(self):
        return {
            **super().get_config(),
            **self._cluster_config(),
            **self.supap_parameters,
            "pairs_per_chunk": self.pairs_per_chunk,
        }


def cluster_loss(y_true, y_pred, proxies, temperature=CLUSTER_TEMPERATURE, *, dtype=None):
    """ClusterLoss as a function: mean cross-entropy of ``y_pred @ normalize(proxies).T /
    temperature``; ``proxies`` a ``(C, D)`` tensor or variable (differentiable).

    Example:
    >>> import numpy as np
    >>> emb = np.eye(2, dtype="float32")
    >>> round(float(cluster_loss([0, 1], emb, proxies=np.eye(2, dtype="float32"))), 6)
    0.0
    """
    pairs = batch_pairs(y_true, y_pred, dtype or keras.config.floatx())
    return sum_of_ratios(cluster_terms(pairs.labels, pairs.embeddings, ops.convert_to_tensor(proxies), temperature))


@with_parameters(SUPAP_DEFAULTS, after="cluster_weight")
def roadmap_plus_plus(
    y_true,
    y_pred,
    proxies,
    ref_y_true=None,
    ref_y_pred=None,
    ap_weight=ROADMAP_PP_WEIGHTS["ap_weight"],
    cluster_weight=ROADMAP_PP_WEIGHTS["cluster_weight"],
    *,
    temperature=CLUSTER_TEMPERATURE,
    self_index=None,
    ref_mask=None,
    include_self=True,
    pairs_per_chunk=None,
    dtype=None,
    **supap,
):
    """ROADMAP++ as a function (one device): ``ap_weight * supap + cluster_weight *
    cluster_loss``; with a reference set, the SupAP term only (as :class:`ROADMAPPlusPlusLoss`)."""
    pairs = loss_pairs(y_true, y_pred, ref_y_true, ref_y_pred, dtype, include_self, self_index, ref_mask)
    terms = [(float(ap_weight), lambda: supap_terms(pairs, pairs_per_chunk=pairs_per_chunk, **supap))]
    if pairs.batch_form:
        terms.append(
            (
                float(cluster_weight),
                lambda: cluster_terms(pairs.labels, pairs.embeddings, ops.convert_to_tensor(proxies), temperature),
            )
        )
    return sum_of_ratios(weighted_terms(*terms))
