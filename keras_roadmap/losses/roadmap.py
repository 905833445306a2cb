"""ROADMAP = calibration_weight * CalibrationLoss + ap_weight * SupAPLoss (Ramzi et al. 2021)."""

import keras
from keras import ops

from keras_roadmap import validation
from keras_roadmap.losses.ap_losses import SupAPLoss, supap_terms
from keras_roadmap.losses.base import RetrievalLoss, loss_pairs, sum_of_ratios
from keras_roadmap.losses.calibration import CalibrationLoss, calibration_pair_terms
from keras_roadmap.losses.parameters import CALIBRATION_DEFAULTS, SUPAP_DEFAULTS, SupAPPresets, with_parameters


def weighted_terms(*weighted):
    """The ratio terms of ``(weight, terms_fn)`` pairs, each scaled by its weight; a zero weight
    skips its terms (and their computation)."""
    terms = []
    for weight, terms_fn in weighted:
        if weight != 0.0:
            terms += [(weight * w, numerator, count) for w, numerator, count in terms_fn()]
    return terms


@keras.saving.register_keras_serializable(package="keras_roadmap")
class ROADMAPLoss(SupAPPresets, RetrievalLoss):
    """ROADMAP: SupAP (a smooth upper bound of ``1 - AP``) plus a calibration loss.

    Defaults are the paper's SOP / CUB settings; ``ROADMAPLoss.inaturalist()`` (or
    ``ROADMAPLoss(start=0.0, offset=1.0)``, or ``ROADMAPLoss.from_preset("inaturalist")``) gives
    the iNaturalist-2018 ones.

    Args:
        tau: SupAP sigmoid temperature (0.01), see :class:`SupAPLoss`.
        rho: SupAP slope of the linear piece (100.0).
        delta: where SupAP's linear piece starts (0.05).
        start: SupAP offset in ``(0, delta]`` (0.5).
        offset: value of SupAP's linear piece at ``delta`` (1.44).
        pos_margin: calibration margin of positive pairs on cosine similarity (0.9).
        neg_margin: calibration margin of negative pairs on cosine similarity (0.6).
        ap_weight: weight of the SupAP term (1.0).
        calibration_weight: weight of the calibration term (1.0).
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
        name: as for ``keras.losses.Loss``.
        dtype: as for ``keras.losses.Loss`` (float32 by default).

    The SupAP and calibration parameters come from ``keras_roadmap.losses.parameters`` (the
    one definition shared with :class:`SupAPLoss`, :class:`CalibrationLoss` and the functional
    forms); the positional order is the one above.

    Call: ``loss(y_true=labels (B,) or (B, 1) int, y_pred=embeddings (B, D) float)`` -> scalar.
    ``call_with_reference(y_true, y_pred, ref_y_true, ref_y_pred)`` ranks the batch against a
    reference set (e.g. a cross-batch memory) instead. :func:`roadmap` is the same loss as a
    function.

    Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.UnitNormalization()])
    >>> model.compile(optimizer="adam", loss=ROADMAPLoss())
    """

    @with_parameters(SUPAP_DEFAULTS, CALIBRATION_DEFAULTS, after="self")
    def __init__(
        self,
        ap_weight=1.0,
        calibration_weight=1.0,
        *,
        # Keyword-only: a training schedule of the class, which the functional form has no step for.
        calibration_warmup_steps=0,
        include_self=True,
        pairs_per_chunk=None,
        gather_across_replicas=True,
        name="roadmap_loss",
        dtype=None,
        **parameters,
    ):
        super().__init__(
            include_self=include_self, gather_across_replicas=gather_across_replicas, name=name, dtype=dtype
        )
        supap = {key: parameters[key] for key in SUPAP_DEFAULTS}
        margins = {key: parameters[key] for key in CALIBRATION_DEFAULTS}
        self.supap = SupAPLoss(**supap, include_self=include_self, pairs_per_chunk=pairs_per_chunk, dtype=dtype)
        self.calibration = CalibrationLoss(**margins, include_self=include_self, dtype=dtype)
        self.ap_weight, self.calibration_weight = validation.loss_weights(
            ap_weight=ap_weight, calibration_weight=calibration_weight, owner=type(self).__name__
        )
        if (
            isinstance(calibration_warmup_steps, bool)
            or int(calibration_warmup_steps) != calibration_warmup_steps
            or calibration_warmup_steps < 0
        ):
            raise ValueError(
                f"calibration_warmup_steps must be an integer >= 0 (0 = no warm-up), got {calibration_warmup_steps!r}."
            )
        self.calibration_warmup_steps = int(calibration_warmup_steps)
        self._step_counter = None

    def set_step_counter(self, counter):
        """Read the training step from ``counter`` (e.g. ``optimizer.iterations``, a scalar
        variable) for ``calibration_warmup_steps``; returns self."""
        self._step_counter = counter
        return self

    def _calibration_ramp(self):
        """1.0, or ``min(step / calibration_warmup_steps, 1)`` during the warm-up."""
        if not self.calibration_warmup_steps:
            return 1.0
        if self._step_counter is None:
            raise ValueError(
                "ROADMAPLoss(calibration_warmup_steps=...) needs the training step: train with "
                "RetrievalTrainer (it connects the optimizer's step), or call "
                "loss.set_step_counter(model.optimizer.iterations) after model.compile."
            )
        step = ops.cast(ops.convert_to_tensor(self._step_counter), "float32")
        return ops.minimum(step / float(self.calibration_warmup_steps), 1.0)

    def ratio_terms(self, pairs):
        """SupAP's and the calibration's ratio terms, scaled by their weights (the calibration's
        also by its warm-up ramp)."""

        def calibration_terms():
            ramp = self._calibration_ramp()
            return [(ramp * w, numerator, count) for w, numerator, count in self.calibration.ratio_terms(pairs)]

        return weighted_terms(
            (self.ap_weight, lambda: self.supap.ratio_terms(pairs)),
            (self.calibration_weight, calibration_terms),
        )

    def get_config(self):
        return {
            **super().get_config(),
            **self.supap.supap_parameters,
            "pairs_per_chunk": self.supap.pairs_per_chunk,
            **self.calibration.margins,
            "ap_weight": self.ap_weight,
            "calibration_weight": self.calibration_weight,
            "calibration_warmup_steps": self.calibration_warmup_steps,
        }


