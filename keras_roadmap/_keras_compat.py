"""The one home of every private Keras API keras-roadmap relies on.

Keras 3 exposes no public equivalent of the few internals below. Each is wrapped here in one
small function, so that a Keras release changing one of them breaks one place, and
``tests/test_keras_compat.py`` checks every function against the installed Keras (it fails
with the name of the internal that moved). Keep this a flat list of small, documented
functions: one per internal, no classes, no state.

Public APIs are used wherever one exists (``keras.SymbolicScope`` to enter a symbolic build,
``BackupAndRestore`` itself to write backups); only what has no public form is here.
"""

import functools
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


# --- keras.ops.searchsorted on the TensorFlow backend of Keras < 3.12 -------------------------


def _keras_version():
    import keras

    return tuple(int(part) for part in keras.version().split(".")[:2])


def searchsorted(sorted_sequence, values, side="left"):
    """``keras.ops.searchsorted``, also when ``sorted_sequence``'s length is only known at run time.

    Keras 3.8-3.11's TensorFlow backend picks the output dtype with ``len(sorted_sequence)``,
    which raises ``TypeError: len is not well defined for a symbolic Tensor`` inside a
    ``tf.function`` whose batch size is dynamic (every ``fit``); Keras 3.12 reads the static shape
    instead. There, ``tf.searchsorted`` is called directly (int32 indices, as Keras returns for
    any sequence shorter than 2**31). Public ``keras.ops.searchsorted`` everywhere else.
    """
    import keras

    if keras.backend.backend() == "tensorflow" and _keras_version() < (3, 12):
        import tensorflow as tf

        return tf.searchsorted(sorted_sequence, values, side=side, out_type=tf.int32)
    return keras.ops.searchsorted(sorted_sequence, values, side=side)


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


# --- keras.src.backend.tensorflow.trainer under MultiWorkerMirroredStrategy --------------------
#
# The one home of private Keras (and TensorFlow) APIs used by keras_roadmap.
#
# Each entry says which Keras behaviour it works around and which test notices when Keras changes.
#
# Multi-worker ``fit`` (Keras 3.15, ``MultiWorkerMirroredStrategy``), two Keras bugs
# (Keras issue #20585 is open), both in ``keras/src/backend/tensorflow/trainer.py``:
#
# 1. ``TensorFlowTrainer._maybe_symbolic_build`` reduces the first distributed batch with
#    ``strategy.reduce("MEAN", batch, axis=None)`` to get its specs; the collective strategy
#    cannot convert the nested ``PerReplica`` batch (``ValueError: Attempt to convert a value
#    (PerReplica...)``). Workaround: build from this worker's first local batch (only the shapes
#    and dtypes matter).
# 2. ``reduce_per_replica`` reduces the logged values with ``strategy.reduce("MEAN", v, axis=0)``
#    in multi-worker mode, which fails on 0-d values (``Invalid reduction dimension 0``).
#    Workaround: the step returns every 0-d logged value as shape ``(1,)``; the reduce over axis 0
#    then averages the replicas' (already synchronised) metric results into a scalar.
#
# ``tests/test_multi_worker.py::test_keras_multi_worker_fit_is_still_broken_without_the_fix`` runs
# an unpatched ``loss="mse"`` model on two workers and fails once Keras fixes both bugs, so these
# workarounds can be removed then.


def in_multi_worker_mode(strategy):
    """True for a ``MultiWorkerMirroredStrategy`` that really spans several workers.

    Mirrors Keras' own test (``_collective_all_reduce_multi_worker``): TensorFlow's private
    ``extended._in_multi_worker_mode()``.
    """
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        strategy.extended._in_multi_worker_mode()
    )


def _keras_distribute_strategy(model):
    # Keras stores the strategy a model was built under in a private attribute; `None` means
    # built outside of any strategy scope (Keras then skips its symbolic build).
    return getattr(model, "_distribute_strategy", None)


def symbolic_build_from_local_batch(model, iterator=None, data_batch=None, fallback=None):
    """Keras' ``_maybe_symbolic_build`` that builds from the first *local* batch in multi-worker mode.

    ``fallback``: Keras' own method (bound), used whenever the model is not in multi-worker mode.
    """
    import tensorflow as tf

    strategy = _keras_distribute_strategy(model)
    if strategy is None or iterator is None or not in_multi_worker_mode(strategy):
        return fallback(iterator=iterator, data_batch=data_batch)
    for _, _, it in iterator:
        batch = next(it)
        data_batch = tf.nest.map_structure(
            lambda v: (
                strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v
            ),
            batch,
        )
        break
    with strategy.scope():
        model._symbolic_build(data_batch=data_batch)


def logs_for_multi_worker_reduce(logs):
    """``logs`` with every 0-d tensor reshaped to ``(1,)`` inside a multi-worker replica context."""
    import tensorflow as tf

    if not tf.distribute.has_strategy() or not in_multi_worker_mode(tf.distribute.get_strategy()):
        return logs
    return tf.nest.map_structure(lambda v: tf.reshape(v, (1,)) if tf.is_tensor(v) and v.shape.rank == 0 else v, logs)


def patch_model_for_multi_worker(model):
    """Applies both workarounds to one model instance (``keras_roadmap.distributed.multi_worker_fit_fix``)."""
    keras_build = model._maybe_symbolic_build
    if getattr(keras_build, "_keras_roadmap_patched", False):
        return model

    def build(iterator=None, data_batch=None):
        return symbolic_build_from_local_batch(model, iterator=iterator, data_batch=data_batch, fallback=keras_build)

    build._keras_roadmap_patched = True
    # Plain attributes on the instance: Keras looks these methods up on `self` when fitting.
    object.__setattr__(model, "_maybe_symbolic_build", build)
    for name in ("train_step", "test_step"):
        step = getattr(model, name)

        @functools.wraps(step)
        def wrapped(data, _step=step):
            return logs_for_multi_worker_reduce(_step(data))

        object.__setattr__(model, name, wrapped)
    return model
