"""tf.data pipelines: decoding, the official transform presets, determinism, corrupt-image
handling, and use by model.fit."""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_roadmap.data import (
    CorruptImageLog,
    TransformPreset,
    eval_transform,
    get_preset,
    load_sop,
    make_eval_dataset,
    make_train_dataset,
    sample_crop_box,
    train_transform,
    train_transform_from_box,
)
from keras_roadmap.data.transforms import train_resize_shape
from keras_roadmap.losses import ROADMAPLoss
from keras_roadmap.samplers import HierarchicalSampler, MPerClassSampler

SIZE = 32  # small output side keeps the tests fast; the transforms are size-agnostic


def make_sop_tree(root: pathlib.Path, num_classes=6, per_class=4, corrupt=None):
    """An SOP-layout tree of real JPEGs (40x30 .. 70x50); `corrupt` maps a row index to raw bytes."""
    rng = np.random.default_rng(0)
    lines = ["image_id class_id super_class_id path"]
    row = 0
    for c in range(num_classes):
        for k in range(per_class):
            rel = f"cat{c % 2}_final/{c}_{k}.JPG"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if corrupt and row in corrupt:
                path.write_bytes(corrupt[row])
            else:
                h, w = rng.integers(30, 50), rng.integers(40, 70)
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format="JPEG")
            lines.append(f"{row + 1} {c + 10} {c % 2 + 1} {rel}")
            row += 1
    (root / "Ebay_train.txt").write_text("\n".join(lines) + "\n")
    return load_sop(root, "train", check_files=False)


def truncated_jpeg() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 3]


def batches(ds, n=None):
    out = []
    for x, y in ds.take(n) if n else ds:
        out.append((x.numpy(), y))
    return out


# ------------------------------------------------------------------------- transforms
# (Parity with torchvision/PIL on photos: tests/test_transforms_parity.py.)


def coordinate_image(h, w):
    """Image whose channel 0 is the row index and channel 1 the column index (both < 256)."""
    assert h <= 256 and w <= 256
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return tf.constant(np.stack([rows, cols, np.zeros_like(rows)], axis=-1))


def test_crop_boxes_follow_the_area_and_ratio_ranges():
    h, w = 120, 160
    areas, ratios = [], []
    for i in range(200):
        top, left, ch, cw = sample_crop_box(h, w, tf.constant([5, i])).numpy()
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        areas.append(ch * cw / (h * w))
        ratios.append(cw / ch)
    areas, ratios = np.array(areas), np.array(ratios)
    # Slack: integer rounding of the sides, as in torchvision.
    assert areas.min() >= 0.16 - 0.02 and areas.max() <= 1.0
    assert ratios.min() >= 0.75 - 0.03 and ratios.max() <= 1.33 + 0.03
    assert areas.max() - areas.min() > 0.5, "crops must actually vary in size"


