"""Embedding collapse: measure it (mean pairwise cosine) and warn when training stays there.

A network trained from scratch can start with every input mapped to nearly the same direction
(e.g. images on a shared white background through a ReLU CNN: mean pairwise cosine ~0.99).
From there SupAP escapes, but ROADMAP's calibration term can hold the embedding collapsed longer
(issue 18: for whole runs): every negative pair is above ``neg_margin``, the calibration gradient
through the L2 normalisation nearly vanishes and its weight dilutes the SupAP signal (README,
"When ROADMAP helps").
:class:`CollapseMonitor` says so during training instead of letting the run end poor.
"""

from __future__ import annotations

import warnings

import keras
from keras import ops

# CollapseMonitor defaults (see its docstring for what each means and why these values).
COLLAPSE_THRESHOLD = 0.9
COLLAPSE_PATIENCE = 150
MIN_LOSS_DROP = 0.05
# The key under which RetrievalTrainer logs the batch embeddings' mean pairwise cosine.
COSINE_LOG_KEY = "embedding_cosine"


def mean_pairwise_cosine(embeddings):
    """Mean cosine similarity over the ``B (B - 1)`` ordered pairs ``i != j`` of ``(B, D)``
    embeddings (any scale: rows are L2-normalised first; a zero row counts as cosine 0).
    Returns a float32 scalar; 0 when ``B < 2`` (no pair). Costs ``O(B D)``:
    ``(|sum u|^2 - sum |u|^2) / (B (B - 1))`` with ``u`` the normalised rows."""
    x = ops.cast(embeddings, "float32")
    norms = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    unit = x / ops.maximum(norms, 1e-12)
    total = ops.sum(unit, axis=0)
    n = ops.cast(ops.shape(x)[0], "float32")
    pairs = ops.sum(ops.square(total)) - ops.sum(ops.square(unit))
    return pairs / ops.maximum(n * (n - 1.0), 1.0)


