"""tensorflow-similarity (0.17.1) interoperability under Keras 3.

What works as is (tested): our losses in ``SimilarityModel.compile(loss=ROADMAPLoss())`` (they
carry ``distance = "cosine"``, which tf-similarity's index uses; it ranks like our dot product
on L2-normalised embeddings, e.g. after ``tfsim.layers.MetricEmbedding``), its
``MultiShotMemorySampler`` feeding ``fit``, ``index``, ``lookup`` and ``evaluate_retrieval``.

What is broken in tf-similarity under Keras 3, with the workaround here:

* ``SimilarityModel.save`` raises ``ValueError: The following argument(s) are not supported:
  ['signatures', 'options', 'save_traces']``: use :func:`save_similarity_model` /
  :func:`load_similarity_model` (Keras' own ``.keras`` format plus tf-similarity's index files).
* Its retrieval metrics with ``drop_closest_lookup=True`` compute P@(k-1) and MAP@(k-1) (an
  off-by-one; recall is right), and its only search is an approximate nmslib HNSW: prefer
  :func:`keras_roadmap.evaluation.retrieval_metrics` (exact, faiss) for reported numbers.
"""

import os

import keras

MODEL_FILE = "model.keras"
INDEX_DIR = "index"


def _tfsim():
    try:
        import tensorflow_similarity
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tensorflow-similarity is not installed: pip install 'keras-roadmap[tfsim]'"
        ) from error
    return tensorflow_similarity


def save_similarity_model(model, path):
    """Save a tf-similarity ``SimilarityModel`` and its index to the folder ``path``.

    Writes ``path/model.keras`` (Keras format: architecture, weights, compile config) and, when
    the model has an indexed set, ``path/index/`` (tf-similarity's own index files).
    """
    os.makedirs(path, exist_ok=True)
    keras.Model.save(model, os.path.join(path, MODEL_FILE))
    index = getattr(model, "_index", None)
    if index is not None and index.size() > 0:
        model.save_index(os.path.join(path, INDEX_DIR))
    return path


def load_similarity_model(path, compile=True):
    """Load what :func:`save_similarity_model` wrote: the model and, if saved, its index.

    Args:
        path: folder given to :func:`save_similarity_model`.
        compile: passed to ``keras.models.load_model``. tf-similarity's model class does not
            restore its compile configuration under Keras 3 (Keras warns about it): call
            ``compile`` again before training further.
    Returns:
        the ``SimilarityModel``, ready for ``lookup`` / ``evaluate_retrieval`` when an index was
        saved.
    """
    tfsim = _tfsim()
    model_file = os.path.join(path, MODEL_FILE)
    if not os.path.exists(model_file):
        raise FileNotFoundError(f"No {MODEL_FILE} in {path!r}: was it written by save_similarity_model?")
    custom = {
        "SimilarityModel": tfsim.models.SimilarityModel,
        "MetricEmbedding": tfsim.layers.MetricEmbedding,
    }
    model = keras.models.load_model(model_file, custom_objects=custom, compile=compile)
    index_dir = os.path.join(path, INDEX_DIR)
    if os.path.isdir(index_dir):
        model.load_index(index_dir)
    return model
