"""Cross-batch memory (XBM): past embeddings that each query is also ranked against.

ROADMAP's second answer to the non-decomposability of AP: rank each query against more items
than its batch holds. The memory stores detached embeddings, labels and (in keyed mode) sample
ids as non-trainable Keras variables, so it is part of the model's weights, of
``model.save_weights`` / ``ModelCheckpoint`` / ``BackupAndRestore``, and an interrupted run
resumes with the memory it had.

Order of operations (as in the official code): at every training step the current batch is
written into the memory *first*, then the memory terms of the loss are computed against the
updated memory, so each query's own stored copy is one of its positives.
"""

import keras
import numpy as np
from keras import ops

from keras_roadmap import validation

_STRING_IDS_HELP = (
    "a keyed CrossBatchMemory stores image i in slot sample_id[i], so sample ids must be integers in "
    "[0, size) (e.g. the row index of each image). Numpy string ids given to RetrievalTrainer.fit "
    "directly are mapped to integers for you; a tf.data pipeline must map them itself "
    "(e.g. yield the row index instead of the file name)."
)


def _dtype_name(values) -> str:
    dtype = getattr(values, "dtype", None)
    if dtype is None:
        dtype = np.asarray(values).dtype
    return str(getattr(dtype, "name", dtype))


def is_integer_ids(values) -> bool:
    """Whether ``values`` (a numpy / backend tensor, a tf spec or a sequence) holds integers."""
    name = _dtype_name(values)
    return "int" in name and "bool" not in name


def integer_sample_ids(ids, size):
    """``ids`` as int64 slots: integers unchanged, strings (file names, product codes) mapped to
    their index among the sorted distinct ids, so that the same set of ids always gets the same
    slots (a resumed ``fit`` on the same data writes the same rows).

    Raises:
        ValueError: more distinct string ids than the memory's ``size`` slots.
    """
    if is_integer_ids(ids):
        return ids
    array = np.asarray(ids)
    if array.dtype.kind not in "USO":
        raise ValueError(f"sample ids must be integers or strings; got dtype {array.dtype}: {_STRING_IDS_HELP}")
    distinct, slots = np.unique(array.astype(str).reshape(-1), return_inverse=True)
    if len(distinct) > size:
        raise ValueError(
            f"{len(distinct)} distinct sample ids but CrossBatchMemory(size={size}) has only {size} slots; "
            f"use size >= {len(distinct)} (the number of training images)."
        )
    return slots.astype(np.int64).reshape(array.shape)


