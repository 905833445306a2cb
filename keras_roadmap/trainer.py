"""``RetrievalTrainer``: ``model.fit`` for embedders, with an optional cross-batch memory.

Backend-neutral: the loss terms and the memory update are ``keras.ops``; ``train_step`` differs
per backend where it must (``_trainer_tf``: ``tf.GradientTape`` and ``tf.distribute``;
``_trainer_jax``: a stateless step with ``jax.value_and_grad``; ``_trainer_torch``: autograd).
Importing this module does not import TensorFlow. The trainer wraps an encoder
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
from keras import ops

from keras_roadmap import _keras_compat, guard, validation
from keras_roadmap.collapse import LastValue, mean_pairwise_cosine
from keras_roadmap.losses.base import RetrievalLoss
from keras_roadmap.memory import CrossBatchMemory, integer_sample_ids, is_integer_ids


def split_targets(y):
    """``(labels, sample_ids or None)`` from labels or a dict ``{"label", "sample_id"}``."""
    if isinstance(y, dict):
        label_key = next((k for k in ("label", "labels") if k in y), None)
        if label_key is None:
            raise ValueError(
                f"The dataset's targets are a dict with keys {sorted(y)}; expected 'label' (and 'sample_id')."
            )
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
    steps have passed. Logged: ``loss`` (total), ``batch_loss``, ``memory_loss``, and
    ``embedding_cosine`` (this step's mean pairwise cosine of the batch embeddings, read by
    :class:`~keras_roadmap.CollapseMonitor`).
    ``predict`` returns the encoder's embeddings; ``evaluate`` reports the batch loss.

    Under ``tf.distribute`` (``MirroredStrategy``; build and compile the trainer inside
    ``strategy.scope()``) the loss ranks each replica's queries against the gathered global
    batch (see :mod:`keras_roadmap.distributed`), and the memory is written with the gathered
    global batch (embeddings, labels, sample ids), so every replica holds the same memory and
    the update equals the single-device update on the global batch.
    """

    def __init__(self, encoder, memory=None, chunk_size=None, **kwargs):
        _check_built_in_strategy_scope(encoder)
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
        # Read by CollapseMonitor: this step's value, not an epoch mean.
        self.cosine_tracker = LastValue(name="embedding_cosine")
        self.degenerate_tracker = keras.metrics.Sum(name=guard.DEGENERATE_KEY)

    def call(self, inputs, training=False):
        return self.encoder(inputs, training=training)

    @property
    def metrics(self):
        trackers = [self.total_tracker, self.batch_tracker]
        if self.memory is not None:
            trackers.append(self.memory_tracker)
        trackers.append(self.degenerate_tracker)
        return trackers + [self.cosine_tracker]

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

    def train_step(self, *args):
        """One step. TensorFlow / torch: ``train_step(data)``; JAX: ``train_step(state, data)``."""
        return _backend_steps().train_step(self, *args)

    def _unpack(self, data):
        """``(x, labels, sample_ids or None)`` of a batch; sample weights are rejected."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("RetrievalTrainer does not support sample weights (AP is not a per-example mean).")
        labels, sample_ids = split_targets(y)
        return x, labels, sample_ids

    def _scale_loss(self, loss):
        return self.optimizer.scale_loss(loss) if hasattr(self.optimizer, "scale_loss") else loss

    def _replica_share(self, value):
        """A per-replica value (e.g. a weight penalty) scaled so the replicas' gradients sum to it once."""
        return value / _num_replicas()

    def _weight_penalty(self):
        """Sum of the weight regularizers (float32 scalar), this replica's share."""
        penalties = [ops.cast(term, "float32") for term in _keras_compat.regularization_losses(self)]
        return self._replica_share(ops.sum(ops.stack(penalties)))

    def _update_trackers(self, terms, replicas=1):
        """Updates the loss trackers with a step's terms; returns the logs."""
        if self.memory is not None:
            self.memory_tracker.update_state(terms["memory_loss"] * replicas)
        self.total_tracker.update_state(terms["total"] * replicas)
        self.batch_tracker.update_state(terms["batch_loss"] * replicas)
        self.cosine_tracker.update_state(terms["embedding_cosine"])
        self.degenerate_tracker.update_state(terms["degenerate_batches"])
        return {m.name: m.result() for m in self.metrics}

    def fit(self, *args, callbacks=None, **kwargs):
        """``keras.Model.fit`` with a :class:`~keras_roadmap.guard.NonFiniteGuard` added: training
        stops (``NonFiniteError`` naming the step) at the first non-finite loss or embedding.

        With a keyed memory, in-memory string sample ids (``y={"label": ..., "sample_id":
        np.array(["a.jpg", ...])}``) are mapped to integer slots (see
        :func:`~keras_roadmap.memory.integer_sample_ids`); a dataset yielding string ids is
        refused here with what to do."""
        args, kwargs = self._with_integer_ids(args, kwargs)
        return super().fit(*args, callbacks=guard.with_guard(callbacks), **kwargs)

    def _with_integer_ids(self, args, kwargs):
        if self.memory is None or not self.memory.unique:
            return args, kwargs
        x = args[0] if args else kwargs.get("x")
        spec = getattr(x, "element_spec", None)
        if isinstance(spec, tuple) and len(spec) >= 2 and isinstance(spec[1], dict):
            _, id_spec = split_targets(spec[1])
            id_spec = _tensor_spec(id_spec)
            if id_spec is not None and not is_integer_ids(id_spec):
                raise ValueError(
                    f"the dataset yields sample ids of dtype {id_spec.dtype.name}: a keyed CrossBatchMemory needs "
                    f"integer ids in [0, {self.memory.size}) (e.g. each image's row index); map them in the dataset."
                )
        in_args = len(args) >= 2
        y = args[1] if in_args else kwargs.get("y")
        if not isinstance(y, dict):
            return args, kwargs
        id_key = next((k for k in ("sample_id", "sample_ids") if k in y), None)
        if id_key is None or is_integer_ids(y[id_key]):
            return args, kwargs
        y = {**y, id_key: integer_sample_ids(y[id_key], self.memory.size)}
        if in_args:
            return (args[0], y, *args[2:]), kwargs
        return args, {**kwargs, "y": y}

    def _objective(self, labels, sample_ids, embeddings, context):
        """Loss terms of ``embeddings`` ``(B, D)`` float32 (differentiable), and the new memory.

        Returns a dict: ``total``, ``batch_loss``, and with a memory ``memory_loss`` and
        ``state`` (the memory with the batch written in, to assign after the update).
        """
        loss_fn = self._retrieval_loss()
        if hasattr(loss_fn, "set_step_counter"):
            # ROADMAPLoss(calibration_warmup_steps=...) ramps with the optimizer's step count,
            # which checkpoints save: a resumed run continues the ramp.
            loss_fn.set_step_counter(self.optimizer.iterations)
        batch_loss = ops.cast(loss_fn(labels, embeddings), "float32")
        terms = {"batch_loss": batch_loss, "total": batch_loss}
        terms["embedding_cosine"] = mean_pairwise_cosine(ops.stop_gradient(embeddings))
        terms["degenerate_batches"] = guard.degenerate_batch(labels)
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
        from keras_roadmap import distributed  # context is a tf.distribute replica context

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

    def test_step(self, *args):
        """Batch loss of one batch. TensorFlow / torch: ``test_step(data)``; JAX: ``test_step(state, data)``."""
        steps = _backend_steps()
        if hasattr(steps, "test_step"):
            return steps.test_step(self, *args)
        return self._test_logs(*args)

    def _test_logs(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels, _ = split_targets(y)
        embeddings = ops.cast(self.encoder(x, training=False), "float32")
        # A replica's share of the loss times the replicas: the trackers average the replicas.
        batch_loss = ops.cast(self._retrieval_loss()(labels, embeddings), "float32") * _num_replicas()
        self.total_tracker.update_state(batch_loss)
        self.batch_tracker.update_state(batch_loss)
        logs = {
            m.name: m.result()
            for m in self.metrics
            if m not in (self.memory_tracker, self.cosine_tracker, self.degenerate_tracker)
        }
        if keras.backend.backend() == "tensorflow":
            from keras_roadmap import _keras_compat

            logs = _keras_compat.logs_for_multi_worker_reduce(logs)
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # TensorFlow backend only (Keras calls it from its TF trainer): Keras 3.15 cannot build
        # from a multi-worker distributed batch (see _keras_compat).
        from keras_roadmap import _keras_compat

        return _keras_compat.symbolic_build_from_local_batch(
            self, iterator=iterator, data_batch=data_batch, fallback=super()._maybe_symbolic_build
        )

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


def _check_built_in_strategy_scope(encoder):
    """Inside a ``tf.distribute`` strategy scope, refuse an encoder built outside it: its plain
    variables would fail later with a dump of a weight tensor, deep inside ``fit``."""
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return
    extended = tf.distribute.get_strategy().extended
    for variable in getattr(encoder, "variables", []):
        if not extended.variable_created_in_scope(getattr(variable, "value", variable)):
            raise ValueError(
                f"The encoder's variable {getattr(variable, 'path', variable.name)!r} was created outside the "
                "current tf.distribute strategy scope: build the encoder inside `with strategy.scope():` too, "
                "before RetrievalTrainer(...) and compile()."
            )


def _backend_steps():
    """The module with this backend's ``train_step`` (and JAX's stateless ``test_step``)."""
    import importlib

    backend = keras.backend.backend()
    modules = {"tensorflow": "_trainer_tf", "jax": "_trainer_jax", "torch": "_trainer_torch"}
    if backend not in modules:
        raise NotImplementedError(f"RetrievalTrainer supports the tensorflow, jax and torch backends, not {backend!r}.")
    return importlib.import_module(f"keras_roadmap.{modules[backend]}")


def _replica_context():
    """The multi-replica ``tf.distribute`` context (TensorFlow backend), else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    from keras_roadmap import distributed

    return distributed.replica_context()


def _num_replicas():
    context = _replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def _output_dim(model):
    try:
        shape = model.output_shape
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, tuple) and len(shape) == 2:
        return shape[-1]
    return None


def _tensor_spec(spec):
    """``spec`` itself, or for a distributed dataset's ``PerReplicaSpec`` (no ``dtype`` of its own)
    its first replica's spec: every replica holds the same dtype."""
    if spec is None or hasattr(spec, "dtype"):
        return spec
    import tensorflow as tf  # only a tf.distribute dataset has specs without a dtype

    leaves = tf.nest.flatten(spec, expand_composites=True)
    return leaves[0] if leaves else spec
