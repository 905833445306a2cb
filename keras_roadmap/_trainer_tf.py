"""``RetrievalTrainer.train_step`` on the TensorFlow backend (``tf.GradientTape``, ``tf.distribute``).

Imported by :mod:`keras_roadmap.trainer` only when Keras runs on TensorFlow.
"""

import tensorflow as tf
from keras import ops

from keras_roadmap import _keras_compat, distributed


def train_step(trainer, data):
    x, labels, sample_ids = trainer._unpack(data)
    context = distributed.replica_context()
    variables = trainer.trainable_variables
    if trainer.chunk_size is None:
        with tf.GradientTape() as tape:
            embeddings = ops.cast(trainer.encoder(x, training=True), "float32")
            terms = trainer._objective(labels, sample_ids, embeddings, context)
            total = terms["total"]
            if trainer.losses:
                total = total + trainer._replica_share(
                    ops.sum(ops.stack([ops.cast(term, "float32") for term in trainer.losses]))
                )
            scaled = trainer._scale_loss(total)
        gradients = tape.gradient(scaled, variables)
        terms["total"] = total
    else:
        gradients, terms = _cached_gradients(trainer, x, labels, sample_ids, context, variables)
    trainer.optimizer.apply(gradients, variables)
    if trainer.memory is not None:
        trainer.memory.assign_state(terms["state"])
    # Each replica holds its share of the global loss (the shares sum to it); the trackers
    # average over replicas, so they get share * replicas, as Keras' own loss tracker does.
    replicas = 1 if context is None else context.num_replicas_in_sync
    return _keras_compat.logs_for_multi_worker_reduce(trainer._update_trackers(terms, replicas))


def _cached_gradients(trainer, x, labels, sample_ids, context, variables):
    """Parameter gradients of the loss by embedding-gradient caching (see ``chunk_size``)."""
    chunks, num_chunks, batch = _split_into_chunks(x, trainer.chunk_size)

    def chunk_of(i):
        return tf.nest.map_structure(lambda t: t[i], chunks)

    # (1) Embed every chunk without a tape: no activation is kept beyond one chunk.
    def embed(i, array):
        return i + 1, array.write(i, ops.cast(trainer.encoder(chunk_of(i), training=True), "float32"))

    _, array = tf.while_loop(
        lambda i, _: i < num_chunks,
        embed,
        (tf.constant(0), tf.TensorArray(tf.float32, size=num_chunks, infer_shape=True)),
        # One chunk's activations at a time: tf.while_loop would run 10 iterations at once.
        parallel_iterations=1,
    )
    stacked = ops.stop_gradient(array.stack())  # (num_chunks, chunk, D)
    dim = stacked.shape[-1] if stacked.shape[-1] is not None else tf.shape(stacked)[-1]
    embeddings = ops.reshape(stacked, (-1, dim))[:batch]
    # The loss picks its kernel and chunk size from the static batch size: keep it known.
    embeddings.set_shape([tf.nest.flatten(x)[0].shape[0], stacked.shape[-1]])

    # (2) The loss and its gradient with respect to the (B, D) embeddings.
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        terms = trainer._objective(labels, sample_ids, embeddings, context)
        scaled = trainer._scale_loss(terms["total"])
    embedding_grads = tape.gradient(scaled, embeddings)
    padding = tf.zeros((num_chunks * trainer.chunk_size - batch, tf.shape(embedding_grads)[1]), embedding_grads.dtype)
    embedding_grads = tf.reshape(tf.concat([embedding_grads, padding], 0), tf.shape(stacked))

    # (3) Re-embed each chunk under a tape; back-propagate its cached embedding gradients.
    def backward(i, *accumulated):
        with tf.GradientTape() as chunk_tape:
            chunk_embeddings = trainer.encoder(chunk_of(i), training=True)
        grads = chunk_tape.gradient(
            chunk_embeddings, variables, output_gradients=ops.cast(embedding_grads[i], chunk_embeddings.dtype)
        )
        return (i + 1,) + tuple(
            acc if g is None else acc + ops.cast(tf.convert_to_tensor(g), acc.dtype)
            for acc, g in zip(accumulated, grads, strict=False)
        )

    zeros = tuple(tf.zeros(v.shape, v.dtype) for v in variables)
    _, *gradients = tf.while_loop(
        lambda i, *_: i < num_chunks, backward, (tf.constant(0),) + zeros, parallel_iterations=1
    )

    if _keras_compat.regularization_losses(trainer):
        with tf.GradientTape() as reg_tape:
            penalty = trainer._weight_penalty()
            scaled = trainer._scale_loss(penalty)
        reg_grads = reg_tape.gradient(scaled, variables)
        terms["total"] = terms["total"] + penalty
        gradients = [g if r is None else g + ops.cast(r, g.dtype) for g, r in zip(gradients, reg_grads, strict=False)]
    return list(gradients), terms


def _split_into_chunks(x, chunk_size):
    """``(chunks, num_chunks, batch)``: every input padded with zero rows to a multiple of
    ``chunk_size`` and reshaped to ``(num_chunks, chunk_size, ...)`` (static inner shapes)."""
    flat = [tf.convert_to_tensor(t) for t in tf.nest.flatten(x)]
    batch = tf.shape(flat[0])[0]
    num_chunks = (batch + chunk_size - 1) // chunk_size
    padding = num_chunks * chunk_size - batch

    def split(t):
        t = tf.pad(t, [[0, padding]] + [[0, 0]] * (t.shape.rank - 1))
        inner = t.shape[1:]
        shape = (
            [-1, chunk_size] + inner.as_list()
            if inner.is_fully_defined()
            else tf.concat([[-1, chunk_size], tf.shape(t)[1:]], 0)
        )
        return tf.reshape(t, shape)

    return tf.nest.pack_sequence_as(x, [split(t) for t in flat]), num_chunks, batch