@with_parameters(SUPAP_DEFAULTS, CALIBRATION_DEFAULTS, after="ref_y_pred")
def roadmap(
    y_true,
    y_pred,
    ref_y_true=None,
    ref_y_pred=None,
    ap_weight=1.0,
    calibration_weight=1.0,
    *,
    self_index=None,
    ref_mask=None,
    include_self=True,
    pairs_per_chunk=None,
    dtype=None,
    **parameters,
):
    """ROADMAP loss of a batch (or of queries ranked against a reference set).

    Formula:

    ```python
    loss = ap_weight * supap(...) + calibration_weight * calibration(...)
    ```

    where both terms rank the same pairs (one score matrix): see :func:`supap` and
    :func:`calibration` for each formula.

    Args:
        y_true: ``(B,)`` or ``(B, 1)`` int class ids. y_pred: ``(B, D)`` float embeddings.
        ref_y_true, ref_y_pred: optional ``(M,)`` / ``(M, D)`` constant reference set (e.g. a
            cross-batch memory); default None: the batch is its own retrieval set.
        tau, rho, delta, start, offset: SupAP parameters (0.01, 100.0, 0.05, 0.5, 1.44).
        pos_margin, neg_margin: calibration margins (0.9, 0.6).
        ap_weight, calibration_weight: weights of the two terms (1.0, 1.0).
        self_index, ref_mask, include_self, pairs_per_chunk: as in :class:`ROADMAPLoss`.
        dtype: computation dtype (default ``keras.config.floatx()``).

    Returns:
        Scalar loss tensor: the value of ``ROADMAPLoss(...)`` on one device (the function sees
        one replica's batch, as :func:`supap` does).

    Example:
    >>> import numpy as np
    >>> float(roadmap([0, 0, 1, 1], np.eye(4, dtype="float32")[[0, 0, 1, 1]]))
    0.0
    """
    pairs = loss_pairs(y_true, y_pred, ref_y_true, ref_y_pred, dtype, include_self, self_index, ref_mask)
    supap = {key: parameters[key] for key in SUPAP_DEFAULTS}
    margins = {key: parameters[key] for key in CALIBRATION_DEFAULTS}
    return sum_of_ratios(
        weighted_terms(
            (float(ap_weight), lambda: supap_terms(pairs, pairs_per_chunk=pairs_per_chunk, **supap)),
            (float(calibration_weight), lambda: calibration_pair_terms(pairs, **margins)),
        )
    )