class LastValue(keras.metrics.Metric):
    """A metric whose result is the last value given to ``update_state`` (a scalar), not a
    running mean: what a per-step monitor needs. Across replicas the replicas' values are
    averaged."""

    def __init__(self, name=COSINE_LOG_KEY, dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.value = self.add_variable(shape=(), initializer="zeros", name="value", aggregation="mean")

    def update_state(self, value):
        self.value.assign(ops.cast(value, self.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)

    def reset_state(self):
        self.value.assign(0.0)


class CollapseMonitor(keras.callbacks.Callback):
    """Warns once when the embedding stays collapsed: every input mapped to nearly one direction.

    After each training step the monitor reads the mean pairwise cosine of the batch
    embeddings (``logs["embedding_cosine"]``, which :class:`~keras_roadmap.RetrievalTrainer`
    logs every step; for a plain ``model.fit``, give ``probe``: it embeds that fixed batch every
    ``every_n_steps`` steps instead). A *collapsed streak* starts at the first step whose cosine
    is above ``threshold`` and ends at the first one at or below it. When a streak has lasted
    ``patience`` steps and the training loss (``logs["loss"]``) has fallen by less than
    ``min_loss_drop`` (relative) since the streak began, it issues one ``RuntimeWarning`` with
    the numbers and what to try, and records them in ``self.alarm``; it never warns again.

    Thresholds: ``threshold=0.9``: an untrained ``tiny_cnn`` on images with a shared
    background starts at 0.997; on that reproduction (``benchmarks/collapse_study.py``) SupAP
    alone falls below 0.9 by step 9-11 and trained embeddings sit at 0.4-0.8. ``patience=150``
    steps: past every escape measured there (ROADMAP's defaults: steps 18-28 at Adam 1e-3,
    46-53 at 3e-4), so a slow but healthy start stays silent; the issue's ROADMAP runs stayed
    above 0.98 for all of their 300 steps. ``min_loss_drop=0.05``: a collapsed ROADMAP run's loss
    moves 1.5-2% (1.366 -> 1.338 in 10 steps; 1.355 -> 1.331 in 300 steps in the issue).

    Args:
        threshold: cosine above which a step counts as collapsed (0.9).
        patience: collapsed steps before the warning (150).
        min_loss_drop: relative loss decrease over the streak that counts as progress and
            silences the warning (0.05); ``None`` ignores the loss.
        probe: optional inputs (one batch, several classes) embedded with
            ``model(probe, training=False)`` when the logs have no ``embedding_cosine``.
        every_n_steps: how often the probe is embedded (10); ignored when the logs have it.
        verbose: 1 (default) also prints the warning text.

    Attributes:
        alarm: None, or a dict (step, cosine, streak_start, loss_start, loss_now, message).
        history: ``[(step, cosine, loss), ...]`` of every step it measured.

    Steps are the optimizer's iteration count, so a resumed run continues the count.
    """

    def __init__(
        self,
        threshold=COLLAPSE_THRESHOLD,
        patience=COLLAPSE_PATIENCE,
        min_loss_drop=MIN_LOSS_DROP,
        *,
        probe=None,
        every_n_steps=10,
        verbose=1,
    ):
        super().__init__()
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be a cosine in (0, 1), got {threshold!r}.")
        for name, value in (("patience", patience), ("every_n_steps", every_n_steps)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if min_loss_drop is not None and not 0.0 <= float(min_loss_drop) < 1.0:
            raise ValueError(f"min_loss_drop must be None or in [0, 1), got {min_loss_drop!r}.")
        self.threshold = float(threshold)
        self.patience = int(patience)
        self.min_loss_drop = None if min_loss_drop is None else float(min_loss_drop)
        self.probe = probe
        self.every_n_steps = int(every_n_steps)
        self.verbose = int(verbose)
        self.alarm = None
        self.history = []
        self._streak = None  # (first collapsed step, loss then)
        self._seen_steps = 0

    def _step(self):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and hasattr(optimizer, "iterations"):
            return int(ops.convert_to_numpy(optimizer.iterations))
        return self._seen_steps

    def _cosine(self, logs, step):
        if COSINE_LOG_KEY in logs:
            return float(logs[COSINE_LOG_KEY])
        if self.probe is None:
            raise ValueError(
                f"CollapseMonitor: the training logs have no {COSINE_LOG_KEY!r} (RetrievalTrainer "
                "logs it); for a plain model.fit pass CollapseMonitor(probe=one batch of inputs)."
            )
        if step % self.every_n_steps:
            return None
        return float(mean_pairwise_cosine(self.model(self.probe, training=False)))

    def on_train_batch_end(self, batch, logs=None):
        self._seen_steps += 1
        if self.alarm is not None:
            return
        logs = logs or {}
        step = self._step()
        cosine = self._cosine(logs, step)
        if cosine is None:
            return
        loss = float(logs["loss"]) if "loss" in logs else None
        self.history.append((step, cosine, loss))
        if cosine <= self.threshold:
            self._streak = None
            return
        if self._streak is None:
            self._streak = (step, loss)
            return
        start, loss_start = self._streak
        if step - start < self.patience:
            return
        drop = None
        if loss_start is not None and loss is not None and loss_start != 0.0:
            drop = (loss_start - loss) / abs(loss_start)
        if self.min_loss_drop is not None and drop is not None and drop >= self.min_loss_drop:
            return
        self._raise_alarm(step, cosine, start, loss_start, loss, drop)

    def _raise_alarm(self, step, cosine, start, loss_start, loss, drop):
        trend = "" if drop is None else f" while the loss moved {100 * drop:.1f}% ({loss_start:.4g} -> {loss:.4g})"
        message = (
            f"Embedding collapse: the mean pairwise cosine of the batch embeddings has stayed above "
            f"{self.threshold:g} for {step - start} steps (now {cosine:.3f}, step {step}){trend}. The model maps "
            "every input to nearly the same direction, where the ranking losses get almost no gradient, and "
            "the run will likely end poor. What to try: a pretrained backbone (the paper's setting); "
            "ROADMAPLoss(calibration_warmup_steps=N) with N of a few hundred steps (SupAP alone first, then "
            "the calibration term ramps in; recipes: loss.calibration_warmup_steps); or inputs normalised so "
            "that a shared background does not dominate (e.g. subtract the dataset mean)."
        )
        self.alarm = {
            "step": step,
            "cosine": cosine,
            "streak_start": start,
            "loss_start": loss_start,
            "loss_now": loss,
            "message": message,
        }
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        if self.verbose:
            print(f"\nWARNING: {message}", flush=True)
