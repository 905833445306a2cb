"""keras_roadmap.tfsim.TFSimilarityLoss: tensorflow-similarity's own losses under Keras 3, with
SimilarityModel and with RetrievalTrainer."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_similarity as tfsim  # the [tfsim] extra is part of the test install
from conftest import tfsim_toy_data as toy_data

from keras_roadmap import RetrievalTrainer
from keras_roadmap.tfsim import TFSimilarityLoss


def balanced_batches(y, steps, seed=0):
    """Index batches of 8 classes x 4 examples."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(steps):
        classes = rng.choice(20, 8, replace=False)
        batches.append(np.concatenate([rng.choice(np.flatnonzero(y == c), 4, replace=False) for c in classes]))
    return np.stack(batches)


def batch_dataset(x, y, steps):
    index = balanced_batches(y, steps)
    return tf.data.Dataset.from_tensor_slices((x[index], y[index]))


@pytest.mark.parametrize("name", ["MultiSimilarityLoss", "TripletLoss", "CircleLoss"])
def test_adapter_equals_tfsim_eager_and_compiles(name):
    labels = tf.constant(np.repeat(np.arange(6), 4))
    rng = np.random.default_rng(0)
    embeddings = tf.math.l2_normalize(tf.constant(rng.normal(size=(24, 8)), tf.float32), axis=1)
    inner = getattr(tfsim.losses, name)(reduction="sum_over_batch_size")
    eager = float(inner(labels, embeddings))  # tf-similarity itself works eagerly
    loss = TFSimilarityLoss(name)
    assert np.isfinite(eager) and float(loss(labels, embeddings)) == pytest.approx(eager, rel=1e-5)
    compiled = tf.function(lambda y, x: loss(y, x), jit_compile=True)
    assert float(compiled(labels, embeddings)) == pytest.approx(eager, rel=1e-5)


def test_tfsim_default_reduction_is_what_the_adapter_fixes():
    with pytest.raises(ValueError):
        tfsim.losses.MultiSimilarityLoss()  # reduction="auto", refused by Keras 3


def test_multisimilarity_trains_with_similarity_model():
    keras.utils.set_random_seed(0)
    x, y = toy_data()
    inputs = keras.Input((16,))
    outputs = tfsim.layers.MetricEmbedding(8)(keras.layers.Dense(32, activation="relu")(inputs))
    model = tfsim.models.SimilarityModel(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=TFSimilarityLoss("MultiSimilarityLoss"))
    sampler = tfsim.samplers.MultiShotMemorySampler(
        x, y, classes_per_batch=8, examples_per_class_per_batch=4, steps_per_epoch=20
    )
    losses = model.fit(sampler, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    model.index(x[::2], y[::2], verbose=0)
    recall = model.evaluate_retrieval(
        x[1::2], y[1::2], retrieval_metrics=[tfsim.retrieval_metrics.RecallAtK(k=1)], verbose=0
    )
    assert float(next(iter(recall.values()))) > 0.4  # chance is 0.05


def test_multisimilarity_trains_with_retrieval_trainer():
    keras.utils.set_random_seed(0)
    x, y = toy_data()
    encoder = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(8),
            keras.layers.UnitNormalization(),
        ]
    )
    trainer = RetrievalTrainer(encoder)
    trainer.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=TFSimilarityLoss("MultiSimilarityLoss"), jit_compile=True
    )
    losses = trainer.fit(batch_dataset(x, y, 60), epochs=3, steps_per_epoch=20, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_config_round_trip_and_no_memory_form():
    loss = TFSimilarityLoss("TripletLoss", distance="cosine")
    again = TFSimilarityLoss.from_config(loss.get_config())
    assert type(again.inner) is tfsim.losses.TripletLoss and again.distance == loss.distance == "cosine"
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, TFSimilarityLoss) and restored.get_config() == loss.get_config()
    with pytest.raises(NotImplementedError, match="without memory"):
        loss.call_with_reference(None, None, None, None)
    with pytest.raises(ValueError, match="no loss class"):
        TFSimilarityLoss("NoSuchLoss")
