"""``RetrievalTrainer``: ``model.fit`` for embedders, with an optional cross-batch memory.

TensorFlow-specific (``tf.GradientTape`` in ``train_step``). The trainer wraps an encoder
(any Keras model mapping inputs to ``(B, D)`` embeddings) rather than subclassing it, so the
encoder stays a plain model that saves, reloads and exports on its own.

Two lines turn the memory on::

    trainer = RetrievalTrainer(encoder, memory=CrossBatchMemory(size=len(train_set)))
    trainer.compile(optimizer="adam", loss=ROADMAPLoss(), jit_compile=True)

The dataset yields ``(inputs, labels)`` or, for a keyed memory, ``(inputs, {"label": labels,
"sample_id": ids})``. ``RetrievalTrainer(encoder, chunk_size=64)`` trains on batches larger
than memory allows (embedding-gradient caching); under ``tf.distribute.MirroredStrategy`` the
same code ranks against the global batch and keeps the memory identical on every replica.
"""


import keras
import tensorflow as tf
from keras import ops

from keras_roadmap import _keras_compat, distributed, guard, validation
from keras_roadmap.losses.base import RetrievalLoss
from keras_roadmap.memory import CrossBatchMemory


def split_targets(y):
    """``(labels, sample_ids or None)`` from labels or a dict ``{"label", "sample_id"}``."""
    if isinstance(y, dict):
        label_key = next((k for k in ("label", "labels") if k in y), None)
        if label_key is None:
            raise ValueError(f"The dataset's targets are a dict with keys {sorted(y)}; expected 'label' (and 'sample_id').")
        id_key = next((k for k in ("sample_id", "sample_ids") if k in y), None)
        return y[label_key], (y[id_key] if id_key else None)
    return y, None


