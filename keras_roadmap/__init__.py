"""keras-roadmap: ROADMAP (Ramzi et al., NeurIPS 2021) for Keras 3 / TensorFlow.

    from keras_roadmap import ROADMAPLoss
    model.compile(optimizer="adam", loss=ROADMAPLoss(), jit_compile=True)

Public names are loaded on first access, so light entry points (``keras-roadmap --help``, the
serving scripts) never import TensorFlow.
"""

import importlib

__version__ = "0.1.0"

# Public name -> module that defines it.
_EXPORTS = {
    # losses
    "CalibrationLoss": "keras_roadmap.losses",
    "INATURALIST_SUPAP": "keras_roadmap.losses",
    "ROADMAPLoss": "keras_roadmap.losses",
    "SmoothAPLoss": "keras_roadmap.losses",
    "SupAPLoss": "keras_roadmap.losses",
    "heaviside_average_precision": "keras_roadmap.losses",
    # memory and training
    "CrossBatchMemory": "keras_roadmap.memory",
    "RetrievalTrainer": "keras_roadmap.trainer",
    # export
    "ExportError": "keras_roadmap.export",
    "ExportReport": "keras_roadmap.export",
    "ExportVerificationError": "keras_roadmap.export",
    "NotAnEmbedderError": "keras_roadmap.export",
    "to_onnx": "keras_roadmap.export",
    "to_saved_model": "keras_roadmap.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_roadmap' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
