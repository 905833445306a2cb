"""tensorflow-similarity (0.17.1) interoperability under Keras 3.

Its own losses (MultiSimilarity, Triplet, Circle, PN, SoftNearestNeighbor, ...) through
:class:`TFSimilarityLoss`, so a tf-similarity user can train the loss they use today next to
ROADMAP, with ``SimilarityModel`` or with our ``RetrievalTrainer``::

    from keras_roadmap.tfsim import TFSimilarityLoss
    model.compile(optimizer="adam", loss=TFSimilarityLoss("MultiSimilarityLoss"))

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

from keras_roadmap.losses.base import RetrievalLoss

MODEL_FILE = "model.keras"
INDEX_DIR = "index"


def _tfsim():
    try:
        import tensorflow_similarity
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("tensorflow-similarity is not installed: pip install 'keras-roadmap[tfsim]'") from error
    return tensorflow_similarity


@keras.saving.register_keras_serializable(package="keras_roadmap")
class TFSimilarityLoss(RetrievalLoss):
    """A tensorflow-similarity loss that runs under Keras 3 (batch form: the batch is both the
    queries and the retrieval set). ``y_true`` ``(B,)`` int labels, ``y_pred`` ``(B, D)``
    embeddings -> the scalar mean of tf-similarity's per-example losses.

    tf-similarity 0.17 losses fail under Keras 3 in three ways, fixed here:

    1. their default ``reduction="auto"`` is rejected by Keras 3's ``Loss``: the inner loss is
       built with ``reduction="sum_over_batch_size"``;
    2. Keras 3 no longer AutoGraph-converts ``Loss.call``, and tf-similarity branches on tensors
       in Python (``if tf.rank(labels) == 1`` in ``build_masks``), which fails in graph mode
       (``OperatorNotAllowedInGraphError``): its loss function is called through ``tf.function``;
    3. that nested function's output has unknown rank: it is reshaped to ``(B,)`` before the mean.

    Args:
        loss: the name of a class in ``tensorflow_similarity.losses`` (default
            ``"MultiSimilarityLoss"``), or an instance built with
            ``reduction="sum_over_batch_size"``.
        loss_kwargs: keyword arguments of that class (e.g. ``distance="cosine"``, ``alpha=2``).
        name: default: the inner loss's name.

    Attributes:
        distance: the inner loss's distance name (``SimilarityModel.compile`` reads it, so its
            index searches with the distance the loss trained).

    The loss runs on TensorFlow only, has no reference form (no cross-batch memory: build the
    ``RetrievalTrainer`` without ``memory``), and under ``tf.distribute`` each replica ranks its
    own examples (``gather_across_replicas`` is False).
    """

    def __init__(self, loss="MultiSimilarityLoss", name=None, dtype=None, **loss_kwargs):
        import tensorflow as tf

        tfsim = _tfsim()
        if isinstance(loss, str):
            cls = getattr(tfsim.losses, loss, None)
            if cls is None or not isinstance(cls, type):
                raise ValueError(f"tensorflow_similarity.losses has no loss class {loss!r}.")
            inner = cls(reduction="sum_over_batch_size", **loss_kwargs)
        else:
            if loss_kwargs:
                raise ValueError("loss_kwargs only apply when `loss` is a class name.")
            inner = loss
        if not hasattr(inner, "fn") or not hasattr(inner, "_fn_kwargs"):
            raise ValueError(f"{inner!r} is not a tensorflow-similarity loss (no `fn`).")
        super().__init__(name=name or inner.name, dtype=dtype, gather_across_replicas=False)
        self.inner = inner
        self._loss_name = type(inner).__name__
        self._loss_kwargs = dict(loss_kwargs)
        self._fn = tf.function(inner.fn)
        self.distance = getattr(inner.distance, "name", None) or "cosine"

    def call(self, y_true, y_pred):
        import tensorflow as tf

        labels = tf.reshape(tf.cast(y_true, tf.int32), (-1, 1))
        embeddings = tf.cast(y_pred, self.dtype)
        per_example = self._fn(labels, embeddings, labels, embeddings, **self.inner._fn_kwargs)
        return tf.reduce_mean(tf.reshape(per_example, (-1,)))

    def call_with_reference(self, *args, **kwargs):
        raise NotImplementedError(
            f"{self._loss_name} (tensorflow-similarity) has no cross-batch memory form: build "
            "RetrievalTrainer(encoder) without memory= for it."
        )

    def get_config(self):
        return {"loss": self._loss_name, "name": self.name, **self._loss_kwargs}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


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