def test_crop_box_falls_back_to_the_clamped_central_crop():
    # A 10 x 250 strip: no candidate of area >= 16% with ratio <= 1.33 fits, so torchvision's
    # fallback applies: full height, width round(10 * 1.33) = 13, centred.
    box = sample_crop_box(10, 250, tf.constant([0, 1])).numpy()
    np.testing.assert_array_equal(box, [0, (250 - 13) // 2, 10, 13])


def test_flip_happens_about_half_the_time():
    image = coordinate_image(40, 40)
    whole = TransformPreset("whole", 40, None, 40, True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = 0
    for i in range(40):
        out = train_transform(image, tf.constant([0, i]), whole, normalize=False).numpy()
        np.testing.assert_array_equal(out[..., 0], image.numpy()[..., 0])  # rows never move
        if out[0, 0, 1] > out[0, -1, 1]:
            flipped += 1
            np.testing.assert_array_equal(out[..., 1], image.numpy()[:, ::-1, 1])
    assert 8 <= flipped <= 32


def test_train_transform_from_box_crops_that_box():
    image = coordinate_image(100, 120)
    out = train_transform_from_box(image, [10, 20, 40, 40], False, "cub", image_size=40, normalize=False).numpy()
    # 40 x 40 box to a 40 crop: no resampling, exactly the box.
    np.testing.assert_array_equal(out[..., 0], image.numpy()[10:50, 20:60, 0])
    np.testing.assert_array_equal(out[..., 1], image.numpy()[10:50, 20:60, 1])
    flipped = train_transform_from_box(image, [10, 20, 40, 40], True, "cub", image_size=40, normalize=False).numpy()
    np.testing.assert_array_equal(flipped, out[:, ::-1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not fit"):
        train_transform_from_box(image, [80, 0, 40, 40], False, "cub", image_size=40)


def test_sop_train_transform_resizes_the_shorter_side_first():
    assert train_resize_shape(375, 500, "sop") == (256, 341)  # int(256 * 500 / 375)
    assert train_resize_shape(500, 375, "sop_big") == (384, 288)
    assert train_resize_shape(375, 500, "cub") == (375, 500)  # no resize before the crop
    out = train_transform(tf.zeros((375, 500, 3), tf.uint8), tf.constant([0, 0]), "sop")
    assert out.shape == (224, 224, 3) and out.dtype == tf.float32


def test_eval_transform_square_resize_vs_shorter_side_resize():
    h, w = 100, 200
    image = coordinate_image(h, w)
    # "sop" (scaled to a 112 crop: Resize([128, 128]) + CenterCrop(112)): the aspect ratio is not
    # kept, so the crop spans the same central 112/128 of the rows and of the columns.
    sop = eval_transform(image, "sop", image_size=112, normalize=False).numpy()
    cub = eval_transform(image, "cub", image_size=112, normalize=False).numpy()
    assert sop.shape == cub.shape == (112, 112, 3)
    frac = 112 / 128
    assert abs((sop[..., 1].max() - sop[..., 1].min()) / w - frac) < 0.03
    assert abs((sop[..., 0].max() - sop[..., 0].min()) / h - frac) < 0.03
    # "cub": Resize(128) of the shorter side (rows), columns 200 -> 256: the crop spans 112/256 of
    # the columns, centred.
    assert abs((cub[..., 1].max() - cub[..., 1].min()) / w - 112 / 256) < 0.03
    assert abs(cub[..., 1].mean() - (w - 1) / 2) < 1.0


def test_eval_transform_keeps_an_image_already_at_the_resize_size():
    image = coordinate_image(256, 256)
    out = eval_transform(image, "sop", normalize=False).numpy()
    # Resize([256, 256]) is the identity; CenterCrop(224) starts at round(32 / 2) = 16.
    np.testing.assert_array_equal(out[..., 0], image.numpy()[16:240, 16:240, 0])


def test_presets_are_the_official_transforms():
    sop, cub, inshop_big = get_preset("sop"), get_preset("cub"), get_preset("inshop_big")
    assert (sop.crop_size, sop.train_resize, sop.eval_resize, sop.eval_square) == (224, 256, 256, True)
    assert (cub.crop_size, cub.train_resize, cub.eval_resize, cub.eval_square) == (224, None, 256, False)
    assert (inshop_big.crop_size, inshop_big.eval_resize, inshop_big.eval_square) == (256, 288, True)
    assert sop.describe()["test"][:2] == ["Resize([256, 256])", "CenterCrop(224)"]
    assert get_preset("sop_big").describe()["train"][0] == "Resize(288)"
    scaled = get_preset("sop@32")
    assert (scaled.crop_size, scaled.train_resize, scaled.eval_resize) == (32, 37, 37)
    assert get_preset(scaled.to_dict()) == scaled
    with pytest.raises(ValueError, match="Unknown transform preset 'imagenet'"):
        get_preset("imagenet")


def test_bad_images_and_backends_are_rejected():
    with pytest.raises(ValueError, match=r"Expected an image tensor \(H, W, 3\)"):
        eval_transform(tf.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="channels"):
        eval_transform(tf.zeros((8, 8, 4)))
    with pytest.raises(ValueError, match="keras_cv' was removed"):
        make_train_dataset(
            (np.zeros((8, 8, 8, 3), np.uint8), np.repeat(np.arange(4), 2)),
            MPerClassSampler(np.repeat(np.arange(4), 2), 4, 2),
            backend="keras_cv",
        )
    with pytest.raises(ValueError, match=r"backend must be one of"):
        make_train_dataset(
            (np.zeros((8, 8, 8, 3), np.uint8), np.repeat(np.arange(4), 2)),
            MPerClassSampler(np.repeat(np.arange(4), 2), 4, 2),
            backend="torchvision",
        )


def test_normalisation_matches_imagenet_statistics():
    gray = tf.fill((50, 50, 3), 128.0)
    out = eval_transform(gray, image_size=SIZE).numpy()
    expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[5, 5], expected, rtol=1e-5)


# ------------------------------------------------------------------- train pipeline


@pytest.mark.parametrize("backend", ["auto", "tf_image"])
def test_train_pipeline_on_jpeg_tree(tmp_path, backend):
    split = make_sop_tree(tmp_path)
    sampler = MPerClassSampler(split.labels, batch_size=8, samples_per_class=2, seed=0)
    ds = make_train_dataset(split, sampler, image_size=SIZE, backend=backend, epochs=2)
    assert int(ds.cardinality()) == 2 * len(sampler) == 6
    expected = np.concatenate([sampler.batches(0), sampler.batches(1)])
    got = batches(ds)
    assert len(got) == 6
    for (images, labels), rows in zip(got, expected, strict=False):
        assert images.shape == (8, SIZE, SIZE, 3) and images.dtype == np.float32
        np.testing.assert_array_equal(labels.numpy(), split.labels[rows])
        assert np.isfinite(images).all() and -2.2 < images.min() and images.max() < 2.7


def test_train_pipeline_is_deterministic_and_seeded(tmp_path):
    split = make_sop_tree(tmp_path)

    def run(aug_seed, sampler_seed, parallel=tf.data.AUTOTUNE):
        sampler = MPerClassSampler(split.labels, 8, 2, seed=sampler_seed)
        ds = make_train_dataset(
            split, sampler, image_size=SIZE, seed=aug_seed, backend="tf_image", epochs=1, num_parallel_calls=parallel
        )
        return [(x, y.numpy()) for x, y in batches(ds)]

    reference = run(1, 1)
    for (xa, ya), (xb, yb) in zip(reference, run(1, 1, parallel=1), strict=False):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other_aug = run(2, 1)
    assert all(np.array_equal(ya, yb) for (_, ya), (_, yb) in zip(reference, other_aug, strict=False))
    assert not np.allclose(reference[0][0], other_aug[0][0])
    other_sampler = run(1, 2)
    assert not all(np.array_equal(ya, yb) for (_, ya), (_, yb) in zip(reference, other_sampler, strict=False))


def test_resuming_from_an_epoch_reproduces_it(tmp_path):
    split = make_sop_tree(tmp_path)
    sampler = MPerClassSampler(split.labels, 8, 2, seed=3)
    full = batches(make_train_dataset(split, sampler, image_size=SIZE, backend="tf_image", epochs=2))
    resumed = batches(make_train_dataset(split, sampler, image_size=SIZE, backend="tf_image", epochs=1, first_epoch=1))
    for (xa, ya), (xb, yb) in zip(full[3:], resumed, strict=False):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())


def test_train_pipeline_with_sample_ids_and_endless_epochs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 36, 28, 1), dtype=np.uint8)  # grayscale, in memory
    labels = np.repeat(np.arange(10), 4)
    sampler = MPerClassSampler(labels, 8, 4, seed=0)
    ds = make_train_dataset((images, labels), sampler, image_size=SIZE, backend="tf_image", with_sample_ids=True)
    assert ds.cardinality() == tf.data.INFINITE_CARDINALITY
    rows = np.concatenate([sampler.batches(0), sampler.batches(1)])
    for (x, target), expected in zip(ds.take(len(rows)), rows, strict=False):
        assert x.shape == (8, SIZE, SIZE, 3)
        np.testing.assert_array_equal(target["sample_id"].numpy(), expected)
        np.testing.assert_array_equal(target["label"].numpy(), labels[expected])


def test_model_fit_consumes_train_dataset_with_roadmap_loss():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (48, 20, 20, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(12), 4)
    sampler = MPerClassSampler(labels, 16, 4, seed=0)
    ds = make_train_dataset((images, labels), sampler, image_size=16, backend="tf_image")
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(8),
            keras.layers.UnitNormalization(),
        ]
    )
    model.compile("sgd", ROADMAPLoss())
    history = model.fit(ds, epochs=2, steps_per_epoch=len(sampler), shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_hierarchical_sampler_drives_the_pipeline(tmp_path):
    split = make_sop_tree(tmp_path, num_classes=8, per_class=3)
    sampler = HierarchicalSampler(
        split.labels, split.super_labels, batch_size=8, samples_per_class=2, batches_per_super_pair=3, seed=0
    )
    ds = make_train_dataset(split, sampler, image_size=SIZE, backend="tf_image", epochs=1)
    got = [y.numpy() for _, y in ds]
    assert len(got) == len(sampler) == 3
    for labels, rows in zip(got, sampler.batches(0), strict=False):
        np.testing.assert_array_equal(labels, split.labels[rows])
        supers = split.super_labels[rows]
        assert len(set(supers[:4])) == 1 and len(set(supers[4:])) == 1 and supers[0] != supers[4]


def test_sampler_and_data_sizes_must_match():
    labels = np.repeat(np.arange(10), 4)
    sampler = MPerClassSampler(labels, 8, 2)
    with pytest.raises(ValueError, match=r"built on 40 labels but data holds 20 images"):
        make_train_dataset((np.zeros((20, 8, 8, 3), np.uint8), labels[:20]), sampler)
    with pytest.raises(TypeError, match="data must be a RetrievalSplit"):
        make_train_dataset(["a.jpg"], sampler)
    with pytest.raises(ValueError, match=r"images \(N, H, W, 1\|3\)"):
        make_eval_dataset((np.zeros((4, 8, 8)), np.arange(4)))
    with pytest.raises(ValueError, match="on_corrupt must be one of"):
        make_eval_dataset((np.zeros((4, 8, 8, 3)), np.arange(4)), on_corrupt="ignore")


# ------------------------------------------------------------------ decoding, corrupt files


def test_eval_pipeline_decodes_grayscale_png_and_rgba(tmp_path):
    split = make_sop_tree(tmp_path, num_classes=2, per_class=2)
    Image.fromarray(np.full((30, 40), 200, np.uint8), mode="L").save(split.paths[0], format="JPEG")
    Image.fromarray(np.full((30, 40, 4), 100, np.uint8), mode="RGBA").save(split.paths[1], format="PNG")
    ((x, target),) = list(make_eval_dataset(split, 8, image_size=SIZE, with_sample_ids=True))
    x = x.numpy()
    assert x.shape == (4, SIZE, SIZE, 3)
    gray = (200 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[0].mean(axis=(0, 1)), gray, atol=0.03)  # gray replicated to RGB
    # Alpha 100/255 is composited on the one fixed background (issue 22), never just dropped.
    from keras_roadmap.data.presets import TRANSPARENT_BACKGROUND

    blended = np.floor(100 * 100 / 255 + np.asarray(TRANSPARENT_BACKGROUND) * (1 - 100 / 255) + 0.5)
    np.testing.assert_allclose(
        x[1, 4, 4], (blended / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), atol=1e-3
    )
    np.testing.assert_array_equal(target["sample_id"].numpy(), [0, 1, 2, 3])
    np.testing.assert_array_equal(target["label"].numpy(), [0, 0, 1, 1])


@pytest.mark.parametrize("payload", [b"this is not an image" * 5, "truncated"], ids=["garbage", "truncated"])
def test_corrupt_image_fails_fast_naming_the_file(tmp_path, payload):
    payload = truncated_jpeg() if payload == "truncated" else payload
    split = make_sop_tree(tmp_path, corrupt={5: payload})
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"cannot read or decode image.*cat1_final/1_1.JPG"):
        list(make_eval_dataset(split, 4, image_size=SIZE))
    sampler = MPerClassSampler(split.labels, 24, 4, seed=0)  # one batch = the whole dataset
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"cat1_final/1_1.JPG"):
        list(make_train_dataset(split, sampler, image_size=SIZE, backend="tf_image", epochs=1))


