"""keras-roadmap: ROADMAP (Ramzi et al., NeurIPS 2021) for Keras 3 (TensorFlow, JAX or PyTorch backend).

    from keras_roadmap import ROADMAPLoss
    model.compile(optimizer="adam", loss=ROADMAPLoss(), jit_compile=True)

``import keras_roadmap`` imports neither Keras nor TensorFlow (so that the ``keras-roadmap`` CLI
answers ``--help`` at once): every public name and submodule loads on first access. The first
access of any public name also imports the modules that register our Keras-serializable classes
(losses, memory, trainer, models, optimisers), so ``keras.models.load_model`` finds them; when
Keras is already imported, ``import keras_roadmap`` registers them at once. None of them imports
TensorFlow, so the package works with only keras + numpy + faiss under ``KERAS_BACKEND=jax`` or
``torch``; the names that need TensorFlow (tf.data pipelines, export, ``keras_roadmap.distributed``)
say so when it is missing.
"""

import importlib
import sys

from keras_roadmap._version import __version__  # noqa: F401

# Modules whose import registers Keras serializables (they import Keras / TensorFlow).
_REGISTERING = ("losses", "memory", "models", "optim", "trainer")

# Public name -> module that defines it.
_EXPORTS = {
    # losses
    "CalibrationLoss": "keras_roadmap.losses",
    "INATURALIST_SUPAP": "keras_roadmap.losses",
    "ROADMAPLoss": "keras_roadmap.losses",
    "SmoothAPLoss": "keras_roadmap.losses",
    "SupAPLoss": "keras_roadmap.losses",
    "heaviside_average_precision": "keras_roadmap.losses",
    # the SupRank family (journal extension of ROADMAP)
    "ClusterLoss": "keras_roadmap.losses.cluster",
    "ClusterProxies": "keras_roadmap.losses.cluster",
    "ROADMAPPlusPlusLoss": "keras_roadmap.losses.cluster",
    "SupNDCGLoss": "keras_roadmap.losses.ndcg",
    "ROADNDCGLoss": "keras_roadmap.losses.roadndcg",
    "SupRecallLoss": "keras_roadmap.losses.recall",
    # hierarchical and recall losses (issue 23: HAPPIER, RS@k)
    "HAPLoss": "keras_roadmap.losses.hierarchical",
    "HAPPIERLoss": "keras_roadmap.losses.happier",
    "RecallAtKLoss": "keras_roadmap.losses.recall_surrogate",
    "simix": "keras_roadmap.losses.recall_surrogate",
    # memory and training
    "CrossBatchMemory": "keras_roadmap.memory",
    "RetrievalTrainer": "keras_roadmap.trainer",
    # models and optimisers
    "IMAGENET_MEAN": "keras_roadmap.models",
    "IMAGENET_STD": "keras_roadmap.models",
    "build_embedder": "keras_roadmap.models",
    "GeMPooling": "keras_roadmap.models",
    "freeze_batchnorm": "keras_roadmap.models",
    "list_embedders": "keras_roadmap.models",
    "register_embedder": "keras_roadmap.models",
    "MultiStepDecay": "keras_roadmap.optim",
    "CosineAnnealingDecay": "keras_roadmap.optim",
    "TorchAdam": "keras_roadmap.optim",
    "TorchSGD": "keras_roadmap.optim",
    "build_optimizer": "keras_roadmap.optim",
    # data and samplers
    "CorruptImageLog": "keras_roadmap.data",
    "DatasetFormatError": "keras_roadmap.data",
    "RetrievalSplit": "keras_roadmap.data",
    "load_cub": "keras_roadmap.data",
    "load_inaturalist": "keras_roadmap.data",
    "load_inshop": "keras_roadmap.data",
    "load_sop": "keras_roadmap.data",
    # a user's own images (issue 22)
    "CustomData": "keras_roadmap.data",
    "ImageSet": "keras_roadmap.data",
    "inspect_images": "keras_roadmap.data",
    "load_custom": "keras_roadmap.data",
    "load_rgb": "keras_roadmap.data",
    "read_images": "keras_roadmap.data",
    "split_by_class": "keras_roadmap.data",
    "make_eval_dataset": "keras_roadmap.data",
    "make_train_dataset": "keras_roadmap.data",
    "GlyphDataset": "keras_roadmap.data",
    "build_glyph_dataset": "keras_roadmap.data",
    "HierarchicalSampler": "keras_roadmap.samplers",
    "MPerClassSampler": "keras_roadmap.samplers",
    "NoReplacementSampler": "keras_roadmap.samplers",
    # evaluation
    "RetrievalEvaluation": "keras_roadmap.evaluation",
    "retrieval_metrics": "keras_roadmap.evaluation",
    "hierarchical_retrieval_metrics": "keras_roadmap.evaluation.hierarchical",
    "save_recall_curve": "keras_roadmap.evaluation",
    "save_retrieval_grid": "keras_roadmap.evaluation",
    # diagnostics
    "CollapseMonitor": "keras_roadmap.collapse",
    "mean_pairwise_cosine": "keras_roadmap.collapse",
    "DecomposabilityGap": "keras_roadmap.diagnostics",
    "decomposability_gap": "keras_roadmap.diagnostics",
    # errors and guarded training (issue 14)
    "CheckpointError": "keras_roadmap.errors",
    "ConfigError": "keras_roadmap.errors",
    "KerasRoadmapError": "keras_roadmap.errors",
    "NonFiniteError": "keras_roadmap.errors",
    "NonFiniteGuard": "keras_roadmap.guard",
    # export
    "ExportError": "keras_roadmap.export",
    "ExportReport": "keras_roadmap.export",
    "ExportVerificationError": "keras_roadmap.export",
    "NotAnEmbedderError": "keras_roadmap.export",
    "to_onnx": "keras_roadmap.export",
    "to_saved_model": "keras_roadmap.export",
    # run report (issue 22)
    "write_report": "keras_roadmap.report",
}

__all__ = sorted(_EXPORTS)


def _register_serializables():
    for module in _REGISTERING:
        importlib.import_module(f"keras_roadmap.{module}")


def __getattr__(name):
    if name in _REGISTERING:
        _register_serializables()
        return importlib.import_module(f"keras_roadmap.{name}")
    if name in _EXPORTS:
        _register_serializables()
        try:
            value = getattr(importlib.import_module(_EXPORTS[name]), name)
        except ModuleNotFoundError as error:
            if error.name != "tensorflow":
                raise
            raise ModuleNotFoundError(
                f"keras_roadmap.{name} needs TensorFlow (tf.data pipelines, SavedModel/ONNX export and "
                "tf.distribute are TensorFlow-based): pip install 'keras-roadmap[tensorflow]'.",
                name="tensorflow",
            ) from error
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_roadmap' has no attribute {name!r}")


# Keras already imported (the usual `import keras` first): registering now costs nothing more
# and lets `keras.models.load_model` find our classes right after `import keras_roadmap`.
if "keras" in sys.modules:
    _register_serializables()


def __dir__():
    return sorted(set(globals()) | set(__all__))