@keras.saving.register_keras_serializable(package="keras_roadmap")
class RetrievalTrainer(keras.Model):
    """Trains an embedding model with a ranking loss, optionally against a cross-batch memory.

    Args:
        encoder: Keras model, inputs -> ``(B, D)`` embeddings.
        memory: optional :class:`~keras_roadmap.CrossBatchMemory`.
        chunk_size: optional int >= 1. None (default): one forward/backward pass over the batch.
            An integer turns on embedding-gradient caching, for batches larger than the
            accelerator's memory allows: (1) embed the batch ``chunk_size`` inputs at a time
            without a tape, (2) compute the loss (batch and memory terms) and its gradient with
            respect to the ``(B, D)`` embeddings, (3) re-embed chunk by chunk under a tape and
            back-propagate the cached embedding gradients
            (``tape.gradient(chunk_embeddings, variables, output_gradients=cached)``),
            accumulating the parameter gradients, then apply them once. Peak activation memory
            grows with ``chunk_size``, not with B (the loss's own ``(B, B)`` terms remain); the
            encoder's forward pass runs twice (about 4/3 of a plain step's compute when a
            backward pass costs two forwards). The update equals the plain full-batch update when the
            encoder treats examples independently and deterministically. It differs when
            BatchNorm is in training mode (statistics of each chunk instead of the batch, and
            moving statistics updated twice per chunk, by both passes) and with dropout (pass 1
            and pass 2 draw different masks unless the layer is seeded statelessly, so the
            cached gradients do not belong to the re-embedded outputs). The last chunk is padded
            with zeros to ``chunk_size`` rows (static shapes for XLA); padded rows get no
            gradient. Only weight regularizers are added in this mode (``add_loss`` from a
            layer's ``call``, e.g. activity regularizers, is not supported with chunks).

    The loss given to ``compile`` must be one of ours (a
    :class:`~keras_roadmap.losses.RetrievalLoss`). Per step: embed the batch, compute the batch
    loss; with a memory, write the (detached) batch into it, then add
    ``memory.weight * loss.call_with_reference(batch, memory)`` once ``memory.activate_after``
    steps have passed. Logged: ``loss`` (total), ``batch_loss``, ``memory_loss``.
    ``predict`` returns the encoder's embeddings; ``evaluate`` reports the batch loss.

    Under ``tf.distribute`` (``MirroredStrategy``; build and compile the trainer inside
    ``strategy.scope()``) the loss ranks each replica's queries against the gathered global
    batch (see :mod:`keras_roadmap.distributed`), and the memory is written with the gathered
    global batch (embeddings, labels, sample ids), so every replica holds the same memory and
    the update equals the single-device update on the global batch.
    """

    def __init__(self, encoder, memory=None, chunk_size=None, **kwargs):
        super().__init__(**kwargs)
        validation.trainer_args(encoder, memory, chunk_size, memory_type=CrossBatchMemory)
        self.encoder = encoder
        self.memory = memory
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        if memory is not None and not memory.built:
            dim = _output_dim(encoder)
            if dim is not None:
                memory.build_for_dim(dim)
        # Encoder (and memory) variables exist already: mark the trainer built, so BackupAndRestore
        # and model.save accept it before the first step.
        self.built = bool(encoder.built) and (memory is None or memory.built)
        self.total_tracker = keras.metrics.Mean(name="loss")
        self.batch_tracker = keras.metrics.Mean(name="batch_loss")
        self.memory_tracker = keras.metrics.Mean(name="memory_loss")
        self.degenerate_tracker = keras.metrics.Sum(name=guard.DEGENERATE_KEY)

    def call(self, inputs, training=False):
        return self.encoder(inputs, training=training)

    @property
    def metrics(self):
        trackers = [self.total_tracker, self.batch_tracker]
        if self.memory is not None:
            trackers.append(self.memory_tracker)
        trackers.append(self.degenerate_tracker)
        return trackers

    def _retrieval_loss(self):
        loss = self.loss
        if not isinstance(loss, RetrievalLoss):
            raise ValueError(
                "RetrievalTrainer needs one of keras_roadmap's losses in compile(loss=...), e.g. "
                f"ROADMAPLoss(); got {loss!r}."
            )
        return loss

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Batch loss of ``y_pred`` with the labels of ``y`` (labels or ``{"label", "sample_id"}``).

        Keras' hook; Keras calls it when it builds the trainer from data specs (under
        ``tf.distribute``), where its compiled-loss container would reject the dict targets.
        """
        labels, _ = split_targets(y)
        return self._retrieval_loss()(labels, y_pred)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("RetrievalTrainer does not support sample weights (AP is not a per-example mean).")
        labels, sample_ids = split_targets(y)
        context = distributed.replica_context()
        variables = self.trainable_variables
        if self.chunk_size is None:
            with tf.GradientTape() as tape:
                embeddings = ops.cast(self.encoder(x, training=True), "float32")
                terms = self._objective(labels, sample_ids, embeddings, context)
                total = terms["total"]
                if self.losses:
                    total = total + _replica_share(ops.sum(ops.stack([ops.cast(l, "float32") for l in self.losses])))
                scaled = self.optimizer.scale_loss(total) if hasattr(self.optimizer, "scale_loss") else total
            gradients = tape.gradient(scaled, variables)
            terms["total"] = total
        else:
            gradients, terms = self._cached_gradients(x, labels, sample_ids, context, variables)
        self.optimizer.apply(gradients, variables)
        # Each replica holds its share of the global loss (the shares sum to it); the trackers
        # average over replicas, so they get share * replicas, as Keras' own loss tracker does.
        replicas = 1 if context is None else context.num_replicas_in_sync
        if self.memory is not None:
            self.memory.assign_state(terms["state"])
            self.memory_tracker.update_state(terms["memory_loss"] * replicas)
        self.total_tracker.update_state(terms["total"] * replicas)
        self.batch_tracker.update_state(terms["batch_loss"] * replicas)
        self.degenerate_tracker.update_state(guard.degenerate_batch(labels))
        return {m.name: m.result() for m in self.metrics}

    def fit(self, *args, callbacks=None, **kwargs):
        """``keras.Model.fit`` with a :class:`~keras_roadmap.guard.NonFiniteGuard` added: training
        stops (``NonFiniteError`` naming the step) at the first non-finite loss or embedding."""
        return super().fit(*args, callbacks=guard.with_guard(callbacks), **kwargs)

    def _objective(self, labels, sample_ids, embeddings, context):
        """Loss terms of ``embeddings`` ``(B, D)`` float32 (differentiable), and the new memory.

        Returns a dict: ``total``, ``batch_loss``, and with a memory ``memory_loss`` and
        ``state`` (the memory with the batch written in, to assign after the update).
        """
        loss_fn = self._retrieval_loss()
        batch_loss = ops.cast(loss_fn(labels, embeddings), "float32")
        terms = {"batch_loss": batch_loss, "total": batch_loss}
        if self.memory is not None:
            state, self_index = self._updated_memory(embeddings, labels, sample_ids, context)
            memory_loss = self._memory_loss(loss_fn, labels, embeddings, state, self_index)
            terms.update(state=state, memory_loss=memory_loss, total=batch_loss + self.memory.weight * memory_loss)
        return terms

    def _updated_memory(self, embeddings, labels, sample_ids, context):
        """New memory state and the ``(B,)`` memory row of each local query's own copy.

        Across replicas the memory is written with the gathered global batch, in replica order,
        so every replica computes the same state (the one a single device would compute).
        """
        if context is None:
            state = self.memory.updated_state(embeddings, labels, sample_ids)
            return state, state["slots"]
        local_rows = distributed.global_rows(context, ops.shape(embeddings)[0])
        gathered = [distributed.gather(context, ops.stop_gradient(embeddings))]
        gathered.append(distributed.gather(context, ops.reshape(labels, (-1,))))
        if sample_ids is not None:
            gathered.append(distributed.gather(context, ops.reshape(sample_ids, (-1,))))
        state = self.memory.updated_state(*gathered)
        return state, ops.take(state["slots"], local_rows)

    def _memory_loss(self, loss_fn, labels, embeddings, state, self_index):
        """Memory terms once active (0 before): the batch ranked against the updated memory."""
        value = loss_fn.call_with_reference(
            labels,
            embeddings,
            state["labels"],
            state["embeddings"],
            self_index=self_index,
            ref_mask=ops.cast(state["filled"], "bool"),
        )
        # A multiplication rather than a tf.cond: XLA keeps one static program (a cond around
        # the chunked kernel's gradient forced recompilation at every step with dynamic batch
        # sizes), and across replicas the loss all-reduces its counts, which TF forbids inside a
        # tf.cond. Steps already taken before this one count: `activate_after` steps run without.
        return ops.cast(value, "float32") * ops.cast(self.memory.is_active(), "float32")

    def _cached_gradients(self, x, labels, sample_ids, context, variables):
        """Parameter gradients of the loss by embedding-gradient caching (see ``chunk_size``)."""
        chunks, num_chunks, batch = _split_into_chunks(x, self.chunk_size)

        def chunk_of(i):
            return tf.nest.map_structure(lambda t: t[i], chunks)

        # (1) Embed every chunk without a tape: no activation is kept beyond one chunk.
        def embed(i, array):
            return i + 1, array.write(i, ops.cast(self.encoder(chunk_of(i), training=True), "float32"))

        _, array = tf.while_loop(
            lambda i, _: i < num_chunks,
            embed,
            (tf.constant(0), tf.TensorArray(tf.float32, size=num_chunks, infer_shape=True)),
        )
        stacked = ops.stop_gradient(array.stack())  # (num_chunks, chunk, D)
        dim = stacked.shape[-1] if stacked.shape[-1] is not None else tf.shape(stacked)[-1]
        embeddings = ops.reshape(stacked, (-1, dim))[:batch]

        # (2) The loss and its gradient with respect to the (B, D) embeddings.
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            terms = self._objective(labels, sample_ids, embeddings, context)
            scaled = self.optimizer.scale_loss(terms["total"]) if hasattr(self.optimizer, "scale_loss") else terms["total"]
        embedding_grads = tape.gradient(scaled, embeddings)
        padding = tf.zeros((num_chunks * self.chunk_size - batch, tf.shape(embedding_grads)[1]), embedding_grads.dtype)
        embedding_grads = tf.reshape(tf.concat([embedding_grads, padding], 0), tf.shape(stacked))

        # (3) Re-embed each chunk under a tape; back-propagate its cached embedding gradients.
        def backward(i, *accumulated):
            with tf.GradientTape() as chunk_tape:
                chunk_embeddings = self.encoder(chunk_of(i), training=True)
            grads = chunk_tape.gradient(
                chunk_embeddings, variables, output_gradients=ops.cast(embedding_grads[i], chunk_embeddings.dtype)
            )
            return (i + 1,) + tuple(
                acc if g is None else acc + ops.cast(tf.convert_to_tensor(g), acc.dtype) for acc, g in zip(accumulated, grads)
            )

        zeros = tuple(tf.zeros(v.shape, v.dtype) for v in variables)
        _, *gradients = tf.while_loop(lambda i, *_: i < num_chunks, backward, (tf.constant(0),) + zeros)

        regularizers = _keras_compat.regularization_losses(self)
        if regularizers:
            with tf.GradientTape() as reg_tape:
                penalty = _replica_share(ops.sum(ops.stack([ops.cast(l, "float32") for l in _keras_compat.regularization_losses(self)])))
                scaled = self.optimizer.scale_loss(penalty) if hasattr(self.optimizer, "scale_loss") else penalty
            reg_grads = reg_tape.gradient(scaled, variables)
            terms["total"] = terms["total"] + penalty
            gradients = [g if r is None else g + ops.cast(r, g.dtype) for g, r in zip(gradients, reg_grads)]
        return list(gradients), terms

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels, _ = split_targets(y)
        embeddings = ops.cast(self.encoder(x, training=False), "float32")
        # A replica's share of the loss times the replicas: the trackers average the replicas.
        batch_loss = ops.cast(self._retrieval_loss()(labels, embeddings), "float32") * distributed.num_replicas()
        self.total_tracker.update_state(batch_loss)
        self.batch_tracker.update_state(batch_loss)
        return {m.name: m.result() for m in self.metrics if m not in (self.memory_tracker, self.degenerate_tracker)}

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.encoder(x, training=False)

    def get_config(self):
        config = {"encoder": keras.saving.serialize_keras_object(self.encoder)}
        if self.memory is not None:
            config["memory"] = keras.saving.serialize_keras_object(self.memory)
        if self.chunk_size is not None:
            config["chunk_size"] = self.chunk_size
        return config

    @classmethod
    def from_config(cls, config):
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        memory = config.pop("memory", None)
        memory = keras.saving.deserialize_keras_object(memory) if memory is not None else None
        return cls(encoder, memory=memory, **config)


def _replica_share(value):
    """A per-replica value (e.g. a weight penalty) scaled so the replicas' gradients sum to it once."""
    return value / distributed.num_replicas()


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
        shape = [-1, chunk_size] + inner.as_list() if inner.is_fully_defined() else tf.concat([[-1, chunk_size], tf.shape(t)[1:]], 0)
        return tf.reshape(t, shape)

    return tf.nest.pack_sequence_as(x, [split(t) for t in flat]), num_chunks, batch


def _output_dim(model):
    try:
        shape = model.output_shape
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, tuple) and len(shape) == 2:
        return shape[-1]
    return None
