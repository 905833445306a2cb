"""One preprocessing from evaluation to deployment: a JPEG through the exported ONNX (decoding
only on the serving side) gives the embedding `make_eval_dataset` + the Keras model give; the
preset recorded in a `.keras` file is what `keras-roadmap export` bakes in by default."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from keras_roadmap import export as ex
from keras_roadmap.data import make_eval_dataset, read_model_preset, write_model_preset
from keras_roadmap.data.split import RetrievalSplit


def _cnn(size=224, seed=4):
    keras.utils.set_random_seed(seed)
    x = keras.Input((size, size, 3), name="images")
    h = keras.layers.Conv2D(8, 7, strides=4, activation="relu")(x)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.UnitNormalization()(keras.layers.Dense(16)(h)), name="jpeg_cnn")


def _photo_jpegs(root):
    """JPEGs of a smooth textured scene: landscape, portrait, smaller than the crop."""
    paths = []
    for k, (h, w) in enumerate([(375, 500), (500, 333), (180, 150)]):
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        rgb = np.stack([np.sin(17 * x + 2 * y + k), np.cos(11 * y - 5 * x * y), np.sin(25 * (x - y) ** 2)], -1)
        image = np.clip(rgb * 90 + 128, 0, 255).astype(np.uint8)
        path = root / f"photo_{k}.jpg"
        Image.fromarray(image).save(path, format="JPEG", quality=90)
        paths.append(str(path))
    return paths


def _serving_embed(onnx_path, paths):
    """What the serving side does: decode with PIL, run the ONNX graph, nothing else."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    out = []
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        out.append(session.run(["embeddings"], {"images": pixels[None]})[0][0])
    return np.stack(out)


@pytest.mark.parametrize("preset", ["sop", "cub"])
def test_a_jpeg_gets_the_same_embedding_through_onnx_and_evaluation(tmp_path, preset):
    model = _cnn()
    paths = _photo_jpegs(tmp_path)
    split = RetrievalSplit(
        name="photos",
        paths=paths,
        labels=np.arange(len(paths)),
        super_labels=None,
        sample_ids=np.arange(len(paths)),
        class_names=[str(i) for i in range(len(paths))],
    )
    # The pipeline decodes JPEGs as PIL does (accurate DCT): the same pixels on both sides.
    import tensorflow as tf

    from keras_roadmap.data import decode_image

    for path in paths:
        with Image.open(path) as image:
            np.testing.assert_array_equal(decode_image(tf.io.read_file(path)).numpy(), np.asarray(image))
    evaluated = np.concatenate([model.predict_on_batch(x) for x, _ in make_eval_dataset(split, 2, preset=preset)])
    report = ex.to_onnx(model, tmp_path / "embedder.onnx", with_preprocessing=True, preset=preset)
    assert report.preset == preset and report.max_abs_diff <= 1e-4
    served = _serving_embed(tmp_path / "embedder.onnx", paths)
    assert served.shape == evaluated.shape == (3, 16)
    assert np.max(np.abs(served - evaluated)) <= 1e-4


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 32, 47, 3), (1, 40, 32, 3)])
def test_a_side_the_resize_keeps_exports_exactly(tmp_path, shape):
    """The glyph preset's 32x32 test transform on images with a side already 32: its taps
    repeat the last pixel (zero weights), which ONNX's ScatterND must not keep over the real one."""
    keras.utils.set_random_seed(0)
    x = keras.Input((32, 32, 3), name="images")
    model = keras.Model(x, keras.layers.Dense(4)(keras.layers.Flatten()(x)))
    probe = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    report = ex.to_onnx(model, tmp_path / "m.onnx", with_preprocessing=True, preset="glyphs", probe=probe)
    assert report.max_abs_diff <= 1e-4


def test_model_file_records_its_preset_and_the_cli_bakes_it_in(tmp_path, capsys):
    from keras_roadmap.cli import main

    model = _cnn(size=64)
    path = tmp_path / "embedder.keras"
    model.save(path)
    assert read_model_preset(path) is None
    write_model_preset(path, "cub@64")
    write_model_preset(path, "sop@64")  # replaces the first record
    assert read_model_preset(path).name == "sop@64"
    reloaded = keras.models.load_model(path)  # Keras ignores the extra archive entry
    np.testing.assert_allclose(
        reloaded.predict_on_batch(np.zeros((1, 64, 64, 3))), model.predict_on_batch(np.zeros((1, 64, 64, 3))), atol=1e-6
    )

    assert (
        main(
            [
                "export",
                "--model",
                str(path),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "a.onnx"),
                "--with-preprocessing",
            ]
        )
        == 0
    )
    assert json.loads(json.dumps(ex.read_onnx_contract(tmp_path / "a.onnx")))["preprocessing"]["preset"] == "sop@64"
    assert (
        main(
            [
                "export",
                "--model",
                str(path),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "b.onnx"),
                "--with-preprocessing",
                "--preset",
                "cub@64",
            ]
        )
        == 0
    )
    pre = ex.read_onnx_contract(tmp_path / "b.onnx")["preprocessing"]
    assert pre["preset"] == "cub@64" and pre["steps"][:2] == ["Resize(73)", "CenterCrop(64)"]
    assert "preset cub@64" in capsys.readouterr().out
    # A preset whose crop is not the model's input size is refused with the fix in the message.
    assert (
        main(
            [
                "export",
                "--model",
                str(path),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "c.onnx"),
                "--with-preprocessing",
                "--preset",
                "sop",
            ]
        )
        == 2
    )
    assert "crops 224 px but the model takes 64 px" in capsys.readouterr().err


def test_export_reads_the_preset_a_model_carries(tmp_path):
    model = _cnn(size=64)
    setattr(model, ex.MODEL_PRESET_ATTR, "inshop@64")
    report = ex.to_saved_model(model, tmp_path / "sm", with_preprocessing=True)
    assert report.preset == "inshop@64"
