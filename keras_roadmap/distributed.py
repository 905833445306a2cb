"""Ranking losses across replicas (``tf.distribute``): gathered retrieval sets, global means.

TensorFlow-specific. Under ``MirroredStrategy`` (or ``MultiWorkerMirroredStrategy``, same code
path) each replica holds ``B_local`` of the ``B_global`` examples of a step. A ranking loss is
not a mean of independent per-example terms, so two things must change for the replicas' update
to equal the single-device update on the global batch:

1. **Retrieval set.** Each replica ranks its local queries against the *all-gathered* global
   batch: a ``(B_local, B_global)`` score matrix. ``ReplicaContext.all_gather`` is
   differentiable, so the gradient of the columns flows back to the replica that owns them.
   Self handling uses the global index of each local query (``offset + q``, the offset being
   the number of examples held by the replicas before this one).
2. **Means.** Every term of our losses is a ratio ``sum of terms / count`` (AP: sum of
   ``1 - AP`` over queries with a positive / their number; calibration: sum of non-zero terms /
   their number), and the counts are piecewise constant (no gradient). Each replica returns
   ``its local sum / max(global count, 1)`` with the counts all-reduced across replicas.

The losses are driven through their public protocol only (``batch_pairs``, ``ratio_terms``,
``loss_from_pairs``, ``sum_of_ratios``, ``Pairs.against``; see :mod:`keras_roadmap.losses.base`):
this module imports nothing from ``keras_roadmap.losses``, so any loss implementing
``ratio_terms`` is reduced across replicas without being known here.

The replicas' values then *sum* to the single-device loss on the global batch, which is the
convention of Keras' own losses under ``tf.distribute`` (each replica's mean scaled by
``1 / num_replicas``): Keras' optimizer sums the replicas' gradients, and Keras' loss tracker
multiplies each replica's value by ``num_replicas`` before averaging, so ``model.fit`` reports
the global loss. :class:`~keras_roadmap.RetrievalTrainer` follows the same convention.

``gather_across_replicas=False`` (a constructor argument of every loss) opts out: each replica
ranks its own examples only and returns its local loss divided by the number of replicas (Keras'
usual data-parallel mean).

Known limit: ``jit_compile=True`` under ``MirroredStrategy`` on logical CPU devices fails in
TensorFlow itself (a replica's variable accessed from another device), with any loss; Keras'
default ``jit_compile="auto"`` turns XLA off under a distribution strategy.
"""

from keras import ops

try:
    import tensorflow as tf
except ModuleNotFoundError as error:  # the package itself imports without TensorFlow
    raise ModuleNotFoundError(
        "keras_roadmap.distributed is tf.distribute support and needs TensorFlow: "
        "pip install 'keras-roadmap[tensorflow]' (with KERAS_BACKEND=jax, use keras.distribution).",
        name="tensorflow",
    ) from error


def replica_context():
    """The current ``tf.distribute.ReplicaContext`` when it has more than one replica, else None.

    None on a single device, in the default strategy, and in a cross-replica context (e.g. a
    loss called directly under ``strategy.scope()``, which then sees the whole batch).
    """
    if not tf.distribute.has_strategy():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def num_replicas():
    """Replicas of the current replica context (1 outside of one)."""
    context = replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def _collective_input(value):
    # Under MultiWorkerMirroredStrategy inside tf.function, a collective on a tensor that is a
    # function input (no device placement yet, e.g. labels straight from the dataset) fails with
    # "destinations can not be empty" (cross_device_ops.py); an identity gives it the replica's device.
    return tf.identity(value)


def gather(context, value):
    """``value`` of every replica concatenated on axis 0, in replica order (differentiable)."""
    return context.all_gather(_collective_input(value), axis=0)


def global_rows(context, local_size):
    """``(B_local,)`` int32 global index of each local row in the gathered batch.

    The offset is the sum of the batch sizes of the replicas before this one, so uneven local
    batches (a last partial batch split unevenly) still index the right rows.
    """
    local_size = ops.cast(local_size, "int32")
    sizes = gather(context, ops.reshape(local_size, (1,)))
    replica = ops.cast(context.replica_id_in_sync_group, "int32")
    offset = ops.sum(ops.where(ops.arange(ops.shape(sizes)[0], dtype="int32") < replica, sizes, 0))
    return offset + ops.arange(local_size, dtype="int32")


def multi_worker_fit_fix(model):
    """Makes ``model.fit`` / ``evaluate`` of a plain Keras model work under ``MultiWorkerMirroredStrategy``.

    Keras 3.15 fails there even for ``loss="mse"`` (its symbolic build reduces a ``PerReplica``
    batch; its logging reduces 0-d values over axis 0); see :mod:`keras_roadmap._keras_compat`.
    Call it once on the model, inside or after ``strategy.scope()``, before ``fit``::

        with strategy.scope():
            model = build_model()
            model.compile(optimizer="adam", loss=ROADMAPLoss())
        multi_worker_fit_fix(model)
        model.fit(dataset, ...)

    Returns the same model (patched in place; a no-op outside multi-worker mode and when applied
    twice). :class:`~keras_roadmap.RetrievalTrainer` needs no such call.
    """
    from keras_roadmap import _keras_compat

    return _keras_compat.patch_model_for_multi_worker(model)


def ratio_terms(loss, pairs):
    """``loss.ratio_terms(pairs)``, or a TypeError naming what a custom loss must provide."""
    try:
        return loss.ratio_terms(pairs)
    except NotImplementedError:
        raise TypeError(
            f"{type(loss).__name__} cannot be computed across replicas: give it a `ratio_terms(pairs)` method "
            "(before keras-roadmap made it public: `_ratio_terms`) returning [(weight, numerator, count), ...], "
            "or construct it with gather_across_replicas=False."
        ) from None


def combine_ratios(loss, terms, context=None):
    """``sum(w * n / max(C, 1))`` with each count ``C`` summed over the replicas (if any)."""
    if context is None:
        return loss.sum_of_ratios(terms)
    counts = ops.stack([ops.cast(count, terms[0][1].dtype) for _, _, count in terms])
    counts = context.all_reduce(tf.distribute.ReduceOp.SUM, _collective_input(ops.stop_gradient(counts)))
    return loss.sum_of_ratios(terms, counts=[counts[k] for k in range(len(terms))])


def gathered_batch_pairs(loss, context, y_true, y_pred):
    """The local queries of ``loss.batch_pairs`` against the batch gathered from every replica."""
    local = loss.batch_pairs(y_true, y_pred)
    rows = global_rows(context, ops.shape(local.embeddings)[0])
    return local.against(gather(context, local.labels), gather(context, local.embeddings), rows)


def batch_loss(loss, context, y_true, y_pred):
    """This replica's share of the global batch loss (the replicas' shares sum to it).

    With ``gather_across_replicas=False``: the loss of the local batch alone, divided by
    the number of replicas.
    """
    if not loss.gather_across_replicas:
        return loss.loss_from_pairs(loss.batch_pairs(y_true, y_pred)) / context.num_replicas_in_sync
    return combine_ratios(loss, ratio_terms(loss, gathered_batch_pairs(loss, context, y_true, y_pred)), context)


def reference_loss(loss, context, pairs):
    """This replica's share of the reference-form loss of every replica's queries."""
    if not loss.gather_across_replicas:
        return loss.loss_from_pairs(pairs) / context.num_replicas_in_sync
    return combine_ratios(loss, ratio_terms(loss, pairs), context)
