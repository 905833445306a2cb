"""tf.data pipelines: decoding, the paper's transforms (both crop backends), determinism,
corrupt-image handling, and use by model.fit."""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_roadmap.data import (
    CorruptImageLog,
    RandomResizedCrop,
    eval_transform,
    load_sop,
    make_eval_dataset,
    make_train_dataset,
    train_transform,
)
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


def coordinate_image(h, w):
    """float image whose channel 0 is the row index and channel 1 the column index."""
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return tf.constant(np.stack([rows, cols, np.zeros_like(rows)], axis=-1))


def test_random_resized_crop_area_and_ratio_ranges():
    h, w = 120, 160
    image = coordinate_image(h, w)
    crop = RandomResizedCrop(64, backend="tf_image")
    areas, ratios = [], []
    for i in range(60):
        out = crop(image, tf.constant([5, i])).numpy()
        crop_h = out[..., 0].max() - out[..., 0].min() + 1
        crop_w = out[..., 1].max() - out[..., 1].min() + 1
        areas.append(crop_h * crop_w / (h * w))
        ratios.append(crop_w / crop_h)
    areas, ratios = np.array(areas), np.array(ratios)
    # Small slack: integer box rounding and the resize's edge sampling.
    assert areas.min() >= 0.16 - 0.03 and areas.max() <= 1.0 + 1e-6
    assert ratios.min() >= 0.75 - 0.06 and ratios.max() <= 4 / 3 + 0.06
    assert areas.max() - areas.min() > 0.3, "crops must actually vary in size"


def test_keras_cv_and_tf_image_backends_take_the_same_box():
    image = coordinate_image(90, 120)
    a = RandomResizedCrop(48, backend="tf_image")
    b = RandomResizedCrop(48, backend="keras_cv")
    assert (a.backend, b.backend) == ("tf_image", "keras_cv")
    for i in range(10):
        out_a, out_b = a(image, tf.constant([1, i])).numpy(), b(image, tf.constant([1, i])).numpy()
        assert out_b.shape == out_a.shape == (48, 48, 3)
        # Same box; the two resamplers differ by under ~2 source pixels at the edges.
        np.testing.assert_allclose(out_a, out_b, atol=2.0)


def test_flip_happens_about_half_the_time():
    image = coordinate_image(40, 40)
    full = RandomResizedCrop(40, scale=(1.0, 1.0), ratio=(1.0, 1.0), backend="tf_image")
    flipped = 0
    for i in range(40):
        out = train_transform(image, tf.constant([0, i]), full, normalize=False).numpy()
        np.testing.assert_allclose(out[..., 0], image.numpy()[..., 0], atol=1e-4)  # rows never move
        if out[0, 0, 1] > out[0, -1, 1]:
            flipped += 1
            np.testing.assert_allclose(out[..., 1], image.numpy()[:, ::-1, 1], atol=1e-4)
    assert 8 <= flipped <= 32


def test_eval_transform_resizes_shorter_side_then_center_crops():
    h, w = 300, 400
    out = eval_transform(coordinate_image(h, w), image_size=224, normalize=False).numpy()
    assert out.shape == (224, 224, 3)
    # Shorter side 300 -> 256: the crop keeps the central 224/256 of the rows and the same
    # pixel span of the (longer) columns.
    span = h * 224 / 256
    assert abs(out[..., 0].min() - (h - span) / 2) < 1.5 and abs(out[..., 0].max() - (h + span) / 2) < 1.5
    assert abs(out[..., 1].mean() - (w - 1) / 2) < 1.0


def test_eval_transform_big_setting_defaults_to_288():
    out = eval_transform(coordinate_image(288, 400), image_size=256, normalize=False).numpy()
    # 288 -> 288 (no resize of rows), crop 256 centred: rows 16..271.
    assert out.shape == (256, 256, 3)
    assert abs(out[..., 0].min() - 16) < 0.6 and abs(out[..., 0].max() - 271) < 0.6
    with pytest.raises(ValueError, match="resize_size .* must be >= image_size"):
        eval_transform(coordinate_image(10, 10), image_size=224, resize_size=200)


def test_normalisation_matches_imagenet_statistics():
    gray = tf.fill((50, 50, 3), 128.0)
    out = eval_transform(gray, image_size=SIZE).numpy()
    expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[5, 5], expected, rtol=1e-5)


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match=r"backend must be one of"):
        RandomResizedCrop(32, backend="torchvision")


# ------------------------------------------------------------------- train pipeline


