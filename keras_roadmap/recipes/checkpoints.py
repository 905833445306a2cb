"""Checkpointing pieces of a recipe run: best-embedder selection and resumption state.

* `BestEmbedderCheckpoint` keeps the *embedder* (not the trainer wrapping it) with the best
  `val_map@r`, the paper's model selection, and remembers the best value on disk so that a
  resumed run does not overwrite a better model with the first evaluation after the restart.
* `backup_epoch` reads the epoch `keras.callbacks.BackupAndRestore` will resume from, so the
  training stream can be rebuilt from that epoch (`make_train_dataset(first_epoch=...)`) and
  the resumed run sees exactly the batches the uninterrupted one would have seen.
"""

from __future__ import annotations

import json
import pathlib

import keras

from keras_roadmap import _keras_compat


def backup_epoch(backup_dir) -> int:
    """Epoch a `BackupAndRestore(backup_dir)` run resumes from: the number of completed epochs
    it saved (0 when there is no backup). An interrupted epoch restarts from its beginning."""
    path = _keras_compat.backup_metadata_path(backup_dir)
    if not path.is_file():
        return 0
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"Cannot read the resume point from {path} ({err}); delete {backup_dir} to start over."
        ) from err


class BestEmbedderCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint(save_best_only=True, mode="max")` of an embedder trained inside a trainer.

    Args:
        embedder: the model to save (the trainer's encoder), whatever model `fit` runs.
        filepath: `.keras` file of the best embedder.
        monitor: the log key to maximise (default "val_map@r", written by
            `keras_roadmap.evaluation.RetrievalEvaluation`, which must come earlier in the
            callback list).
        state_path: JSON file recording the best value and epoch; read at construction so a
            resumed run only saves on a real improvement. Default: `filepath` + ".best.json".

    Epochs whose logs lack `monitor` (no evaluation ran) are skipped: Keras' ModelCheckpoint
    would save on them anyway.
    """

    def __init__(self, embedder, filepath, *, monitor: str = "val_map@r", state_path=None, verbose: int = 1):
        self.state_path = pathlib.Path(state_path or f"{filepath}.best.json")
        self.best_epoch = None
        initial = None
        if self.state_path.is_file() and pathlib.Path(filepath).is_file():
            state = json.loads(self.state_path.read_text())
            initial, self.best_epoch = float(state["best"]), state.get("epoch")
        super().__init__(
            filepath,
            monitor=monitor,
            mode="max",
            save_best_only=True,
            initial_value_threshold=initial,
            verbose=verbose,
        )
        self._embedder = embedder

    def set_model(self, model):
        # fit() hands every callback the trainer; this one saves the embedder inside it.
        super().set_model(self._embedder)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.monitor not in logs:
            return
        before = self.best
        super().on_epoch_end(epoch, logs)
        if self.best != before:
            self.best_epoch = int(epoch)
            self.state_path.write_text(json.dumps({"best": float(self.best), "epoch": int(epoch), "monitor": self.monitor}))