@keras.saving.register_keras_serializable(package="keras_roadmap")
class CrossBatchMemory(keras.layers.Layer):
    """A memory bank of ``size`` embeddings with their labels.

    Args:
        size: number of slots M. Keyed mode: sample ids must lie in ``[0, size)`` (use the
            dataset size, as the official SOP/CUB settings: 59,551 / 5,824). FIFO mode: choose
            a multiple of the batch size (official iNaturalist: 60,000).
        embedding_dim: D; None to take it from the encoder when a trainer is built.
        unique: True (keyed, default): slot = sample id, so an image seen again overwrites its
            own slot and each image is stored once (the official dict-keyed memory). False:
            FIFO ring buffer, the oldest batch is overwritten.
        activate_after: training steps before the memory terms join the loss (the memory is
            filled from the first step, so it is warm when it activates).
        weight: weight of the memory terms in the total loss (1.0).

    State (non-trainable variables): ``embeddings (M + 1, D)`` float32, ``labels (M + 1,)``
    int64, ``filled (M + 1,)`` int32 0/1, ``pointer`` (FIFO write position), ``steps`` (enqueue
    count) and ``out_of_range`` (keyed ids that did not fit). Row M is a spare slot that
    swallows out-of-range keyed writes and is never part of the reference.
    """

    def __init__(self, size, embedding_dim=None, unique=True, activate_after=0, weight=1.0, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.size = validation.integer("size", size, owner="CrossBatchMemory", minimum=1)
        self.embedding_dim = validation.integer(
            "embedding_dim", embedding_dim, owner="CrossBatchMemory", minimum=1, allow_none=True
        )
        self.unique = validation.boolean("unique", unique, owner="CrossBatchMemory")
        self.activate_after = validation.integer("activate_after", activate_after, owner="CrossBatchMemory", minimum=0)
        self.weight = validation.number("weight", weight, owner="CrossBatchMemory", minimum=0)
        if self.embedding_dim is not None:
            self.build_for_dim(self.embedding_dim)

    def build_for_dim(self, embedding_dim):
        """Create the state variables for embeddings of dimension ``embedding_dim``."""
        if self.built:
            if int(embedding_dim) != self.embedding_dim:
                raise ValueError(
                    f"CrossBatchMemory was built for dimension {self.embedding_dim}, "
                    f"got embeddings of dimension {embedding_dim}."
                )
            return
        self.embedding_dim = int(embedding_dim)
        rows = self.size + 1
        self.embeddings = self.add_weight(
            shape=(rows, self.embedding_dim), initializer="zeros", dtype="float32", trainable=False, name="embeddings"
        )
        self.labels = self.add_weight(shape=(rows,), initializer="zeros", dtype="int64", trainable=False, name="labels")
        self.filled = self.add_weight(shape=(rows,), initializer="zeros", dtype="int32", trainable=False, name="filled")
        self.pointer = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False, name="pointer")
        self.steps = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False, name="steps")
        self.out_of_range = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, name="out_of_range"
        )
        self.built = True

    def build(self, input_shape=None):
        if input_shape is not None and input_shape[-1] is not None:
            self.build_for_dim(input_shape[-1])

    def _require_built(self):
        if not self.built:
            raise ValueError("CrossBatchMemory is not built: give embedding_dim or call build_for_dim(D) first.")

    def slots_for(self, batch_size, sample_ids=None):
        """``(B,)`` int32 rows the batch will be written to (the spare row for bad keyed ids)."""
        self._require_built()
        if self.unique:
            if sample_ids is None:
                raise ValueError(
                    "CrossBatchMemory(unique=True) needs sample ids: make the dataset yield "
                    "(images, {'label': labels, 'sample_id': ids}) or use unique=False (FIFO)."
                )
            if not is_integer_ids(sample_ids):
                raise ValueError(
                    f"CrossBatchMemory got sample ids of dtype {_dtype_name(sample_ids)}: {_STRING_IDS_HELP}"
                )
            ids = ops.reshape(ops.convert_to_tensor(sample_ids), (-1,))
            in_range = ops.logical_and(ops.greater_equal(ids, 0), ops.less(ids, self.size))
            return ops.cast(ops.where(in_range, ids, self.size), "int32")
        offsets = ops.arange(batch_size, dtype="int32")
        return (self.pointer + offsets) % self.size

    def updated_state(self, embeddings, labels, sample_ids=None):
        """The memory with the batch written in, without assigning it.

        Args:
            embeddings: ``(B, D)`` float (detached here).
            labels: ``(B,)`` int.
            sample_ids: ``(B,)`` int, required in keyed mode.
        Returns:
            dict with ``embeddings (M+1, D)``, ``labels (M+1,)``, ``filled (M+1,)``,
            ``pointer``, ``steps``, ``out_of_range`` (the new state) and ``slots (B,)``.
        """
        self._require_built()
        embeddings = ops.stop_gradient(ops.cast(embeddings, "float32"))
        self._check_width(embeddings)
        batch = ops.shape(embeddings)[0]
        slots = self.slots_for(batch, sample_ids)
        index = ops.expand_dims(slots, 1)
        filled = ops.scatter_update(self.filled, index, ops.ones((batch,), "int32"))
        # The spare row swallows out-of-range writes and must never count as an item.
        filled = ops.slice_update(filled, (self.size,), ops.zeros((1,), "int32"))
        bad = ops.sum(ops.cast(ops.equal(slots, self.size), "int64"))
        return {
            "embeddings": ops.scatter_update(self.embeddings, index, embeddings),
            "labels": ops.scatter_update(self.labels, index, ops.cast(ops.reshape(labels, (-1,)), "int64")),
            "filled": filled,
            "pointer": (self.pointer + ops.cast(batch, "int32")) % self.size,
            "steps": self.steps + 1,
            "out_of_range": self.out_of_range + bad,
            "slots": slots,
        }

    def _check_width(self, embeddings):
        # Static shapes are known at trace time, so this also guards tf.function / XLA steps
        # (otherwise TensorScatterUpdate fails deep inside TensorFlow).
        shape = tuple(embeddings.shape)
        if len(shape) != 2 or (shape[1] is not None and shape[1] != self.embedding_dim):
            raise ValueError(
                f"CrossBatchMemory holds embeddings of dimension {self.embedding_dim}; got a batch of "
                f"shape {shape}. Enqueue (batch, {self.embedding_dim}) embeddings, or build the memory "
                "for the encoder's output dimension (embedding_dim=None takes it from the trainer)."
            )

    def assign_state(self, state):
        """Write a state returned by :meth:`updated_state` into the variables."""
        for name in ("embeddings", "labels", "filled", "pointer", "steps", "out_of_range"):
            getattr(self, name).assign(state[name])

    def enqueue(self, embeddings, labels, sample_ids=None):
        """Write a batch into the memory; returns the ``(B,)`` slots used."""
        state = self.updated_state(embeddings, labels, sample_ids)
        self.assign_state(state)
        return state["slots"]

    def is_active(self, steps=None):
        """Whether the memory terms count at this step (``steps`` defaults to the stored count)."""
        steps = self.steps if steps is None else steps
        return ops.greater_equal(steps, self.activate_after)

    def reset(self):
        """Empty the memory (e.g. between two trainings)."""
        self._require_built()
        for variable in (self.embeddings, self.labels, self.filled, self.pointer, self.steps, self.out_of_range):
            variable.assign(ops.zeros_like(variable))

    def num_filled(self):
        """Number of slots holding an item (python int; eager only)."""
        return int(ops.convert_to_numpy(ops.sum(self.filled)))

    def call(self, inputs):
        raise NotImplementedError(
            "CrossBatchMemory is not called on inputs: give it to RetrievalTrainer(encoder, memory=...)."
        )

    def get_config(self):
        return {
            **super().get_config(),
            "size": self.size,
            "embedding_dim": self.embedding_dim,
            "unique": self.unique,
            "activate_after": self.activate_after,
            "weight": self.weight,
        }