def test_missing_image_fails_fast_naming_the_file(tmp_path):
    split = make_sop_tree(tmp_path)
    pathlib.Path(split.paths[7]).unlink()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"cat1_final/1_3.JPG"):
        list(make_eval_dataset(split, 4, image_size=SIZE))


def test_skip_mode_in_eval_drops_the_image_with_its_label_and_id(tmp_path):
    split = make_sop_tree(tmp_path, corrupt={2: b"garbage bytes", 9: truncated_jpeg()})
    log = CorruptImageLog()
    with pytest.warns(RuntimeWarning, match="skipping unreadable image") as caught:
        out = list(
            make_eval_dataset(split, 5, image_size=SIZE, on_corrupt="skip", corrupt_log=log, with_sample_ids=True)
        )
    assert sorted(str(w.message).split()[-1] for w in caught) == sorted([split.paths[2], split.paths[9]])
    ids = np.concatenate([t["sample_id"].numpy() for _, t in out])
    labels = np.concatenate([t["label"].numpy() for _, t in out])
    np.testing.assert_array_equal(ids, [i for i in range(24) if i not in (2, 9)])
    np.testing.assert_array_equal(labels, split.labels[ids])
    assert sum(len(x) for x, _ in out) == 22
    assert log.paths == [split.paths[2], split.paths[9]] and log.events == 2


