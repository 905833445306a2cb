"""The ROADMAP loss family: SupAP, SmoothAP, calibration, their sum, and exact AP."""

from keras_roadmap.losses.ap_losses import INATURALIST_SUPAP, SmoothAPLoss, SupAPLoss, heaviside_average_precision
from keras_roadmap.losses.base import RetrievalLoss
from keras_roadmap.losses.calibration import CalibrationLoss
from keras_roadmap.losses.roadmap import ROADMAPLoss

__all__ = [
    "CalibrationLoss",
    "INATURALIST_SUPAP",
    "ROADMAPLoss",
    "RetrievalLoss",
    "SmoothAPLoss",
    "SupAPLoss",
    "heaviside_average_precision",
]
