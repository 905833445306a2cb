"""ROADMAP = calibration_weight * CalibrationLoss + ap_weight * SupAPLoss (Ramzi et al. 2021)."""

import keras

from keras_roadmap import validation
from keras_roadmap.losses.ap_losses import INATURALIST_SUPAP, SupAPLoss
from keras_roadmap.losses.base import RetrievalLoss
from keras_roadmap.losses.calibration import CalibrationLoss


@keras.saving.register_keras_serializable(package="keras_roadmap")
class ROADMAPLoss(RetrievalLoss):
    """ROADMAP: SupAP (a smooth upper bound of ``1 - AP``) plus a calibration loss.

    Defaults are the paper's SOP / CUB settings; ``ROADMAPLoss.inaturalist()`` (or
    ``ROADMAPLoss(start=0.0, offset=1.0)``) gives the iNaturalist-2018 ones.

    Args:
        tau, rho, delta, start, offset: SupAP parameters (0.01, 100.0, 0.05, 0.5, 1.44), see
            :class:`SupAPLoss`.
        pos_margin, neg_margin: calibration margins on cosine similarity (0.9, 0.6).
        ap_weight, calibration_weight: weights of the two terms (1.0, 1.0).
        include_self: True (default) reproduces the paper's code (each query is in its own
            retrieval set); False gives the textbook AP (see :class:`SupAPLoss`).
        pairs_per_chunk: memory/speed knob of the SupAP kernel (None: automatic).
        gather_across_replicas: see :class:`~keras_roadmap.losses.RetrievalLoss` (True).
        name, dtype: as for ``keras.losses.Loss`` (float32 by default).

    Call: ``loss(y_true=labels (B,) or (B, 1) int, y_pred=embeddings (B, D) float)`` -> scalar.
    ``call_with_reference(y_true, y_pred, ref_y_true, ref_y_pred)`` ranks the batch against a
    reference set (e.g. a cross-batch memory) instead.

    Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.UnitNormalization()])
    >>> model.compile(optimizer="adam", loss=ROADMAPLoss())
    """

    def __init__(
        self,
        tau=0.01,
        rho=100.0,
        delta=0.05,
        start=0.5,
        offset=1.44,
        pos_margin=0.9,
        neg_margin=0.6,
        ap_weight=1.0,
        calibration_weight=1.0,
        *,
        include_self=True,
        pairs_per_chunk=None,
        gather_across_replicas=True,
        name="roadmap_loss",
        dtype=None,
    ):
        super().__init__(include_self=include_self, gather_across_replicas=gather_across_replicas, name=name, dtype=dtype)
        self.supap = SupAPLoss(
            tau, rho, delta, start, offset, include_self=include_self, pairs_per_chunk=pairs_per_chunk, dtype=dtype
        )
        self.calibration = CalibrationLoss(pos_margin, neg_margin, include_self=include_self, dtype=dtype)
        self.ap_weight, self.calibration_weight = validation.loss_weights(ap_weight=ap_weight, calibration_weight=calibration_weight, owner=type(self).__name__)

    @classmethod
    def inaturalist(cls, **kwargs):
        """ROADMAP with the paper's iNaturalist-2018 settings (SupAP ``start=0.0, offset=1.0``)."""
        return cls(**{**INATURALIST_SUPAP, **kwargs})

    def _ratio_terms(self, pairs):
        terms = []
        for weight, loss in ((self.ap_weight, self.supap), (self.calibration_weight, self.calibration)):
            if weight != 0.0:
                terms += [(weight * w, numerator, count) for w, numerator, count in loss._ratio_terms(pairs)]
        return terms

    def get_config(self):
        supap, calibration = self.supap.get_config(), self.calibration.get_config()
        return {
            **super().get_config(),
            **{k: supap[k] for k in ("tau", "rho", "delta", "start", "offset", "pairs_per_chunk")},
            "pos_margin": calibration["pos_margin"],
            "neg_margin": calibration["neg_margin"],
            "ap_weight": self.ap_weight,
            "calibration_weight": self.calibration_weight,
        }
