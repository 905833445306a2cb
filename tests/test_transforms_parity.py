"""The transform presets against torchvision's transforms on PIL images (the official pipeline).

For every preset: the test transform on photos of several sizes and aspect ratios (landscape,
portrait, smaller than the crop) within mean |diff| <= 0.01 and max <= 0.05 in normalised units;
the train transform the same, given torchvision's own crop box (RandomResizedCrop.get_params on
the same image) and flip. Needs torch + torchvision (the [torch] extra).
"""

import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_roadmap.data import PRESETS, eval_transform, sample_crop_box, train_transform_from_box
from keras_roadmap.data.presets import IMAGENET_MEAN, IMAGENET_STD

# torch's optional triton import crashes once TensorFlow is loaded (seen with the CUDA wheels);
# torch treats an unimportable triton as absent, and these tests compile nothing.
if "triton" not in sys.modules and "torch" not in sys.modules:
    sys.modules["triton"] = None
T = pytest.importorskip("torchvision.transforms")
torch = pytest.importorskip("torch")

MEAN_TOL, MAX_TOL = 0.01, 0.05


def _textured(h, w, seed):
    """A natural-ish image: smooth colour gradients, edges and fine noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(20 * x + 3 * y), np.cos(13 * y - 7 * x * y), np.sin(30 * (x - y) ** 2)], -1)
    edges = ((x * 9).astype(int) % 2)[..., None] * 0.6
    return np.clip((base + edges + rng.normal(0, 0.25, (h, w, 3))) * 55 + 120, 0, 255).astype(np.uint8)


def _photos():
    photos = {
        "textured 500x333 portrait": _textured(500, 333, 0),
        "textured 300x480 landscape": _textured(300, 480, 1),
        "textured 150x110 smaller than the crop": _textured(150, 110, 2),
        "textured 90x260 thin": _textured(90, 260, 3),
    }
    try:  # real photos shipped with scikit-learn, when it is installed
        from sklearn.datasets import load_sample_images

        china, flower = load_sample_images().images
        photos["china.jpg 427x640"] = china
        photos["flower.jpg portrait 640x427"] = np.ascontiguousarray(flower.transpose(1, 0, 2))
        photos["china.jpg crop 200x180 small"] = china[100:300, 200:380]
    except ImportError:
        pass
    return photos


PHOTOS = _photos()


def _torch_test_transform(preset):
    size = [preset.eval_resize, preset.eval_resize] if preset.eval_square else preset.eval_resize
    return T.Compose(
        [T.Resize(size), T.CenterCrop(preset.crop_size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def _hwc(tensor):
    return tensor.permute(1, 2, 0).numpy()


def eval_differences(name):
    preset = PRESETS[name]
    reference = _torch_test_transform(preset)
    out = {}
    for label, photo in PHOTOS.items():
        expected = _hwc(reference(Image.fromarray(photo)))
        got = eval_transform(tf.constant(photo), name).numpy()
        assert got.shape == expected.shape == (preset.crop_size, preset.crop_size, 3)
        out[label] = np.abs(got - expected)
    return out


def train_differences(name, seed=0):
    preset = PRESETS[name]
    normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    out = {}
    for k, (label, photo) in enumerate(PHOTOS.items()):
        image = Image.fromarray(photo)
        if preset.train_resize is not None:
            image = T.Resize(preset.train_resize)(image)
        torch.manual_seed(seed + k)
        top, left, h, w = T.RandomResizedCrop.get_params(image, list(preset.scale), list(preset.ratio))
        flip = k % 2 == 0
        crop = T.functional.resized_crop(image, top, left, h, w, [preset.crop_size, preset.crop_size])
        if flip:
            crop = T.functional.hflip(crop)
        expected = _hwc(normalize(crop))
        got = train_transform_from_box(tf.constant(photo), [top, left, h, w], flip, name).numpy()
        out[label] = np.abs(got - expected)
    return out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_test_transform_matches_torchvision(name):
    diffs = eval_differences(name)
    for label, diff in diffs.items():
        assert diff.mean() <= MEAN_TOL and diff.max() <= MAX_TOL, (name, label, diff.mean(), diff.max())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_train_transform_matches_torchvision_given_its_box_and_flip(name):
    diffs = train_differences(name)
    for label, diff in diffs.items():
        assert diff.mean() <= MEAN_TOL and diff.max() <= MAX_TOL, (name, label, diff.mean(), diff.max())


def test_crop_boxes_are_distributed_as_torchvision_draws_them():
    h, w = 256, 341  # the SOP train resize of a 375x500 photo
    ours = np.array([sample_crop_box(h, w, tf.constant([7, i])).numpy() for i in range(400)])
    image = Image.new("RGB", (w, h))
    torch.manual_seed(0)
    theirs = np.array([T.RandomResizedCrop.get_params(image, [0.16, 1.0], [0.75, 1.33]) for _ in range(400)])

    def stats(boxes):
        area = boxes[:, 2] * boxes[:, 3] / (h * w)
        log_ratio = np.log(boxes[:, 3] / boxes[:, 2])
        centre_y = (boxes[:, 0] + boxes[:, 2] / 2) / h
        return np.array([area.mean(), log_ratio.mean(), log_ratio.std(), centre_y.mean()])

    # 400 draws each: standard errors ~0.012 (area), ~0.009 (log ratio); 4-5 sigma slack.
    np.testing.assert_allclose(stats(ours), stats(theirs), atol=0.05)
