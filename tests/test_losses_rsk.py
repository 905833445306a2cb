"""RecallAtKLoss (RS@k) and simix (SiMix) against the official code's float64 fixtures, plus the
Keras protocol. Fixtures: ``tests/data/official_happier/rsk_*.npz`` and ``simix_*.npz``."""

import keras
import numpy as np
import pytest
from official_happier_cases import DATA, load, value_and_grad

from keras_roadmap import RecallAtKLoss, simix
from keras_roadmap.losses import recall_at_k

CASES = sorted(p.stem for p in DATA.glob("rsk_*.npz"))


@pytest.mark.parametrize("name", CASES)
def test_matches_official(name):
    z = load(name)
    value, grad = value_and_grad(lambda x: RecallAtKLoss(dtype="float64")(z["labels"], x), z["embeddings"])
    np.testing.assert_allclose(value, float(z["value"]), atol=1e-6)
    np.testing.assert_allclose(grad, z["grad"], atol=1e-6)
    assert np.abs(z["grad"]).max() > 1e-4


def test_labels_not_row_order_define_the_classes():
    z = load("rsk_c8_m4")
    perm = np.random.default_rng(0).permutation(len(z["labels"]))
    value, grad = value_and_grad(
        lambda x: RecallAtKLoss(pairs_per_chunk=5, dtype="float64")(z["labels"][perm], x), z["embeddings"][perm]
    )
    np.testing.assert_allclose(value, float(z["value"]), atol=1e-6)
    np.testing.assert_allclose(grad, z["grad"][perm], atol=1e-6)


def test_simix_matches_official():
    z = load("simix_c5_m4")

    def mixed_loss(x):
        labels, emb = simix(z["labels"], x, samples_per_class=4, alphas=z["alphas"])
        return RecallAtKLoss(dtype="float64")(labels, emb)

    value, grad = value_and_grad(mixed_loss, z["embeddings"])
    np.testing.assert_allclose(value, float(z["value"]), atol=1e-6)
    np.testing.assert_allclose(grad, z["grad"], atol=1e-6)
    labels, emb = simix(z["labels"], z["embeddings"], samples_per_class=4, alphas=z["alphas"])
    # the same rows as the official pos_mixup output (which interleaves them per class)
    np.testing.assert_allclose(np.sort(np.asarray(emb), axis=0), np.sort(z["mixed"], axis=0), atol=1e-12)
    assert len(labels) == 20 + 5 * 6


def test_simix_random_alphas_and_errors():
    labels, emb = simix(np.repeat(np.arange(3), 3), np.eye(9, dtype="float32"), samples_per_class=3, seed=1)
    emb = np.asarray(emb)
    assert emb.shape == (18, 9) and list(np.asarray(labels)[9:]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_allclose(emb[9:].sum(axis=1), 1.0, atol=1e-6)  # convex combinations
    with pytest.raises(ValueError, match="blocks of samples_per_class=2"):
        simix(np.array([0, 1, 0, 1]), np.eye(4, dtype="float32"), samples_per_class=2)
    with pytest.raises(ValueError, match="multiple"):
        simix(np.zeros(5, "int64"), np.eye(5, dtype="float32"), samples_per_class=2)


def test_no_positive_queries_are_left_out():
    z = load("rsk_c8_m4")
    labels = np.concatenate([z["labels"], [99]])
    emb = np.concatenate([z["embeddings"], z["embeddings"][:1]])
    # the lone query only adds an item to the others' rankings; the mean is over the 32 others
    lone = float(RecallAtKLoss(dtype="float64")(labels, emb))
    assert np.isfinite(lone) and 0 < lone < 1
    np.testing.assert_allclose(float(recall_at_k(labels[:32], emb[:32], dtype="float64")), float(z["value"]), atol=1e-6)


def test_config_round_trip_and_errors():
    loss = RecallAtKLoss(k_values=[1, 4], tau=0.05, k_temperatures=[1.0, 2.0], include_self=False)
    clone = RecallAtKLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    assert keras.losses.deserialize(keras.losses.serialize(loss)).get_config() == loss.get_config()
    with pytest.raises(ValueError, match="k_temperatures"):
        RecallAtKLoss(k_values=[1, 2], k_temperatures=[1.0])
    with pytest.raises(ValueError, match="k_values"):
        RecallAtKLoss(k_values=[0])


def test_fit_under_xla_in_float64_lowers_the_loss_and_save_load(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(16), 4).astype("int64")
    x = (rng.normal(size=(16, 8))[labels] + 0.8 * rng.normal(size=(64, 8))).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.UnitNormalization()])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=RecallAtKLoss(tau=0.05, dtype="float64"), jit_compile=True
    )

    def batch_loss():  # eager, on the model's embeddings, as fit's batches of 32 see them
        emb = model.predict(x, batch_size=64, verbose=0).astype("float64")
        return np.mean(
            [float(RecallAtKLoss(tau=0.05, dtype="float64")(labels[i : i + 32], emb[i : i + 32])) for i in (0, 32)]
        )

    before = batch_loss()
    history = model.fit(x, labels, batch_size=32, epochs=4, shuffle=False, verbose=0).history["loss"]
    after = batch_loss()
    assert after < before - 0.02, (before, history, after)
    np.testing.assert_allclose(history[0], before, rtol=0.2)  # the XLA loss is this loss
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.loss.get_config() == model.loss.get_config()
