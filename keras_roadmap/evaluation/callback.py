"""Keras callback writing retrieval metrics (`val_recall@1`, `val_map@r`, ...) into the epoch logs."""

import logging
import sys
import time

import keras

from keras_roadmap.evaluation import checks
from keras_roadmap.evaluation.embed import embed
from keras_roadmap.evaluation.metrics import retrieval_metrics

LOGGED_METRICS = ("precision@1", "r_precision", "map@r", "map", "mrr")
SKIPPED_EPOCHS = ("carry", "omit")


class RetrievalEvaluation(keras.callbacks.Callback):
    """Embed a validation set at the end of some epochs and log its retrieval metrics.

    The metrics (see `retrieval_metrics`) are written into `logs` as `prefix + name`, e.g.
    `val_recall@1`, `val_map@r`, `val_map`, so `ModelCheckpoint(monitor="val_map@r",
    mode="max")`, `EarlyStopping`, `TensorBoard`, `CSVLogger` and `History` all see them.
    **Put this callback before them in the `callbacks` list**: Keras calls callbacks in list
    order with one shared `logs` dict (History and the progress bar always come last).

    Evaluation runs on epoch 0, then every `every_n_epochs` epochs, and on the last epoch.
    On the epochs in between, `skipped_epochs` decides what the logs get:

    * "carry" (default): the latest values again. `ModelCheckpoint(save_best_only=True)` then
      never saves an un-evaluated model (an equal value is no improvement), and EarlyStopping's
      patience counts epochs. History has one (repeated) value per epoch.
    * "omit": nothing. Keras 3 `ModelCheckpoint(save_best_only=True)` *saves anyway* when its
      monitored key is missing (with a warning), so do not combine "omit" with it; EarlyStopping
      warns and ignores the epoch.

    The values of the evaluated epochs alone are in `self.history` (`{"epoch": [...], key: [...]}`).

    Args:
        data: the references (gallery): a batched `tf.data.Dataset` yielding `(x, y)` or
            `(x, y, sample_weight)` (weights ignored), or a tuple `(x, y)` of arrays. It is
            iterated once per evaluation, so keep it deterministic (no random augmentation).
        query_data: optional query set in the same format (query/gallery mode, e.g. In-Shop);
            default None: same-source (each item queries all the others).
        every_n_epochs: evaluation period in epochs (default 1).
        ks: the K of the logged `recall@K` (default (1, 2, 4, 8)).
        prefix: prefix of the log keys (default "val_").
        metric: "inner_product" (default) or "l2", see `retrieval_metrics`.
        model: the model producing the embeddings; default the model being trained (pass e.g.
            the embedding trunk when training a classifier head on top).
        batch_size: batch size for array inputs (default 256).
        logged: which non-recall metrics to log (default precision@1, r_precision, map@r, map, mrr).
        skipped_epochs: "carry" or "omit", see above.
        verbose: 1 (default) prints one line per evaluation; 0 is silent.
        chunk_size: query chunk of the exact search (default 2048).
    """

    def __init__(
        self,
        data,
        *,
        query_data=None,
        every_n_epochs: int = 1,
        ks=(1, 2, 4, 8),
        prefix: str = "val_",
        metric: str = "inner_product",
        model=None,
        batch_size: int = 256,
        logged=LOGGED_METRICS,
        skipped_epochs: str = "carry",
        verbose: int = 1,
        chunk_size: int = 2048,
    ):
        super().__init__()
        self.data = _check_data(data, "data")
        self.query_data = None if query_data is None else _check_data(query_data, "query_data")
        self.every_n_epochs = checks.positive_int(every_n_epochs, "every_n_epochs")
        self.ks = checks.as_ks(ks)
        self.metric = checks.as_metric(metric)
        self.embedding_model = model
        self.batch_size = checks.positive_int(batch_size, "batch_size")
        unknown = set(logged) - set(LOGGED_METRICS)
        if unknown:
            raise ValueError(f"`logged` has unknown metrics {sorted(unknown)}; choose among {LOGGED_METRICS}.")
        self.logged = tuple(logged)
        if skipped_epochs not in SKIPPED_EPOCHS:
            raise ValueError(f"`skipped_epochs` must be one of {SKIPPED_EPOCHS}; got {skipped_epochs!r}.")
        self.skipped_epochs = skipped_epochs
        self.prefix = str(prefix)
        self.verbose = verbose
        self.chunk_size = checks.positive_int(chunk_size, "chunk_size")
        self.history = {"epoch": []}
        self._latest = {}

    def on_train_begin(self, logs=None):
        self.history = {"epoch": []}
        self._latest = {}

    def should_evaluate(self, epoch: int) -> bool:
        """True on epoch 0, every `every_n_epochs` epochs after it, and on the last epoch."""
        last = (self.params or {}).get("epochs")
        return epoch % self.every_n_epochs == 0 or (last is not None and epoch == last - 1)

    def evaluate(self) -> dict:
        """Embed the data with the model and return the full `retrieval_metrics` dict."""
        model = self.embedding_model if self.embedding_model is not None else self.model
        refs, ref_labels = embed(model, self.data, batch_size=self.batch_size, name="data")
        if self.query_data is None:
            return retrieval_metrics(refs, ref_labels, ks=self.ks, metric=self.metric, chunk_size=self.chunk_size)
        queries, query_labels = embed(model, self.query_data, batch_size=self.batch_size, name="query_data")
        return retrieval_metrics(
            refs,
            ref_labels,
            query_embeddings=queries,
            query_labels=query_labels,
            ks=self.ks,
            metric=self.metric,
            chunk_size=self.chunk_size,
        )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not self.should_evaluate(epoch):
            if self.skipped_epochs == "carry":
                logs.update(self._latest)
            return
        began = time.perf_counter()
        metrics = self.evaluate()
        names = [f"recall@{k}" for k in self.ks] + list(self.logged)
        self._latest = {self.prefix + name: metrics[name] for name in names}
        logs.update(self._latest)
        self.history["epoch"].append(epoch)
        for key, value in self._latest.items():
            self.history.setdefault(key, []).append(value)
        if self.verbose:
            shown = " - ".join(f"{key}: {value:.4f}" for key, value in self._latest.items())
            _print_line(
                f"Epoch {epoch + 1}: retrieval on {metrics['num_queries']} queries "
                f"({time.perf_counter() - began:.1f}s) - {shown}"
            )


def _print_line(message: str) -> None:
    # Same routing as Keras' own progress output: stdout, or logging when interactive output is off.
    if keras.config.is_interactive_logging_enabled():
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
    else:
        logging.getLogger("keras_roadmap").info(message)


def _check_data(data, name):
    # A tf.data.Dataset implies TensorFlow is imported already; without TF, arrays only.
    tf = sys.modules.get("tensorflow")

    if tf is not None and isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise ValueError(f"`{name}` must yield (x, y) or (x, y, sample_weight) tuples; its elements are {spec}.")
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        n = len(x) if not isinstance(x, dict) else len(next(iter(x.values())))
        return x, checks.as_labels(y, n, f"{name} labels")
    raise TypeError(
        f"`{name}` must be a batched tf.data.Dataset of (x, y) or a tuple (x, y) of arrays; got {type(data).__name__}."
    )
