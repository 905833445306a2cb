"""Our losses inside tensorflow-similarity 0.17.1 (Keras 3): sampler, SimilarityModel, save/load."""

import keras
import numpy as np
import pytest
import tensorflow_similarity as tfsim  # the [tfsim] extra is part of the test install
from conftest import tfsim_toy_data as toy_data

from keras_roadmap import ROADMAPLoss
from keras_roadmap.tfsim import load_similarity_model, save_similarity_model


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x, y = toy_data()
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    outputs = tfsim.layers.MetricEmbedding(8)(hidden)
    model = tfsim.models.SimilarityModel(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=ROADMAPLoss())  # distance picked from the loss
    sampler = tfsim.samplers.MultiShotMemorySampler(
        x, y, classes_per_batch=8, examples_per_class_per_batch=4, steps_per_epoch=20
    )
    history = model.fit(sampler, epochs=3, verbose=0)
    model.index(x[::2], y[::2], verbose=0)
    return model, history, x, y


def test_sampler_and_similarity_model_train_with_our_loss(trained):
    model, history, x, y = trained
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    recall = model.evaluate_retrieval(
        x[1::2], y[1::2], retrieval_metrics=[tfsim.retrieval_metrics.RecallAtK(k=1)], verbose=0
    )
    value = float(next(iter(recall.values())))
    assert value > 0.4  # chance is 0.05 with 20 balanced classes


def test_save_and_load_workaround_restores_model_and_index(trained, tmp_path):
    model, _, x, _ = trained
    with pytest.raises(ValueError, match="not supported"):
        model.save(str(tmp_path / "broken.keras"))  # tf-similarity's own save, broken under Keras 3
    save_similarity_model(model, str(tmp_path / "saved"))
    loaded = load_similarity_model(str(tmp_path / "saved"))
    np.testing.assert_allclose(loaded.predict(x[:10], verbose=0), model.predict(x[:10], verbose=0), atol=1e-6)
    before = model.lookup(x[1:20:2], k=3, verbose=0)
    after = loaded.lookup(x[1:20:2], k=3, verbose=0)
    assert [[n.label for n in row] for row in before] == [[n.label for n in row] for row in after]


def test_loading_a_folder_without_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.keras"):
        load_similarity_model(str(tmp_path))
