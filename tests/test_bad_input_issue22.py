"""Bugs found by trying bad input (issue 22): string sample ids, export paths, damaged .keras
files, stale partial files in a run folder."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_roadmap import CrossBatchMemory, ROADMAPLoss, RetrievalTrainer


def _trainer(size=16):
    encoder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.UnitNormalization()])
    trainer = RetrievalTrainer(encoder, memory=CrossBatchMemory(size=size))
    trainer.compile(optimizer="adam", loss=ROADMAPLoss())
    return trainer


def _toy():
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    labels = np.repeat(np.arange(4), 4)
    return x, labels, np.array([f"img_{i:02d}.jpg" for i in range(16)])


def test_fit_with_string_sample_ids_maps_them_to_slots():
    x, labels, names = _toy()
    trainer = _trainer()
    trainer.fit(x, {"label": labels, "sample_id": names}, batch_size=8, epochs=1, verbose=0, shuffle=False)
    # Each image in its own slot: 16 distinct names fill the 16 slots, nothing out of range.
    assert trainer.memory.num_filled() == 16 and int(trainer.memory.out_of_range) == 0
    # Slot i holds the image whose name is the i-th in sorted order.
    np.testing.assert_array_equal(np.asarray(trainer.memory.labels)[:16], labels[np.argsort(names)])


def test_string_ids_clear_errors():
    x, labels, names = _toy()
    with pytest.raises(ValueError, match=r"16 distinct sample ids but CrossBatchMemory\(size=8\)"):
        _trainer(size=8).fit(x, {"label": labels, "sample_id": names}, batch_size=8, epochs=1, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((x, {"label": labels, "sample_id": names})).batch(8)
    with pytest.raises(ValueError, match=r"sample ids of dtype string.*map them in the dataset"):
        _trainer().fit(ds, epochs=1, verbose=0)
    memory = CrossBatchMemory(size=4, embedding_dim=3)
    with pytest.raises(ValueError, match="sample ids must be integers"):
        memory.enqueue(np.eye(3, dtype="float32")[:2], [0, 1], sample_ids=["a", "b"])
