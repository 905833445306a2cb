"""HAPPIER as its official configs train it: H-AP plus a proxy cluster term on the finest level.

``config/loss/HAPPIER_SOP.yaml`` and ``HAPPIER_inat.yaml`` (elias-ramzi/HAPPIER, the same files
in elias-ramzi/SupRank) combine ``HAPLoss`` (weight ``1 - 0.1``) with ``ClusterLoss`` (weight
0.1, ``hierarchy_level: 0``: the finest labels) whose proxies have their own optimiser (Adam, lr
10.0, no weight decay, cosine to 0.1), as ROADMAP++ does; see ``docs/rank-losses.md``.
"""

import keras

from keras_roadmap.losses.cluster import CLUSTER_TEMPERATURE, DEFAULT_PROXIES_NAME, WithClusterTerm
from keras_roadmap.losses.hierarchical import HAPLoss

# HAPPIER_SOP.yaml: ClusterLoss `weight: 0.1`, HAPLoss `weight: ${sub:1,${loss.losses.1.weight}}`.
HAPPIER_WEIGHTS = {"hap_weight": 0.9, "cluster_weight": 0.1}


@keras.saving.register_keras_serializable(package="keras_roadmap")
class HAPPIERLoss(WithClusterTerm, HAPLoss):
    """HAPPIER: ``hap_weight * HAPLoss + cluster_weight * ClusterLoss`` (0.9 / 0.1).

    Args:
        num_classes: (with embedding_dim) the proxies' shape: the finest level's training
            classes (ids in ``[0, num_classes)``) and the embedding width.
        hap_weight: (with cluster_weight) weights of the two terms (0.9, 0.1).
        temperature: ClusterLoss temperature (0.05).
        proxies: (with proxies_name, seed) as for :class:`ClusterLoss`; call ``loss.proxies``
            in the model so ``fit`` trains them.
        name: (with dtype) as for ``keras.losses.Loss`` (``"happier_loss"``).
        **hap: :class:`HAPLoss`'s keywords (tau, rho, offset, delta, start, alpha,
            include_self, pairs_per_chunk); ``HAPPIERLoss.inaturalist(...)``: offset 1.0,
            start 0.0 (``HAPPIER_inat.yaml``). The official ``beta``, ``gamma`` and ``leak``
            only act with ``with_hrank: True``, which both files turn off.

    Call: ``loss(y_true=labels (B, L) int coarse-to-fine, y_pred=embeddings (B, D))`` -> scalar.
    ``call_with_reference`` (a memory) gives the H-AP term only, weighted, as ROADMAP++ does.
    """

    RANK_WEIGHT = "hap_weight"

    def __init__(
        self,
        num_classes,
        embedding_dim,
        hap_weight=HAPPIER_WEIGHTS["hap_weight"],
        cluster_weight=HAPPIER_WEIGHTS["cluster_weight"],
        *,
        temperature=CLUSTER_TEMPERATURE,
        proxies=None,
        proxies_name=DEFAULT_PROXIES_NAME,
        seed=None,
        name="happier_loss",
        dtype=None,
        **hap,
    ):
        super().__init__(name=name, dtype=dtype, **hap)
        self._build_cluster_term(
            num_classes, embedding_dim, hap_weight, cluster_weight, temperature, proxies, proxies_name, seed, dtype
        )

    def batch_pairs(self, y_true, y_pred):
        pairs = super().batch_pairs(y_true, y_pred)
        pairs.batch_form = True
        return pairs

    def ratio_terms(self, pairs):
        """H-AP's ratio and, in the batch form only, ClusterLoss's on the finest level, each weighted."""
        return self._with_cluster_term(pairs, lambda: super(HAPPIERLoss, self).ratio_terms(pairs))

    def get_config(self):
        return {**super().get_config(), **self._cluster_config()}


__all__ = ["HAPPIERLoss", "HAPPIER_WEIGHTS"]