@pytest.mark.parametrize("backend", ["tf_image", "keras_cv"])
def test_train_pipeline_on_jpeg_tree(tmp_path, backend):
    split = make_sop_tree(tmp_path)
    sampler = MPerClassSampler(split.labels, batch_size=8, samples_per_class=2, seed=0)
    ds = make_train_dataset(split, sampler, image_size=SIZE, backend=backend, epochs=2)
    assert int(ds.cardinality()) == 2 * len(sampler) == 6
    expected = np.concatenate([sampler.batches(0), sampler.batches(1)])
    got = batches(ds)
    assert len(got) == 6
    for (images, labels), rows in zip(got, expected):
        assert images.shape == (8, SIZE, SIZE, 3) and images.dtype == np.float32
        np.testing.assert_array_equal(labels.numpy(), split.labels[rows])
        assert np.isfinite(images).all() and -2.2 < images.min() and images.max() < 2.7


def test_train_pipeline_is_deterministic_and_seeded(tmp_path):
    split = make_sop_tree(tmp_path)

    def run(aug_seed, sampler_seed, parallel=tf.data.AUTOTUNE):
        sampler = MPerClassSampler(split.labels, 8, 2, seed=sampler_seed)
        ds = make_train_dataset(split, sampler, image_size=SIZE, seed=aug_seed, backend="tf_image",
                                epochs=1, num_parallel_calls=parallel)
        return [(x, y.numpy()) for x, y in batches(ds)]

    reference = run(1, 1)
    for (xa, ya), (xb, yb) in zip(reference, run(1, 1, parallel=1)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other_aug = run(2, 1)
    assert all(np.array_equal(ya, yb) for (_, ya), (_, yb) in zip(reference, other_aug))
    assert not np.allclose(reference[0][0], other_aug[0][0])
    other_sampler = run(1, 2)
    assert not all(np.array_equal(ya, yb) for (_, ya), (_, yb) in zip(reference, other_sampler))


def test_resuming_from_an_epoch_reproduces_it(tmp_path):
    split = make_sop_tree(tmp_path)
    sampler = MPerClassSampler(split.labels, 8, 2, seed=3)
    full = batches(make_train_dataset(split, sampler, image_size=SIZE, backend="tf_image", epochs=2))
    resumed = batches(make_train_dataset(split, sampler, image_size=SIZE, backend="tf_image", epochs=1, first_epoch=1))
    for (xa, ya), (xb, yb) in zip(full[3:], resumed):
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
    for (x, target), expected in zip(ds.take(len(rows)), rows):
        assert x.shape == (8, SIZE, SIZE, 3)
        np.testing.assert_array_equal(target["sample_id"].numpy(), expected)
        np.testing.assert_array_equal(target["label"].numpy(), labels[expected])


def test_model_fit_consumes_train_dataset_with_roadmap_loss():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (48, 20, 20, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(12), 4)
    sampler = MPerClassSampler(labels, 16, 4, seed=0)
    ds = make_train_dataset((images, labels), sampler, image_size=16, backend="tf_image")
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(8),
        keras.layers.UnitNormalization(),
    ])
    model.compile("sgd", ROADMAPLoss())
    history = model.fit(ds, epochs=2, steps_per_epoch=len(sampler), shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_hierarchical_sampler_drives_the_pipeline(tmp_path):
    split = make_sop_tree(tmp_path, num_classes=8, per_class=3)
    sampler = HierarchicalSampler(split.labels, split.super_labels, batch_size=8, samples_per_class=2,
                                  batches_per_super_pair=3, seed=0)
    ds = make_train_dataset(split, sampler, image_size=SIZE, backend="tf_image", epochs=1)
    got = [y.numpy() for _, y in ds]
    assert len(got) == len(sampler) == 3
    for labels, rows in zip(got, sampler.batches(0)):
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
    (x, target), = list(make_eval_dataset(split, 8, image_size=SIZE, with_sample_ids=True))
    x = x.numpy()
    assert x.shape == (4, SIZE, SIZE, 3)
    gray = (200 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[0].mean(axis=(0, 1)), gray, atol=0.03)  # gray replicated to RGB
    np.testing.assert_allclose(x[1, 4, 4], (100 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), atol=1e-3)
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
        out = list(make_eval_dataset(split, 5, image_size=SIZE, on_corrupt="skip", corrupt_log=log, with_sample_ids=True))
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
        ds = make_train_dataset(split, sampler, image_size=SIZE, backend="tf_image", epochs=3,
                                on_corrupt="skip", corrupt_log=log, with_sample_ids=True)
        got = [(x.numpy(), t["sample_id"].numpy()) for x, t in ds]
    planned = np.concatenate([sampler.batches(e) for e in range(3)])
    with_bad = [b for b in planned if 0 in b]
    assert len(with_bad) >= 1, "the fixed seed must schedule the corrupt image at least once"
    kept = [b for b in planned if 0 not in b]
    assert len(got) == len(kept)
    for (x, ids), expected in zip(got, kept):
        np.testing.assert_array_equal(ids, expected)  # surviving batches are intact and in order
        assert x.shape == (4, SIZE, SIZE, 3)
    assert log.paths == [split.paths[0]] and log.events == sum(int((b == 0).sum()) for b in with_bad)
