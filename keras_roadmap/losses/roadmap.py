"""ROADMAP = calibration_weight * CalibrationLoss + ap_weight * SupAPLoss (Ramzi et al. 2021)."""

import keras
from keras import ops

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
        calibration_warmup_steps: 0 (default, the paper) or N > 0: the calibration weight ramps
            linearly from 0 to ``calibration_weight`` over the first N training steps (SupAP
            alone at step 0), which lets a from-scratch model leave a collapsed start (see
            :class:`~keras_roadmap.CollapseMonitor`). The step is the optimizer's iteration
            count, hence resumable from any checkpoint that holds the optimizer:
            ``RetrievalTrainer`` connects it; with plain ``model.fit`` call
            ``loss.set_step_counter(model.optimizer.iterations)`` after ``compile``.
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
        calibration_warmup_steps=0,
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
        self.ap_weight = float(ap_weight)
        self.calibration_weight = float(calibration_weight)
        if isinstance(calibration_warmup_steps, bool) or int(calibration_warmup_steps) != calibration_warmup_steps or calibration_warmup_steps < 0:
            raise ValueError(f"calibration_warmup_steps must be an integer >= 0 (0 = no warm-up), got {calibration_warmup_steps!r}.")
        self.calibration_warmup_steps = int(calibration_warmup_steps)
        self._step_counter = None

    @classmethod
    def inaturalist(cls, **kwargs):
        """ROADMAP with the paper's iNaturalist-2018 settings (SupAP ``start=0.0, offset=1.0``)."""
        return cls(**{**INATURALIST_SUPAP, **kwargs})

    def set_step_counter(self, counter):
        """Read the training step from ``counter`` (e.g. ``optimizer.iterations``, a scalar
        variable) for ``calibration_warmup_steps``; returns self."""
        self._step_counter = counter
        return self

    def _calibration_weight(self):
        """``calibration_weight``, times ``min(step / calibration_warmup_steps, 1)`` in warm-up."""
        if not self.calibration_warmup_steps or self.calibration_weight == 0.0:
            return self.calibration_weight
        if self._step_counter is None:
            raise ValueError(
                "ROADMAPLoss(calibration_warmup_steps=...) needs the training step: train with "
                "RetrievalTrainer (its compile connects the optimizer), or call "
                "loss.set_step_counter(model.optimizer.iterations) after model.compile."
            )
        step = ops.cast(ops.convert_to_tensor(self._step_counter), "float32")
        return self.calibration_weight * ops.minimum(step / float(self.calibration_warmup_steps), 1.0)

    def _ratio_terms(self, pairs):
        terms = []
        for weight, loss in ((self.ap_weight, self.supap), (self._calibration_weight(), self.calibration)):
            if not (isinstance(weight, float) and weight == 0.0):
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
            "calibration_warmup_steps": self.calibration_warmup_steps,
        }
