"""`embed(model, data)`: the one loop that turns an evaluation set into embeddings and labels.

Used by the `RetrievalEvaluation` callback and the recipes. Imports neither TensorFlow nor Keras:
`model` is anything with Keras' `predict` / `predict_on_batch`.
"""

import numpy as np

from keras_roadmap.evaluation import checks

MULTI_OUTPUT = "The model has several outputs; pass `model=` a model whose single output is the embedding."


def embed(model, data, *, batch_size: int = 256, name: str = "data"):
    """Embed every example of `data` with `model` in inference mode, in order.

    Args:
        model: a Keras model mapping inputs to `(batch, D)` embeddings (one output).
        data: a batched `tf.data.Dataset` (or any iterable) of `(x, y)` or `(x, y, sample_weight)`
            batches (weights ignored), or a tuple `(x, y)` of arrays.
        batch_size: batch size of `model.predict` for array inputs (default 256).
        name: what `data` is called in error messages (default "data").

    Returns:
        `(embeddings (N, D) float32, labels (N,) int64)`.

    Raises:
        ValueError: unbatched or empty data, a multi-output model, non-finite embeddings or
            non-integer labels (naming `name`).
    """
    if isinstance(data, tuple):
        x, labels = data
        embeddings = model.predict(x, batch_size=batch_size, verbose=0)
    else:
        parts, label_parts = [], []
        for element in data:
            x, y = element[0], element[1]
            y = np.asarray(y)
            if y.ndim == 0:
                raise ValueError(f"`{name}` yields single examples; batch it first, e.g. `{name}.batch(256)`.")
            out = model.predict_on_batch(x)
            if isinstance(out, (list, tuple, dict)):
                raise ValueError(MULTI_OUTPUT)
            parts.append(np.asarray(out))
            label_parts.append(y.reshape(len(y), -1)[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y)
        if not parts:
            raise ValueError(f"`{name}` is empty: the dataset yielded no batch.")
        embeddings = np.concatenate(parts)
        labels = np.concatenate(label_parts)
    if isinstance(embeddings, (list, tuple, dict)):
        raise ValueError(MULTI_OUTPUT)
    return checks.as_embeddings(embeddings, f"embeddings of {name}"), checks.as_labels(
        labels, len(embeddings), f"labels of {name}"
    )
