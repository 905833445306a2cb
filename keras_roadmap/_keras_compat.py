"""The one home of every private Keras API keras-roadmap relies on.

Keras 3 exposes no public equivalent of the few internals below. Each is wrapped here in one
small function, so that a Keras release changing one of them breaks one place, and
``tests/test_keras_compat.py`` checks every function against the installed Keras (it fails
with the name of the internal that moved). Keep this a flat list of small, documented
functions: one per internal, no classes, no state.

Public APIs are used wherever one exists (``keras.SymbolicScope`` to enter a symbolic build,
``BackupAndRestore`` itself to write backups); only what has no public form is here.
"""

import pathlib

# --- keras.src.backend: is Keras tracing output specs? ---------------------------------------


def in_symbolic_scope():
    """True inside ``keras.SymbolicScope`` (Keras computing output specs with no real data).

    ``keras.SymbolicScope`` is public but only as a context manager; the query is private
    (``keras.src.backend.in_symbolic_scope``). A Keras without it never builds losses
    symbolically, hence False.
    """
    try:
        from keras.src.backend import in_symbolic_scope as _in_symbolic_scope
    except ImportError:
        return False
    return bool(_in_symbolic_scope())


# --- keras.layers.Layer ----------------------------------------------------------------------


def nested_layers(model):
    """Every layer inside ``model``, nested models and layers of layers included, not ``model``.

    Private ``Layer._flatten_layers(include_self=False, recursive=True)``: ``model.layers`` only
    lists the direct children of a functional or sequential model.
    """
    return list(model._flatten_layers(include_self=False, recursive=True))


def regularization_losses(layer):
    """The weight-regularization penalties of ``layer``'s trainable weights (a list of tensors).

    Private ``Layer._get_regularization_losses()``: the public ``layer.losses`` also holds the
    ``add_loss`` activity losses, which a custom ``train_step`` must not count twice.
    """
    return layer._get_regularization_losses()


# --- keras.optimizers.Optimizer --------------------------------------------------------------


def variable_index(optimizer, variable):
    """Position of ``variable`` in the list ``optimizer.build(var_list)`` received.

    Private ``Optimizer._get_variable_index``: the index into per-variable slots (moments) and
    into per-variable settings computed at build time.
    """
    return optimizer._get_variable_index(variable)


def uses_weight_decay(optimizer, variable):
    """Whether ``optimizer`` decays ``variable``: False when its name matches
    ``exclude_from_weight_decay`` (private ``Optimizer._use_weight_decay``)."""
    return optimizer._use_weight_decay(variable)


# --- keras.callbacks.BackupAndRestore's files --------------------------------------------------

# BackupAndRestore writes these two files in its directory (its private `_weights_path` and
# `_training_metadata_path`); their names are not part of its documented API.
BACKUP_WEIGHTS_FILE = "latest.weights.h5"
BACKUP_METADATA_FILE = "training_metadata.json"


def backup_weights_path(backup_dir):
    """``pathlib.Path`` of the weights file ``BackupAndRestore(backup_dir)`` saves and restores."""
    return pathlib.Path(backup_dir) / BACKUP_WEIGHTS_FILE


def backup_metadata_path(backup_dir):
    """``pathlib.Path`` of the JSON file (``{"epoch": ..., ...}``) ``BackupAndRestore(backup_dir)``
    writes with each backup."""
    return pathlib.Path(backup_dir) / BACKUP_METADATA_FILE
