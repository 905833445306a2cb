"""Retrieval evaluation: exact faiss k-NN, ROADMAP/pytorch-metric-learning metrics, a Keras
callback and pictures.

The numpy/faiss part imports neither TensorFlow nor Keras; `RetrievalEvaluation` (Keras) and the
picture helpers (matplotlib, PIL) load their dependencies only when first used.
"""

from keras_roadmap.evaluation.average_precision import average_precision
from keras_roadmap.evaluation.embed import embed
from keras_roadmap.evaluation.knn import exact_knn
from keras_roadmap.evaluation.metrics import DEFAULT_KS, retrieval_metrics

_LAZY = {
    "RetrievalEvaluation": "keras_roadmap.evaluation.callback",
    "save_retrieval_grid": "keras_roadmap.evaluation.visualization",
    "save_recall_curve": "keras_roadmap.evaluation.visualization",
}

__all__ = [
    "DEFAULT_KS",
    "RetrievalEvaluation",
    "average_precision",
    "embed",
    "exact_knn",
    "retrieval_metrics",
    "save_recall_curve",
    "save_retrieval_grid",
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
