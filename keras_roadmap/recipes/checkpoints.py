"""Crash-safe state of a recipe run: the per-epoch backup, the best embedder, the history.

Every file is written to a temporary name and renamed into place (`keras_roadmap.atomic`), so
a run killed at any moment leaves each file either as it was or complete.

* `RunBackup` replaces `keras.callbacks.BackupAndRestore` (whose weights file is written in
  place, so a kill during the write left a 0-byte weights file that no rerun could load).
  Each epoch writes `backup/epoch-NNNN.weights.h5` (weights, optimiser, memory), then commits
  it by renaming the metadata file (epoch, file name, SHA-256, resolved config; same name as
  BackupAndRestore's, so backups of older runs are still read) into place. The previous
  generation is kept: a damaged newest file falls back to it.
* `read_backup` / `backup_epoch` give the state a rerun resumes from (the training stream is
  rebuilt from that epoch, `make_train_dataset(first_epoch=...)`, so the resumed run sees the
  batches the unbroken one saw); `config_changes` lists what differs from the stored config.
* `BestEmbedderCheckpoint` keeps the *embedder* (not the trainer) with the best `val_map@r`
  and remembers the best value, so a resumed run only saves on a real improvement.
* `HistoryCSV` writes `history.csv` like `keras.callbacks.CSVLogger`, but a resumed run first
  drops the rows of the epochs it redoes, so the file ends as an unbroken run's.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import pathlib

import keras

from keras_roadmap import _keras_compat, atomic
from keras_roadmap.errors import CheckpointError, NonFiniteError, OutputDirError

BACKUP_METADATA = _keras_compat.BACKUP_METADATA_FILE
LEGACY_WEIGHTS = _keras_compat.BACKUP_WEIGHTS_FILE  # keras.callbacks.BackupAndRestore's file (older runs)
FORMAT = 2


@dataclasses.dataclass
class BackupState:
    """A usable backup: resume at `epoch` (completed epochs) from `weights`; `config` is the
    resolved config it was made with (None for backups of older versions)."""

    epoch: int
    weights: pathlib.Path
    config: dict | None
    fell_back: bool = False


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _intact(backup_dir: pathlib.Path, entry) -> bool:
    if not entry:
        return False
    path = backup_dir / entry["weights"]
    return path.is_file() and (entry.get("sha256") is None or _sha256(path) == entry["sha256"])


def read_backup(backup_dir) -> BackupState | None:
    """The last complete state in `backup_dir`, or None when there is none.

    A newest weights file that is missing or fails its checksum falls back to the previous
    generation (`fell_back=True`).

    Raises:
        CheckpointError: the metadata is unreadable, or no generation is intact; the message
            names the file and says to delete the folder to start over.
    """
    backup_dir = pathlib.Path(backup_dir)
    path = backup_dir / BACKUP_METADATA
    if not path.is_file():
        return None
    start_over = f"delete {backup_dir} to start over (the run restarts from epoch 0)"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        epoch = int(meta["epoch"])
        current = {"epoch": epoch, "weights": meta.get("weights", LEGACY_WEIGHTS), "sha256": meta.get("sha256")}
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise CheckpointError(f"Cannot read the resume point from {path} ({err}); {start_over}.") from err
    if _intact(backup_dir, current):
        return BackupState(epoch, backup_dir / current["weights"], meta.get("config"))
    previous = meta.get("previous")
    if _intact(backup_dir, previous):
        return BackupState(
            int(previous["epoch"]), backup_dir / previous["weights"], previous.get("config"), fell_back=True
        )
    raise CheckpointError(
        f"The backup {backup_dir / current['weights']} is missing or damaged (checksum mismatch) and no "
        f"earlier generation is intact; {start_over}."
    )


def backup_epoch(backup_dir) -> int:
    """Epoch a run with this `backup_dir` resumes from: the number of completed epochs it
    saved (0 when there is no backup). An interrupted epoch restarts from its beginning."""
    state = read_backup(backup_dir)
    return 0 if state is None else state.epoch


def has_backup(backup_dir) -> bool:
    """True when `backup_dir` holds a backup metadata file (intact or not)."""
    return (pathlib.Path(backup_dir) / BACKUP_METADATA).is_file()


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for key in value:
            out.update(_flatten(value[key], f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def config_changes(old: dict, new: dict) -> list:
    """`["key.path: old -> new", ...]` for every leaf that differs (sorted by key path). A key
    absent on one side and None on the other is no change: a setting added in a later version
    with the default None (e.g. `chunk_size`) must not stop the resume of an older run."""
    a, b = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(new)))
    return [
        f"{key}: {a.get(key, '(absent)')!r} -> {b.get(key, '(absent)')!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def output_dir(out) -> pathlib.Path:
    """Create the run folder `out`; an OutputDirError (one line) when it cannot be."""
    out = pathlib.Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        blocker = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), out)
        raise OutputDirError(f"--out {out}: {blocker} is a file, not a folder; choose another --out.") from err
    except OSError as err:
        raise OutputDirError(f"--out {out} cannot be created: {err.strerror or err}.") from err
    return out


def _check_finite_logs(epoch, logs):
    bad = {k: v for k, v in (logs or {}).items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise NonFiniteError(
            f"Epoch {epoch + 1} ended with non-finite logs {bad}; its state is not saved (the backup "
            "keeps the last finite epoch)."
        )


class RunBackup(keras.callbacks.Callback):
    """Per-epoch crash-safe backup of the model fit trains (weights, optimiser, memory).

    Args:
        backup_dir: the folder (created).
        config: a JSON-able dict stored with each generation (the resolved recipe config).
        state: the `read_backup` result to restore at the start of training, or None. Pass its
            epoch to `fit(initial_epoch=...)`.

    The model must be built before `fit` (as for BackupAndRestore). An epoch whose logs are
    not finite is not saved (a `NonFiniteError` is raised instead).
    """

    def __init__(self, backup_dir, *, config=None, state: BackupState | None = None):
        super().__init__()
        self.backup_dir = pathlib.Path(backup_dir)
        self.config = config
        self.state = state

    def on_train_begin(self, logs=None):
        atomic.remove_partials(self.backup_dir)
        if self.state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            # The optimiser's variables must exist before its state can be loaded into them.
            self.model.optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(self.state.weights)
        except Exception as err:  # noqa: BLE001 - h5py/Keras raise many types; one line for the user
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"Cannot load the backup {self.state.weights} into this model ({first}). The model or "
                f"its configuration changed since it was written: use another --out, or delete "
                f"{self.backup_dir} to start over."
            ) from err

    def on_epoch_end(self, epoch, logs=None):
        _check_finite_logs(epoch, logs)
        completed = int(epoch) + 1
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{completed:04d}.weights.h5"
        with atomic.atomic_path(self.backup_dir / name, stall="backup_write") as tmp:
            self.model.save_weights(str(tmp), overwrite=True)
        digest = _sha256(self.backup_dir / name)
        atomic.stall_point("backup_commit")
        previous = None
        meta_path = self.backup_dir / BACKUP_METADATA
        if meta_path.is_file():
            try:
                old = json.loads(meta_path.read_text(encoding="utf-8"))
                previous = {k: old.get(k) for k in ("epoch", "weights", "sha256", "config")}
            except (ValueError, OSError):
                previous = None
        if previous and previous["weights"] == name:
            previous = None  # the same epoch saved again (a resumed run redoing it)
        meta = {
            "format": FORMAT,
            "epoch": completed,
            "batch": 0,
            "weights": name,
            "sha256": digest,
            "config": self.config,
            "previous": previous,
        }
        atomic.write_text(meta_path, json.dumps(meta, indent=1))
        keep = {name} | ({previous["weights"]} if previous else set())
        for stale in self.backup_dir.glob("*.weights.h5"):
            if stale.name not in keep:
                stale.unlink()


class BestEmbedderCheckpoint(keras.callbacks.Callback):
    """Save the embedder trained inside a trainer whenever `monitor` improves (max mode).

    Args:
        embedder: the model to save (the trainer's encoder), whatever model `fit` runs.
        filepath: `.keras` file of the best embedder (written atomically).
        monitor: the log key to maximise (default "val_map@r", written by
            `keras_roadmap.evaluation.RetrievalEvaluation`, which must come earlier in the
            callback list).
        state_path: JSON file recording the best value and epoch; read at construction so a
            resumed run only saves on a real improvement. Default: `filepath` + ".best.json".
        verbose: 1 prints a line on each save.

    Epochs whose logs lack `monitor` (no evaluation ran) or hold a non-finite value are skipped.
    """

    def __init__(self, embedder, filepath, *, monitor: str = "val_map@r", state_path=None, verbose: int = 1):
        super().__init__()
        self.filepath = pathlib.Path(filepath)
        self.state_path = pathlib.Path(state_path or f"{filepath}.best.json")
        self.monitor = monitor
        self.verbose = verbose
        self.best = -math.inf
        self.best_epoch = None
        self._embedder = embedder
        if self.state_path.is_file() and self.filepath.is_file():
            try:
                state = json.loads(self.state_path.read_text(encoding="utf-8"))
                self.best, self.best_epoch = float(state["best"]), state.get("epoch")
            except (ValueError, KeyError, TypeError) as err:
                raise CheckpointError(
                    f"Cannot read {self.state_path} ({err}); delete it and {self.filepath} to select the "
                    "best model again from the remaining evaluations."
                ) from err

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.monitor not in logs:
            return
        value = float(logs[self.monitor])
        if not math.isfinite(value) or value <= self.best:
            return
        if self.verbose:
            print(
                f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {value:.5f}, "
                f"saving model to {self.filepath}",
                flush=True,
            )
        with atomic.atomic_path(self.filepath, stall="best_write") as tmp:
            self._embedder.save(str(tmp))
        self.best, self.best_epoch = value, int(epoch)
        atomic.write_text(self.state_path, json.dumps({"best": value, "epoch": int(epoch), "monitor": self.monitor}))


def load_best_embedder(path):
    """`keras.models.load_model(path)`, or a one-line CheckpointError naming the file."""
    try:
        return keras.models.load_model(path)
    except Exception as err:  # noqa: BLE001
        from keras_roadmap.model_files import keras_file_damage

        damage = keras_file_damage(path)
        if damage is None:
            damage = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"Cannot read the best embedder {path} ({damage}); delete it and {path}.best.json and rerun with "
            "the same --out: an unfinished run resumes from backup/ and selects the best of its remaining "
            "evaluations; a finished one reports the last epoch's weights (from backup/) instead of the best; "
            "to select the best again, train anew with another --out."
        ) from err


class HistoryCSV(keras.callbacks.Callback):
    """`history.csv`: one row per epoch (`epoch`, then the log keys sorted), rewritten
    atomically each epoch. A run starting at `initial_epoch` first drops the rows of epochs
    >= `initial_epoch` (those it redoes after a kill), so the file matches an unbroken run."""

    def __init__(self, path, initial_epoch: int = 0):
        super().__init__()
        self.path = pathlib.Path(path)
        self.initial_epoch = int(initial_epoch)
        self.rows: list = []
        self.keys: list | None = None

    def on_train_begin(self, logs=None):
        self.rows, self.keys = [], None
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                self.keys = [k for k in (reader.fieldnames or []) if k != "epoch"] or None
                self.rows = [
                    row for row in reader if row.get("epoch", "").isdigit() and int(row["epoch"]) < self.initial_epoch
                ]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        self.rows.append({"epoch": str(epoch), **{k: str(logs.get(k, "NA")) for k in self.keys}})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["epoch", *self.keys], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic.write_text(self.path, text.getvalue(), stall="history_write")
