"""Embedding-gradient caching (``RetrievalTrainer(chunk_size=...)``) equals the full-batch step."""

import keras
import numpy as np
import pytest

from keras_roadmap import CrossBatchMemory, RetrievalTrainer
from keras_roadmap.losses import ROADMAPLoss

BATCH = 10  # not a multiple of the chunk below: the last chunk is padded
LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], dtype="int64")


def small_cnn(seed, batchnorm=False):
    """A deterministic CNN on 8x8x3 inputs (dropout-free), with an L2 weight regularizer."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3))(inputs)
    if batchnorm:
        h = keras.layers.BatchNormalization()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(6)(h)
    return keras.Model(inputs, keras.layers.UnitNormalization()(h))


def images(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype("float32")


def fitted(chunk_size, *, jit_compile=False, memory=False, batchnorm=False, steps=1, learning_rate=0.5):
    encoder = small_cnn(7, batchnorm=batchnorm)
    bank = CrossBatchMemory(size=64, embedding_dim=6) if memory else None
    trainer = RetrievalTrainer(encoder, memory=bank, chunk_size=chunk_size)
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=ROADMAPLoss(), jit_compile=jit_compile)
    x = images(BATCH * steps)
    y = {"label": np.tile(LABELS, steps), "sample_id": np.arange(BATCH * steps)} if memory else LABELS
    history = trainer.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return trainer, history.history


def max_weight_diff(a, b):
    return max(
        float(np.max(np.abs(u - v))) for u, v in zip(a.encoder.get_weights(), b.encoder.get_weights(), strict=False)
    )


@pytest.mark.parametrize("jit_compile", [False, True])
def test_cached_step_equals_full_batch_step(jit_compile):
    plain, plain_history = fitted(None, jit_compile=jit_compile)
    cached, cached_history = fitted(4, jit_compile=jit_compile)
    untrained = small_cnn(7)
    moved = max(
        float(np.max(np.abs(u - v))) for u, v in zip(plain.encoder.get_weights(), untrained.get_weights(), strict=False)
    )
    assert moved > 1e-3
    assert max_weight_diff(plain, cached) < 1e-5
    assert cached_history["loss"][-1] == pytest.approx(plain_history["loss"][-1], rel=1e-5)


def test_cached_steps_with_memory_equal_full_batch_steps():
    # A smaller step than above: over 3 steps SupAP's steep slopes (1 / tau, rho) amplify float32
    # rounding (chunked vs whole-batch convolutions) to ~1e-5 at learning rate 0.5, ~1e-7 here.
    plain, plain_history = fitted(None, memory=True, steps=3, learning_rate=0.05)
    cached, cached_history = fitted(3, memory=True, steps=3, learning_rate=0.05)
    assert plain_history["memory_loss"][-1] > 0.0
    assert max_weight_diff(plain, cached) < 1e-5
    np.testing.assert_allclose(np.asarray(cached.memory.embeddings), np.asarray(plain.memory.embeddings), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cached.memory.labels), np.asarray(plain.memory.labels))
    assert cached_history["memory_loss"][-1] == pytest.approx(plain_history["memory_loss"][-1], rel=1e-5)


def test_batchnorm_in_training_mode_uses_chunk_statistics():
    # The documented limit: per-chunk batch statistics change the update (no silent equality claim).
    plain, _ = fitted(None, batchnorm=True)
    cached, _ = fitted(4, batchnorm=True)
    assert max_weight_diff(plain, cached) > 1e-4


def test_chunk_as_large_as_the_batch_is_the_plain_step():
    plain, _ = fitted(None)
    cached, _ = fitted(BATCH)
    assert max_weight_diff(plain, cached) < 1e-6


@pytest.mark.parametrize(
    "chunk_size,error,message",
    [
        (0, ValueError, "`chunk_size` must be an integer >= 1, got 0"),
        (-2, ValueError, "must be an integer >= 1, got -2"),
        (2.5, TypeError, "`chunk_size` must be an integer or None, got 2.5"),
        (True, TypeError, "or None, got True"),
        ("64", TypeError, "or None, got '64'"),
    ],
)
def test_bad_chunk_size_is_a_clear_error(chunk_size, error, message):
    # TypeError for a wrong type, ValueError for a wrong value (keras_roadmap.validation).
    with pytest.raises(error, match=message):
        RetrievalTrainer(small_cnn(0), chunk_size=chunk_size)


def test_chunk_size_survives_the_config_round_trip():
    trainer = RetrievalTrainer(small_cnn(0), chunk_size=16)
    restored = RetrievalTrainer.from_config(trainer.get_config())
    assert restored.chunk_size == 16
