"""Cross-batch memory: slots, order of operations, activation, checkpoints, XLA, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_roadmap import CrossBatchMemory, RetrievalTrainer, ROADMAPLoss


def unit_rows(n, dim, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_keyed_mode_overwrites_the_slot_of_a_seen_id():
    memory = CrossBatchMemory(size=8, embedding_dim=2)
    first = unit_rows(3, 2, seed=1)
    memory.enqueue(first, [10, 11, 12], sample_ids=[0, 1, 2])
    second = unit_rows(2, 2, seed=2)
    slots = memory.enqueue(second, [11, 15], sample_ids=[1, 5])
    np.testing.assert_array_equal(np.asarray(slots), [1, 5])
    np.testing.assert_array_equal(np.asarray(memory.filled)[:8], [1, 1, 1, 0, 0, 1, 0, 0])
    np.testing.assert_allclose(
        np.asarray(memory.embeddings)[[0, 1, 2, 5]], np.stack([first[0], second[0], first[2], second[1]])
    )
    np.testing.assert_array_equal(np.asarray(memory.labels)[[0, 1, 2, 5]], [10, 11, 12, 15])
    assert memory.num_filled() == 4
    assert int(memory.steps) == 2


def test_fifo_mode_overwrites_the_oldest_items():
    memory = CrossBatchMemory(size=6, embedding_dim=3, unique=False)
    a, b = unit_rows(4, 3, seed=1), unit_rows(4, 3, seed=2)
    np.testing.assert_array_equal(np.asarray(memory.enqueue(a, [0, 1, 2, 3])), [0, 1, 2, 3])
    np.testing.assert_array_equal(np.asarray(memory.enqueue(b, [4, 5, 6, 7])), [4, 5, 0, 1])
    assert int(memory.pointer) == 2
    np.testing.assert_array_equal(np.asarray(memory.labels)[:6], [6, 7, 2, 3, 4, 5])
    np.testing.assert_allclose(np.asarray(memory.embeddings)[:6], np.concatenate([b[2:], a[2:], b[:2]]))
    assert memory.num_filled() == 6


def test_out_of_range_keyed_ids_are_counted_and_never_retrieved():
    memory = CrossBatchMemory(size=4, embedding_dim=2)
    memory.enqueue(unit_rows(3, 2), [1, 2, 3], sample_ids=[0, 7, -1])
    assert int(memory.out_of_range) == 2
    assert memory.num_filled() == 1
    assert int(np.asarray(memory.filled)[4]) == 0  # the spare row is never an item


def test_keyed_mode_without_ids_is_a_clear_error():
    memory = CrossBatchMemory(size=4, embedding_dim=2)
    with pytest.raises(ValueError, match="needs sample ids"):
        memory.enqueue(unit_rows(2, 2), [0, 1])


@pytest.mark.parametrize(
    "kwargs,message",
    [({"size": 0}, "`size` must be an integer >= 1"), ({"size": 4, "activate_after": -1}, "activate_after")],
)
def test_bad_memory_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CrossBatchMemory(**kwargs)


def embedder(dim_in=12, dim_out=6, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((dim_in,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(dim_out),
            keras.layers.UnitNormalization(),
        ]
    )


def toy_batches(steps, classes=24, per_batch_classes=4, per_class=4, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    xs, ys, ids = [], [], []
    for _ in range(steps):
        chosen = rng.choice(classes, per_batch_classes, replace=False)
        labels = np.repeat(chosen, per_class)
        xs.append((centres[labels] + 1.2 * rng.normal(size=(len(labels), dim))).astype("float32"))
        ys.append(labels.astype("int64"))
        ids.append(rng.choice(1000, len(labels), replace=False).astype("int64"))
    return xs, ys, ids


def test_batch_is_written_before_the_memory_terms():
    """A memory holding exactly the batch must give memory terms equal to the batch terms."""
    xs, ys, _ = toy_batches(1)
    trainer = RetrievalTrainer(embedder(), memory=CrossBatchMemory(size=16, unique=False))
    trainer.compile(optimizer=keras.optimizers.SGD(0.0), loss=ROADMAPLoss())
    logs = trainer.train_on_batch(xs[0], ys[0], return_dict=True)
    assert logs["memory_loss"] > 0.1
    assert logs["memory_loss"] == pytest.approx(logs["batch_loss"], rel=1e-5)
    assert logs["loss"] == pytest.approx(2 * logs["batch_loss"], rel=1e-5)


def test_activate_after_delays_the_memory_terms():
    xs, ys, ids = toy_batches(5)
    trainer = RetrievalTrainer(embedder(), memory=CrossBatchMemory(size=1000, activate_after=3))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ROADMAPLoss())
    memory_losses = [
        trainer.train_on_batch(x, {"label": y, "sample_id": i}, return_dict=True)["memory_loss"]
        for x, y, i in zip(xs, ys, ids, strict=False)
    ]
    assert memory_losses[:3] == [0.0, 0.0, 0.0]
    assert all(v > 0 for v in memory_losses[3:])
    assert trainer.memory.num_filled() == len(np.unique(np.concatenate(ids)))  # filled from the first step on


@pytest.mark.parametrize("unique", [True, False])
def test_xla_step_equals_eager_step(unique):
    xs, ys, ids = toy_batches(3)
    results = []
    for jit in (False, True):
        trainer = RetrievalTrainer(
            embedder(seed=3), memory=CrossBatchMemory(size=1000 if unique else 32, unique=unique)
        )
        trainer.compile(optimizer=keras.optimizers.SGD(0.1), loss=ROADMAPLoss(), jit_compile=jit, run_eagerly=not jit)
        logs = [
            trainer.train_on_batch(x, {"label": y, "sample_id": i}, return_dict=True)
            for x, y, i in zip(xs, ys, ids, strict=False)
        ]
        results.append((logs, [w.numpy() for w in trainer.encoder.weights], np.asarray(trainer.memory.embeddings)))
    (eager_logs, eager_w, eager_mem), (xla_logs, xla_w, xla_mem) = results
    for a, b in zip(eager_logs, xla_logs, strict=False):
        assert a["memory_loss"] == pytest.approx(b["memory_loss"], rel=1e-4, abs=1e-6)
    for a, b in zip(eager_w, xla_w, strict=False):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eager_mem, xla_mem, rtol=1e-4, atol=1e-5)


def to_dataset(xs, ys, ids):
    return tf.data.Dataset.from_tensor_slices(
        (np.concatenate(xs), {"label": np.concatenate(ys), "sample_id": np.concatenate(ids)})
    ).batch(16)


def test_fit_with_memory_lowers_the_loss():
    xs, ys, ids = toy_batches(20)
    trainer = RetrievalTrainer(embedder(), memory=CrossBatchMemory(size=1000))
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3), loss=ROADMAPLoss(), jit_compile=True)
    history = trainer.fit(to_dataset(xs, ys, ids), epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 0.1, losses
    assert set(history.history) >= {"loss", "batch_loss", "memory_loss"}
    embeddings = trainer.predict(np.concatenate(xs)[:8], verbose=0)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def test_memory_is_part_of_the_saved_weights_and_the_keras_file(tmp_path):
    xs, ys, ids = toy_batches(3)
    trainer = RetrievalTrainer(embedder(), memory=CrossBatchMemory(size=1000, unique=True, activate_after=1))
    trainer.compile(optimizer="adam", loss=ROADMAPLoss())
    trainer.fit(to_dataset(xs, ys, ids), epochs=1, verbose=0)
    trainer.save_weights(tmp_path / "w.weights.h5")
    fresh = RetrievalTrainer(embedder(seed=9), memory=CrossBatchMemory(size=1000, unique=True, activate_after=1))
    fresh.load_weights(tmp_path / "w.weights.h5")
    for name in ("embeddings", "labels", "filled", "steps"):
        np.testing.assert_array_equal(
            np.asarray(getattr(fresh.memory, name)), np.asarray(getattr(trainer.memory, name))
        )
    trainer.save(tmp_path / "trainer.keras")
    loaded = keras.models.load_model(tmp_path / "trainer.keras")
    assert isinstance(loaded.memory, CrossBatchMemory) and loaded.memory.get_config() == trainer.memory.get_config()
    np.testing.assert_array_equal(np.asarray(loaded.memory.embeddings), np.asarray(trainer.memory.embeddings))
    assert isinstance(loaded.loss, ROADMAPLoss)


class StopAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


class RecordStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.memory_at_start = np.asarray(self.model.memory.embeddings).copy()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_interrupted_fit_resumes_with_its_memory(tmp_path):
    xs, ys, ids = toy_batches(4)
    data = to_dataset(xs, ys, ids)

    def new_trainer():
        trainer = RetrievalTrainer(embedder(), memory=CrossBatchMemory(size=1000))
        trainer.compile(optimizer="adam", loss=ROADMAPLoss())
        return trainer

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    first = new_trainer()
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit(data, epochs=4, callbacks=[backup, StopAfterEpoch(1)], verbose=0)
    memory_at_crash = np.asarray(first.memory.embeddings).copy()
    assert first.memory.num_filled() > 0

    second = new_trainer()
    record = RecordStart()
    second.fit(
        data, epochs=4, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup")), record], verbose=0
    )
    np.testing.assert_array_equal(record.memory_at_start, memory_at_crash)
    assert record.epochs == [2, 3]


def test_trainer_needs_one_of_our_losses():
    trainer = RetrievalTrainer(embedder())
    trainer.compile(optimizer="adam", loss="mse")
    xs, ys, _ = toy_batches(1)
    with pytest.raises(ValueError, match="needs one of keras_roadmap's losses"):
        trainer.train_on_batch(xs[0], ys[0])
