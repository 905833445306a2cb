"""tensorflow-similarity's MultiShotMemorySampler as a drop-in training source: same C x E batch
structure as our samplers, consumed by model.fit with ROADMAPLoss on embeddings."""

import keras
import numpy as np

from keras_roadmap.data import make_train_dataset
from keras_roadmap.losses import ROADMAPLoss
from keras_roadmap.samplers import MPerClassSampler


def embedder(shape):
    return keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.Flatten(),
            keras.layers.Dense(8),
            keras.layers.UnitNormalization(),
        ]
    )


def class_blocks(labels, classes, per_class):
    values, counts = np.unique(labels, return_counts=True)
    return len(values) == classes and (counts == per_class).all()


def test_multishot_memory_sampler_is_a_drop_in_source():
    from tensorflow_similarity.samplers import MultiShotMemorySampler

    keras.utils.set_random_seed(0)  # MultiShotMemorySampler draws from Python's global RNG
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(15), 4)
    # Learnable: each class is a fixed random pattern plus noise.
    patterns = rng.normal(size=(15, 12, 12, 3))
    images = (patterns[labels] + 0.3 * rng.normal(size=(60, 12, 12, 3))).astype("float32")
    tfsim = MultiShotMemorySampler(
        images, labels, classes_per_batch=4, examples_per_class_per_batch=2, steps_per_epoch=10
    )
    for step in range(5):
        x, y = tfsim[step]
        assert x.shape == (8, 12, 12, 3)
        assert class_blocks(np.asarray(y), classes=4, per_class=2)

    # Our sampler promises the same structure for the same (classes, examples) setting.
    ours = MPerClassSampler(labels, batch_size=8, samples_per_class=2, seed=0)
    for batch in ours.batches(0):
        assert class_blocks(labels[batch], classes=4, per_class=2)

    model = embedder((12, 12, 3))
    model.compile(keras.optimizers.Adam(0.01), loss=ROADMAPLoss())
    before = model.evaluate(images, labels, batch_size=60, verbose=0)
    history = model.fit(tfsim, epochs=3, verbose=0)
    assert len(history.history["loss"]) == 3 and np.isfinite(history.history["loss"]).all()
    after = model.evaluate(images, labels, batch_size=60, verbose=0)
    assert after < before, "ROADMAP on the whole set must fall when trained on C x E batches"


def test_our_pipeline_and_tfsim_feed_the_same_model():
    from tensorflow_similarity.samplers import MultiShotMemorySampler

    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 4)
    model = embedder((16, 16, 3))
    model.compile("sgd", loss=ROADMAPLoss())
    ours = make_train_dataset(
        (images, labels), MPerClassSampler(labels, 8, 2, seed=0), image_size=16, backend="tf_image", epochs=1
    )
    tfsim = MultiShotMemorySampler(
        images.astype("float32"), labels, classes_per_batch=4, examples_per_class_per_batch=2, steps_per_epoch=2
    )
    spec = ours.element_spec
    x, y = tfsim[0]
    assert tuple(spec[0].shape[1:]) == x.shape[1:] and spec[0].shape[0] == len(y) == 8
    assert np.isfinite(model.fit(ours, verbose=0).history["loss"]).all()
    assert np.isfinite(model.fit(tfsim, verbose=0).history["loss"]).all()
