"""`resize_like_pil` against Pillow's own antialiased bilinear resize, and its crop window.

The window computes only the pixels it keeps; it must give exactly the pixels of resizing the
whole image and slicing. Against Pillow (fixed-point weights) the float passes agree on almost
every pixel and never differ by more than one level.
"""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_roadmap.data import resize_like_pil

# (input h, w) -> (output h, w): down, up, one side kept, both kept, 1-pixel sides, a strong
# downscale.
SIZES = [
    ((240, 320), (73, 73)),
    ((37, 50), (90, 61)),
    ((64, 100), (64, 33)),
    ((120, 45), (31, 45)),
    ((30, 40), (30, 40)),
    ((1, 7), (5, 1)),
    ((400, 300), (9, 12)),
]


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


@pytest.mark.parametrize(("size_in", "size_out"), SIZES)
def test_within_one_level_of_pillow(size_in, size_out):
    image = _image(*size_in)
    ours = resize_like_pil(tf.constant(image), *size_out).numpy()
    pillow = np.asarray(Image.fromarray(image).resize(size_out[::-1], Image.BILINEAR), dtype=np.float32)
    assert ours.shape == pillow.shape
    assert np.abs(ours - pillow).max() <= 1
    assert np.mean(ours == pillow) > 0.85
    if size_in == size_out:
        np.testing.assert_array_equal(ours, image)


@pytest.mark.parametrize(("size_in", "size_out"), SIZES)
def test_window_is_the_crop_of_the_whole_resize(size_in, size_out):
    image = tf.constant(_image(*size_in, seed=1))
    whole = resize_like_pil(image, *size_out).numpy()
    oh, ow = size_out
    for top, left, h, w in [(0, 0, oh, ow), (oh // 3, ow // 4, oh - oh // 3, max(1, ow // 2)), (oh - 1, ow - 1, 1, 1)]:
        part = resize_like_pil(image, oh, ow, window=(top, left, h, w)).numpy()
        np.testing.assert_array_equal(part, whole[top : top + h, left : left + w])
        # the same with tensors for the sides (the dynamic path of the train transform)
        dynamic = resize_like_pil(image, oh, ow, window=tuple(tf.constant(v) for v in (top, left, h, w))).numpy()
        np.testing.assert_array_equal(dynamic, part)


def test_a_batch_is_each_image_resized():
    images = np.stack([_image(50, 70, seed=s) for s in range(3)])
    batch = resize_like_pil(tf.constant(images), 20, 90).numpy()
    for i in range(3):
        np.testing.assert_array_equal(batch[i], resize_like_pil(tf.constant(images[i]), 20, 90).numpy())