def test_skip_mode_in_training_drops_whole_batches_only(tmp_path):
    split = make_sop_tree(tmp_path, num_classes=8, per_class=4, corrupt={0: b"garbage"})
    sampler = MPerClassSampler(split.labels, 4, 2, seed=0)
    log = CorruptImageLog()
    with pytest.warns(RuntimeWarning, match="0_0.JPG"):
        ds = make_train_dataset(
            split,
            sampler,
            image_size=SIZE,
            backend="tf_image",
            epochs=3,
            on_corrupt="skip",
            corrupt_log=log,
            with_sample_ids=True,
        )
        got = [(x.numpy(), t["sample_id"].numpy()) for x, t in ds]
    planned = np.concatenate([sampler.batches(e) for e in range(3)])
    with_bad = [b for b in planned if 0 in b]
    assert len(with_bad) >= 1, "the fixed seed must schedule the corrupt image at least once"
    kept = [b for b in planned if 0 not in b]
    assert len(got) == len(kept)
    for (x, ids), expected in zip(got, kept, strict=False):
        np.testing.assert_array_equal(ids, expected)  # surviving batches are intact and in order
        assert x.shape == (4, SIZE, SIZE, 3)
    assert log.paths == [split.paths[0]] and log.events == sum(int((b == 0).sum()) for b in with_bad)
