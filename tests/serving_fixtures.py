"""Small ONNX embedders and galleries for the index-folder and HTTP-server tests."""

import numpy as np
from PIL import Image


def export_embedder(path, dim=16, image_size=32, seed=4):
    """A tiny conv embedder (any input size) exported to ONNX with its preprocessing baked in."""
    import keras

    from keras_roadmap import export as ex

    keras.utils.set_random_seed(seed)
    x = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu")(x)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    ex.to_onnx(keras.Model(x, keras.layers.Dense(dim)(h)), path, with_preprocessing=True, image_size=image_size)
    return path


def write_image(path, i, size=(48, 64)):
    """A JPEG with a pattern and colour of its own (index ``i``)."""
    rng = np.random.default_rng(i)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    pattern = (np.sin(xx * (1 + i) / 7.0 + i) * np.cos(yy * (9 - i % 9) / 9.0) + 1) * 100
    pixels = np.clip(base[None, None, :] * 0.6 + pattern[..., None] * (i % 3 + 1) / 3, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    return path


def write_gallery(root, n=9, classes=3):
    """``root/class_<c>/img_<i>.jpg`` for i < n; returns the paths."""
    sizes = [(48, 64), (64, 48), (40, 40)]
    return [write_image(root / f"class_{i % classes}" / f"img_{i}.jpg", i, sizes[i % len(sizes)]) for i in range(n)]
