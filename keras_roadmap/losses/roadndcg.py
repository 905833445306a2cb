"""ROAD-NDCG as its official configs train it: SupNDCG plus the proxy cluster term.

``suprank/config/loss/roadndcg_sop.yaml`` / ``roadndcg_inat.yaml`` (elias-ramzi/SupRank, name
``ROAD_NDCG``): ``weight: [0.9, 0.1]`` over ``SupNDCGLoss`` (``hierarchy_level: MULTI``: graded
relevance over the label levels) and ``ClusterLoss`` (``hierarchy_level: 0``: the finest
labels), whose proxies have their own optimiser (Adam, lr 10.0, no weight decay, cosine to 0.1),
as ROADMAP++ does; see ``docs/rank-losses.md``.
"""

import keras

from keras_roadmap.losses.cluster import CLUSTER_TEMPERATURE, DEFAULT_PROXIES_NAME, WithClusterTerm
from keras_roadmap.losses.ndcg import SupNDCGLoss
from keras_roadmap.losses.parameters import SUPAP_DEFAULTS, with_parameters

# roadndcg_sop.yaml: `weight: [0.9, 0.1]` (SupNDCGLoss, ClusterLoss).
ROAD_NDCG_WEIGHTS = {"ndcg_weight": 0.9, "cluster_weight": 0.1}


@keras.saving.register_keras_serializable(package="keras_roadmap")
class ROADNDCGLoss(WithClusterTerm, SupNDCGLoss):
    """ROAD-NDCG: ``ndcg_weight * SupNDCG + cluster_weight * ClusterLoss`` (0.9 / 0.1).

    Args:
        num_classes: (with embedding_dim) the proxies' shape: the finest level's training
            classes (ids in ``[0, num_classes)``) and the embedding width.
        ndcg_weight: (with cluster_weight) weights of the two terms (0.9, 0.1).
        temperature: ClusterLoss temperature (0.05).
        proxies: (with proxies_name, seed) as for :class:`ClusterLoss`; call ``loss.proxies``
            in the model so ``fit`` trains them.
        tau: (with rho, delta, start, offset) SupNDCG's rank parameters (0.01, 100.0, 0.05, 0.5,
            1.44; ``ROADNDCGLoss.inaturalist(...)``: start 0.0, offset 1.0, ``roadndcg_inat.yaml``).
        include_self: (with pairs_per_chunk, gather_across_replicas, name, dtype) as for
            :class:`SupNDCGLoss`.

    Call: ``loss(y_true=labels (B,) or (B, L) int coarse-to-fine, y_pred=embeddings (B, D))``;
    ``call_with_reference`` (a memory) gives the SupNDCG term only, weighted, as ROADMAP++ does.
    """

    RANK_WEIGHT = "ndcg_weight"

    @with_parameters(SUPAP_DEFAULTS, after="cluster_weight")
    def __init__(
        self,
        num_classes,
        embedding_dim,
        ndcg_weight=ROAD_NDCG_WEIGHTS["ndcg_weight"],
        cluster_weight=ROAD_NDCG_WEIGHTS["cluster_weight"],
        *,
        temperature=CLUSTER_TEMPERATURE,
        proxies=None,
        proxies_name=DEFAULT_PROXIES_NAME,
        seed=None,
        include_self=True,
        pairs_per_chunk=None,
        gather_across_replicas=True,
        name="road_ndcg_loss",
        dtype=None,
        **supap,
    ):
        super().__init__(
            include_self=include_self,
            pairs_per_chunk=pairs_per_chunk,
            gather_across_replicas=gather_across_replicas,
            name=name,
            dtype=dtype,
            **supap,
        )
        self._build_cluster_term(
            num_classes, embedding_dim, ndcg_weight, cluster_weight, temperature, proxies, proxies_name, seed, dtype
        )

    def ratio_terms(self, pairs):
        """SupNDCG's ratio and, in the batch form only, ClusterLoss's on the finest level, each weighted."""
        return self._with_cluster_term(pairs, lambda: super(ROADNDCGLoss, self).ratio_terms(pairs))

    def get_config(self):
        return {**super().get_config(), **self._cluster_config()}
