"""``RetrievalTrainer``: ``model.fit`` for embedders, with an optional cross-batch memory.

TensorFlow-specific (``tf.GradientTape`` in ``train_step``). The trainer wraps an encoder
(any Keras model mapping inputs to ``(B, D)`` embeddings) rather than subclassing it, so the
encoder stays a plain model that saves, reloads and exports on its own.

Two lines turn the memory on::

    trainer = RetrievalTrainer(encoder, memory=CrossBatchMemory(size=len(train_set)))
    trainer.compile(optimizer="adam", loss=ROADMAPLoss(), jit_compile=True)

The dataset yields ``(inputs, labels)`` or, for a keyed memory, ``(inputs, {"label": labels,
"sample_id": ids})``.
"""

import keras
import tensorflow as tf
from keras import ops

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

    The loss given to ``compile`` must be one of ours (a
    :class:`~keras_roadmap.losses.RetrievalLoss`). Per step: embed the batch, compute the batch
    loss; with a memory, write the (detached) batch into it, then add
    ``memory.weight * loss.call_with_reference(batch, memory)`` once ``memory.activate_after``
    steps have passed. Logged: ``loss`` (total), ``batch_loss``, ``memory_loss``.
    ``predict`` returns the encoder's embeddings; ``evaluate`` reports the batch loss.
    """

    def __init__(self, encoder, memory=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.memory = memory
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

    def call(self, inputs, training=False):
        return self.encoder(inputs, training=training)

    @property
    def metrics(self):
        trackers = [self.total_tracker, self.batch_tracker]
        if self.memory is not None:
            trackers.append(self.memory_tracker)
        return trackers

    def _retrieval_loss(self):
        loss = self.loss
        if not isinstance(loss, RetrievalLoss):
            raise ValueError(
                "RetrievalTrainer needs one of keras_roadmap's losses in compile(loss=...), e.g. "
                f"ROADMAPLoss(); got {loss!r}."
            )
        return loss

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("RetrievalTrainer does not support sample weights (AP is not a per-example mean).")
        labels, sample_ids = split_targets(y)
        loss_fn = self._retrieval_loss()
        with tf.GradientTape() as tape:
            embeddings = ops.cast(self.encoder(x, training=True), "float32")
            batch_loss = loss_fn(labels, embeddings)
            total = batch_loss
            if self.memory is not None:
                state = self.memory.updated_state(embeddings, labels, sample_ids)
                memory_loss = self._memory_loss(loss_fn, labels, embeddings, state)
                total = total + self.memory.weight * memory_loss
            if self.losses:
                total = total + ops.sum(ops.stack([ops.cast(l, "float32") for l in self.losses]))
            scaled = self.optimizer.scale_loss(total) if hasattr(self.optimizer, "scale_loss") else total
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)
        if self.memory is not None:
            self.memory.assign_state(state)
            self.memory_tracker.update_state(memory_loss)
        self.total_tracker.update_state(total)
        self.batch_tracker.update_state(batch_loss)
        return {m.name: m.result() for m in self.metrics}

    def _memory_loss(self, loss_fn, labels, embeddings, state):
        """Memory terms once active (0 before): the batch ranked against the updated memory."""
        value = loss_fn.call_with_reference(
            labels,
            embeddings,
            state["labels"],
            state["embeddings"],
            self_index=state["slots"],
            ref_mask=ops.cast(state["filled"], "bool"),
        )
        # A multiplication rather than a tf.cond: XLA keeps one static program (a cond around
        # the chunked kernel's gradient forced recompilation at every step with dynamic batch
        # sizes). Steps already taken before this one count: `activate_after` steps run without.
        return ops.cast(value, "float32") * ops.cast(self.memory.is_active(), "float32")

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels, _ = split_targets(y)
        embeddings = ops.cast(self.encoder(x, training=False), "float32")
        batch_loss = self._retrieval_loss()(labels, embeddings)
        self.total_tracker.update_state(batch_loss)
        self.batch_tracker.update_state(batch_loss)
        return {m.name: m.result() for m in self.metrics if m is not self.memory_tracker}

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.encoder(x, training=False)

    def get_config(self):
        config = {"encoder": keras.saving.serialize_keras_object(self.encoder)}
        if self.memory is not None:
            config["memory"] = keras.saving.serialize_keras_object(self.memory)
        return config

    @classmethod
    def from_config(cls, config):
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        memory = config.pop("memory", None)
        memory = keras.saving.deserialize_keras_object(memory) if memory is not None else None
        return cls(encoder, memory=memory, **config)


def _output_dim(model):
    try:
        shape = model.output_shape
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, tuple) and len(shape) == 2:
        return shape[-1]
    return None
