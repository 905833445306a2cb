"""Decomposability gap: against a slow loop-based AP, limits, callback in model.fit, errors."""

import keras
import numpy as np
import pytest

from keras_roadmap import diagnostics
from keras_roadmap.diagnostics import DecomposabilityGap, decomposability_gap
from keras_roadmap.evaluation import average_precision
from keras_roadmap.samplers import MPerClassSampler


def slow_ap(scores, relevant):
    """Textbook AP by sorting one row: mean over relevant items of precision at their rank."""
    order = np.argsort(-scores, kind="stable")
    hits, total = 0, 0.0
    for position, item in enumerate(order, start=1):
        if relevant[item]:
            hits += 1
            total += hits / position
    return total / hits


def slow_gap(embeddings, labels, batch_size, samples_per_class, seed):
    gaps = []
    for batch in MPerClassSampler(labels, batch_size, samples_per_class, seed=seed).batches(0):
        for q in batch:
            others = batch[batch != q]
            in_batch = slow_ap(embeddings[others] @ embeddings[q], labels[others] == labels[q])
            rest = np.delete(np.arange(len(labels)), q)
            in_all = slow_ap(embeddings[rest] @ embeddings[q], labels[rest] == labels[q])
            gaps.append(in_batch - in_all)
    return float(np.mean(gaps))


def random_set(num_classes=10, per_class=6, dim=8, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    centres = rng.normal(size=(num_classes, dim))
    embeddings = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return embeddings.astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1])
def test_gap_equals_slow_loop(seed):
    embeddings, labels = random_set(seed=seed)
    expected = slow_gap(embeddings.astype(np.float64), labels, batch_size=20, samples_per_class=4, seed=seed)
    got = decomposability_gap(embeddings, labels, batch_size=20, samples_per_class=4, seed=seed)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got > 0.05  # a batch of 5 classes is an easier ranking than the whole set


def test_components_and_perfect_embedding():
    embeddings, labels = random_set(spread=0.5)
    parts = decomposability_gap(embeddings, labels, 20, 4, return_components=True)
    assert parts["gap"] == pytest.approx(parts["batch_map"] - parts["full_map"])
    assert parts["num_queries"] == 3 * 20  # one epoch: 60 // 20 batches of 20 queries
    assert 0 < parts["full_map"] < parts["batch_map"] <= 1
    # Classes on orthogonal axes: every positive above every negative, in a batch or not.
    perfect = np.eye(10, dtype=np.float32)[labels]
    assert decomposability_gap(perfect, labels, 20, 4) == 0.0


def test_full_set_ap_matches_the_evaluation_reference():
    embeddings, labels = random_set(num_classes=7, per_class=9, seed=3)
    embeddings[5] = embeddings[6]  # an exact tie between two items
    scores = embeddings.astype(np.float64) @ embeddings.astype(np.float64).T
    relevant, itself = labels[:, None] == labels[None], np.eye(len(labels), dtype=bool)
    expected = average_precision(scores, relevant, ignore=itself, ties="pessimistic")
    np.testing.assert_allclose(diagnostics.full_set_average_precision(embeddings, labels), expected, rtol=0, atol=1e-12)


def test_more_batches_than_an_epoch_and_fewer():
    embeddings, labels = random_set()
    one = decomposability_gap(embeddings, labels, 20, 4, num_batches=1, return_components=True)
    seven = decomposability_gap(embeddings, labels, 20, 4, num_batches=7, return_components=True)
    assert one["num_queries"] == 20 and seven["num_queries"] == 140
    assert one["gap"] != seven["gap"]


def test_batch_size_changes_the_gap():
    embeddings, labels = random_set(num_classes=16, per_class=8, spread=1.5)
    small = decomposability_gap(embeddings, labels, 8, 4, num_batches=16)
    large = decomposability_gap(embeddings, labels, 64, 4, num_batches=4)
    assert small > large > 0  # bigger batches look more like the whole set


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"samples_per_class": 1}, ValueError, "samples_per_class"),
        ({"batch_size": 30}, ValueError, "multiple of samples_per_class"),
        ({"num_batches": 0}, ValueError, "num_batches"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    embeddings, labels = random_set()
    options = {"batch_size": 20, "samples_per_class": 4, **kwargs}
    with pytest.raises(error, match=message):
        decomposability_gap(embeddings, labels, **options)


def test_bad_inputs():
    embeddings, labels = random_set()
    with pytest.raises(ValueError, match="NaN or inf"):
        decomposability_gap(np.where(np.arange(60)[:, None] == 3, np.nan, embeddings), labels, 20)
    with pytest.raises(ValueError, match=r"shape \(60,\)"):
        decomposability_gap(embeddings, labels[:-1], 20)
    with pytest.raises(ValueError, match="integer class ids"):
        decomposability_gap(embeddings, labels.astype(np.float32), 20)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        decomposability_gap(embeddings[0], labels, 20)
    with pytest.raises(ValueError, match="floating point"):
        decomposability_gap(embeddings.astype(np.int32), labels, 20)


def tiny_model(dim_in=8):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((dim_in,)), keras.layers.Dense(6), keras.layers.UnitNormalization()])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    return model


def test_callback_logs_history_and_matches_the_function():
    x, labels = random_set()
    model = tiny_model()
    targets = np.random.default_rng(0).normal(size=(len(x), 6)).astype(np.float32)
    meter = DecomposabilityGap(
        (x, labels), every_n_epochs=2, batch_size=20, samples_per_class=4, measure_before_training=True
    )
    history = model.fit(x, targets, epochs=4, batch_size=20, verbose=0, callbacks=[meter])
    assert [r["epoch"] for r in meter.records] == [-1, 1, 3]
    assert len(history.history["decomposability_gap"]) == 2
    assert history.history["decomposability_gap"][-1] == meter.records[-1]["gap"]
    expected = decomposability_gap(model.predict(x, verbose=0), labels, 20, 4)
    assert meter.records[-1]["gap"] == pytest.approx(expected, abs=1e-6)
    # Training moved the embedding, so the measurement changed.
    assert meter.records[0]["gap"] != meter.records[-1]["gap"]


def test_callback_with_embed_fn_and_key():
    x, labels = random_set()
    model = tiny_model()
    calls = []

    def embed(inputs):
        calls.append(len(inputs))
        return np.asarray(model(inputs))

    meter = DecomposabilityGap((x, labels), batch_size=20, samples_per_class=4, embed_fn=embed, key="gap20")
    history = model.fit(x, np.zeros((60, 6), np.float32), epochs=2, batch_size=20, verbose=0, callbacks=[meter])
    assert calls == [60, 60] and len(history.history["gap20"]) == 2


def test_callback_rejects_bad_data():
    x, labels = random_set()
    with pytest.raises(ValueError, match="pair"):
        DecomposabilityGap(x)
    with pytest.raises(ValueError, match="60 inputs but 59 labels"):
        DecomposabilityGap((x, labels[:-1]))
    with pytest.raises(ValueError, match="every_n_epochs"):
        DecomposabilityGap((x, labels), every_n_epochs=0, batch_size=20)
    with pytest.raises(ValueError, match="10 distinct classes|only 10"):
        DecomposabilityGap((x, labels), batch_size=128, samples_per_class=4)
