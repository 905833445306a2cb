"""`keras_roadmap.evaluation.embed`: the one embedding loop (callback, recipes)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_roadmap.evaluation import embed


def model_and_data(n=10):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    x = np.random.default_rng(0).normal(size=(n, 3)).astype("float32")
    y = np.arange(n, dtype="int32") % 3
    return model, x, y


def test_arrays_and_datasets_give_the_same_embeddings_in_order():
    model, x, y = model_and_data()
    expected = model.predict(x, verbose=0)
    from_arrays, labels = embed(model, (x, y), batch_size=4)
    ds = tf.data.Dataset.from_tensor_slices((x, y[:, None], np.ones(len(y)))).batch(3)  # (B, 1) labels, weights
    from_dataset, ds_labels = embed(model, ds)
    for emb in (from_arrays, from_dataset):
        assert emb.dtype == np.float32 and emb.shape == (10, 4)
        np.testing.assert_allclose(emb, expected, atol=1e-6)
    for got in (labels, ds_labels):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, y)


def test_bad_data_is_named():
    model, x, y = model_and_data()
    with pytest.raises(ValueError, match="`gallery` yields single examples; batch it first"):
        embed(model, tf.data.Dataset.from_tensor_slices((x, y)), name="gallery")
    with pytest.raises(ValueError, match="`gallery` is empty"):
        embed(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(2).take(0), name="gallery")
    two = keras.Model(model.inputs, [model.outputs[0], model.outputs[0]])
    with pytest.raises(ValueError, match="several outputs"):
        embed(two, tf.data.Dataset.from_tensor_slices((x, y)).batch(4))
    with pytest.raises(ValueError, match="labels of data.*integer dtype"):
        embed(model, (x, y.astype("float32")))
