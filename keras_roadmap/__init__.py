"""keras-roadmap: ROADMAP (Ramzi et al., NeurIPS 2021) for Keras 3 / TensorFlow.

Public API::

    from keras_roadmap import ROADMAPLoss
    model.compile(optimizer="adam", loss=ROADMAPLoss(), jit_compile=True)
"""

from keras_roadmap.losses import (
    INATURALIST_SUPAP,
    CalibrationLoss,
    ROADMAPLoss,
    SmoothAPLoss,
    SupAPLoss,
    heaviside_average_precision,
)

__version__ = "0.1.0"

__all__ = [
    "CalibrationLoss",
    "INATURALIST_SUPAP",
    "ROADMAPLoss",
    "SmoothAPLoss",
    "SupAPLoss",
    "heaviside_average_precision",
]
