"""Guarded numerics: stop training at the first non-finite loss or embedding.

Under ``tf.function`` and XLA a NaN cannot raise inside the step (``tf.debugging.check_numerics``
does not compile with ``jit_compile=True``), so the check is split in two:

* in the step, :func:`poison_nonfinite` makes the loss NaN when the embeddings hold a NaN or
  Inf (a where on constants: no effect on the value or the gradient of a finite step), so one
  scalar carries both checks; our losses apply it in ``__call__``;
* on the host, :class:`NonFiniteGuard` (a callback, added by ``RetrievalTrainer.fit`` and the
  recipes; add it yourself to ``model.fit`` with our losses) reads the step's loss and raises
  :class:`~keras_roadmap.errors.NonFiniteError` naming the epoch and step. It is dispatched
  asynchronously (Keras' ``async_safe``), so it does not stall the device pipeline; Keras
  waits for it before any ``on_epoch_end``, so no checkpoint of a bad epoch is written.

It also warns once per run about degenerate batches (a batch of one example, or without any
positive pair), which train nothing, when the logs carry ``degenerate_batches`` (the trainer).
"""

from __future__ import annotations

import math
import threading
import warnings

import keras
from keras import ops

from keras_roadmap.errors import NonFiniteError

DEGENERATE_KEY = "degenerate_batches"


def poison_nonfinite(loss, embeddings):
    """``loss``, or NaN when ``embeddings`` holds a non-finite value (graph- and XLA-safe)."""
    finite = ops.all(ops.isfinite(embeddings))
    return loss + ops.where(finite, ops.zeros((), loss.dtype), ops.full((), float("nan"), loss.dtype))


def degenerate_batch(labels):
    """Scalar float 1.0 when the batch trains nothing: fewer than 2 examples or no pair
    ``i != j`` sharing a label; else 0.0 (graph- and XLA-safe). ``O(B log B)``: two equal
    neighbours among the sorted labels, no ``(B, B)`` mask (64 MiB at B = 4096). Hierarchical
    labels ``(B, L)`` (coarse to fine) are judged by their finest level."""
    if len(labels.shape) == 2:
        labels = labels[:, -1]
    ordered = ops.sort(ops.reshape(labels, (-1,)))
    repeats = ops.cast(ops.equal(ordered[1:], ordered[:-1]), "float32")
    return ops.cast(ops.less_equal(ops.sum(repeats), 0.0), "float32")


class NonFiniteGuard(keras.callbacks.Callback):
    """Raise :class:`~keras_roadmap.errors.NonFiniteError` at the first training step whose
    logged loss (or any logged value among ``keys``) is NaN or Inf.

    Args:
        keys: log keys to check (default ``("loss",)``; the trainer's loss is NaN when an
            embedding is non-finite).

    Warns once per run (``RuntimeWarning``) when the logs report degenerate batches.
    """

    async_safe = True  # Keras may run it in a worker thread; it flushes before on_epoch_end

    def __init__(self, keys=("loss",)):
        super().__init__()
        self.keys = tuple(keys)
        self._lock = threading.Lock()
        self._epoch = 0
        self._step = 0
        self._warned = False

    def on_train_begin(self, logs=None):
        self._warned = False
        self._step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        values = {}
        for key in self.keys:
            if key in logs:
                values[key] = float(logs[key])
        with self._lock:
            self._step += 1
            epoch, step = self._epoch, int(batch)
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            self.model.stop_training = True
            raise NonFiniteError(
                f"Training stopped at epoch {epoch + 1}, step {step + 1}: "
                f"{', '.join(f'{k} = {v}' for k, v in bad.items())} "
                "(a NaN or Inf in the loss or the embeddings). The model's weights may be corrupt from "
                "this step on; no checkpoint of this epoch was written (a recipe keeps its last good "
                "backup). Lower the learning rate or check the inputs."
            )
        if not self._warned and DEGENERATE_KEY in logs and float(logs[DEGENERATE_KEY]) > 0:
            self._warned = True
            warnings.warn(
                f"Epoch {epoch + 1}, step {step + 1}: a batch with fewer than 2 examples or without any "
                "positive pair (two examples of one class) trains nothing. Use a class-balanced sampler "
                "(keras_roadmap.MPerClassSampler) or drop_remainder=True. (Warned once per run.)",
                RuntimeWarning,
                stacklevel=2,
            )


def with_guard(callbacks):
    """``callbacks`` (None or a sequence) with a NonFiniteGuard in front unless one is there.
    A ``keras.callbacks.CallbackList`` is returned as given (its owner built it on purpose)."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    callbacks = list(callbacks or [])
    if not any(isinstance(c, NonFiniteGuard) for c in callbacks):
        callbacks.insert(0, NonFiniteGuard())
    return callbacks
