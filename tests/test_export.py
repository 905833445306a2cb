"""keras_roadmap.export: round trips (SavedModel and ONNX), baked-in preprocessing, errors."""

import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_roadmap import export as ex

IMAGE_SIZE = 28
PRESET = "cub@28"  # the cub preset rescaled to a 28 crop: Resize(32) shorter side + CenterCrop(28)


def _dense_embedder():
    keras.utils.set_random_seed(1)
    x = keras.Input((16,), name="features")
    h = keras.layers.Dense(32, activation="relu")(x)
    return keras.Model(x, keras.layers.Dense(8)(h), name="dense_embedder")


def _cnn_embedder(dynamic=False):
    keras.utils.set_random_seed(2)
    size = None if dynamic else IMAGE_SIZE
    x = keras.Input((size, size, 3), name="pixels")
    h = keras.layers.Conv2D(6, 3, strides=2, activation="relu")(x)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Conv2D(8, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(12)(h), name="cnn_embedder")


@pytest.fixture(scope="module")
def dense_model():
    return _dense_embedder()


@pytest.fixture(scope="module")
def cnn_model():
    return _cnn_embedder()


def _l2(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _reload_and_run(report, batch):
    """Run the artifact with the runtime a user would use, independent of the exporter's check."""
    if report.format == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(report.path, options, providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [report.input_name]
        assert [o.name for o in session.get_outputs()] == ["embeddings"]
        return session.run(None, {report.input_name: batch})[0]
    loaded = tf.saved_model.load(report.path)
    signature = loaded.signatures["serving_default"]
    return signature(**{report.input_name: tf.constant(batch)})["embeddings"].numpy()


def _pipeline_preprocess(images, preset=PRESET):
    """What evaluation feeds the model: `eval_transform` (make_eval_dataset's map) per image."""
    from keras_roadmap.data import eval_transform

    return np.stack([eval_transform(tf.constant(image), preset).numpy() for image in images])


def _pil_preprocess(images, resize=32, crop=IMAGE_SIZE):
    """Independent reference: PIL's bilinear resize of the shorter side (torchvision's
    arithmetic), centred crop, ImageNet normalisation."""
    from PIL import Image

    out = []
    for image in images:
        h, w = image.shape[:2]
        new_h, new_w = (resize, resize * w // h) if h <= w else (resize * h // w, resize)
        x = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR), dtype=np.float64)
        top, left = int(round((new_h - crop) / 2)), int(round((new_w - crop) / 2))
        out.append(x[top : top + crop, left : left + crop])
    return (np.stack(out) / 255.0 - np.array(ex.IMAGENET_MEAN)) / np.array(ex.IMAGENET_STD)


def _assert_same_pixels(got, expected):
    """Equal but for rare one-level rounding flips (1/255/std ~ 0.017 in normalised units)."""
    diff = np.abs(got - expected)
    assert diff.max() <= 0.018 and np.mean(diff > 1e-4) < 1e-3, (diff.max(), np.mean(diff > 1e-4))


EXPORTERS = {
    "saved_model": lambda m, p, **kw: ex.to_saved_model(m, p, **kw),
    "onnx": lambda m, p, **kw: ex.to_onnx(m, p / "model.onnx" if p.suffix != ".onnx" else p, **kw),
}


@pytest.mark.parametrize("fmt", ["saved_model", "onnx"])
@pytest.mark.parametrize("l2", [False, True])
def test_dense_round_trip(dense_model, tmp_path, fmt, l2):
    report = EXPORTERS[fmt](dense_model, tmp_path / "art", l2_normalize=l2)
    assert report.format == fmt
    assert report.input_name == "features" and report.input_shape == (None, 16)
    assert report.input_dtype == "float32" and report.output_dim == 8
    assert report.max_abs_diff <= 1e-4 and report.seconds > 0
    rng = np.random.default_rng(5)
    for batch in (1, 7):
        x = rng.standard_normal((batch, 16)).astype("float32")
        expected = dense_model.predict_on_batch(x)
        if l2:
            expected = _l2(expected)
        got = _reload_and_run(report, x)
        assert got.shape == (batch, 8)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        if l2:
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("fmt", ["saved_model", "onnx"])
@pytest.mark.parametrize("with_preprocessing,l2", [(False, False), (True, True)])
def test_cnn_round_trip(cnn_model, tmp_path, fmt, with_preprocessing, l2):
    kwargs = {"preset": PRESET} if with_preprocessing else {}
    report = EXPORTERS[fmt](
        cnn_model, tmp_path / "art", with_preprocessing=with_preprocessing, l2_normalize=l2, **kwargs
    )
    assert report.output_dim == 12 and report.max_abs_diff <= 1e-4
    rng = np.random.default_rng(6)
    for batch in (1, 7):
        if with_preprocessing:
            assert (report.input_name, report.input_dtype) == ("images", "uint8")
            assert report.input_shape == (None, None, None, 3) and report.image_size == IMAGE_SIZE
            # Landscape batch of one size, then a portrait batch: H and W are dynamic too.
            shape = (batch, 64, 96, 3) if batch == 1 else (batch, 96, 64, 3)
            x = rng.integers(0, 256, shape, dtype=np.uint8)
            keras_in = _pipeline_preprocess(x)
            assert report.preset == PRESET
        else:
            assert report.input_shape == (None, IMAGE_SIZE, IMAGE_SIZE, 3)
            x = keras_in = rng.standard_normal((batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
        expected = cnn_model.predict_on_batch(keras_in)
        if l2:
            expected = _l2(expected)
        got = _reload_and_run(report, x)
        assert got.shape == (batch, 12)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_preprocessing_is_the_pipeline_transform_and_matches_pil():
    rng = np.random.default_rng(0)
    for shape in [(2, 64, 96, 3), (1, 96, 64, 3), (1, 64, 64, 3), (1, 20, 30, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        got = ex.imagenet_eval_preprocess(tf.constant(images), preset=PRESET).numpy()
        assert got.shape == (shape[0], IMAGE_SIZE, IMAGE_SIZE, 3) and got.dtype == np.float32
        np.testing.assert_array_equal(got, _pipeline_preprocess(images))
        diff = np.abs(got - _pil_preprocess(images))
        assert diff.mean() <= 0.01 and diff.max() <= 0.05, (shape, diff.mean(), diff.max())
    # The old call form (image size only) is the default "sop" preset at that size.
    images = rng.integers(0, 256, (1, 50, 70, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        ex.imagenet_eval_preprocess(tf.constant(images), IMAGE_SIZE).numpy(), _pipeline_preprocess(images, "sop@28")
    )


def test_onnx_baked_preprocessing_is_the_pipeline_transform(tmp_path):
    """A Flatten 'embedder' exposes the preprocessed pixels: checks the ONNX graph's resize/crop,
    for a shorter-side and for a square-resize preset."""
    x = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    model = keras.Model(x, keras.layers.Flatten()(x))
    images = np.random.default_rng(3).integers(0, 256, (2, 96, 64, 3), dtype=np.uint8)
    for preset in (PRESET, "sop@28"):
        report = ex.to_onnx(model, tmp_path / "pixels.onnx", with_preprocessing=True, preset=preset)
        got = _reload_and_run(report, images)
        _assert_same_pixels(got, _pipeline_preprocess(images, preset).reshape(2, -1))


def test_onnx_contract_metadata(cnn_model, tmp_path):
    path = tmp_path / "m.onnx"
    ex.to_onnx(cnn_model, path, opset=15, with_preprocessing=True, l2_normalize=True, preset=PRESET)
    import onnx

    model = onnx.load(str(path))
    assert model.opset_import[0].version == 15
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "height", "width", 3]
    contract = ex.read_onnx_contract(path)
    assert contract["input_name"] == "images" and contract["input_dtype"] == "uint8"
    assert contract["l2_normalized"] is True and contract["output_dim"] == 12
    pre = contract["preprocessing"]
    assert pre["image_size"] == IMAGE_SIZE and pre["preset"] == PRESET
    assert pre["steps"][:2] == ["Resize(32)", "CenterCrop(28)"]
    assert pre["transform"]["eval_resize"] == 32 and pre["transform"]["eval_square"] is False
    assert pre["mean"] == list(ex.IMAGENET_MEAN) and pre["std"] == list(ex.IMAGENET_STD)


def test_onnx_bytes_do_not_depend_on_what_the_process_traced_before(cnn_model, tmp_path):
    # tf2onnx numbers constants, nodes and sizes with process-wide counters; the exporter renames
    # them canonically, so a resumed run's export equals an unbroken run's byte for byte.
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    ex.to_onnx(cnn_model, first, with_preprocessing=True, l2_normalize=True, preset=PRESET)
    for i in range(3):
        tf.function(lambda v, i=i: v * i)(tf.constant(1.0))  # moves tf's and tf2onnx's counters
    ex.to_onnx(cnn_model, second, with_preprocessing=True, l2_normalize=True, preset=PRESET)
    assert first.read_bytes() == second.read_bytes()
    import onnx

    names = [node.name for node in onnx.load(str(first)).graph.node]
    assert names[0].endswith("_0") and len(set(names)) == len(names)


def test_saved_model_contract_file_and_dynamic_size_model(tmp_path):
    model = _cnn_embedder(dynamic=True)
    report = ex.to_saved_model(model, tmp_path / "sm", with_preprocessing=True, preset="sop", image_size=IMAGE_SIZE)
    contract = json.loads((tmp_path / "sm" / ex.SAVED_MODEL_CONTRACT_FILE).read_text())
    assert contract["preprocessing"]["image_size"] == IMAGE_SIZE
    assert contract["preprocessing"]["preset"] == "sop@28" and report.preset == "sop@28"
    assert contract["l2_normalized"] is False and report.image_size == IMAGE_SIZE
    # Without preprocessing, image_size fixes the dynamic spatial input.
    report = ex.to_onnx(model, tmp_path / "m.onnx", image_size=20)
    assert report.input_shape == (None, 20, 20, 3) and report.max_abs_diff <= 1e-4


def test_model_compiled_with_roadmap_loss_exports(tmp_path):
    from keras_roadmap.losses import ROADMAPLoss

    model = _dense_embedder()
    model.compile(optimizer="adam", loss=ROADMAPLoss())
    report = ex.to_saved_model(model, tmp_path / "sm", l2_normalize=True)
    assert report.max_abs_diff <= 1e-4
    report = ex.to_onnx(model, tmp_path / "m.onnx")
    assert report.max_abs_diff <= 1e-4


class _PythonCounter(keras.layers.Layer):
    """Adds a Python-side call counter: tracing freezes it, so the export cannot be faithful."""

    calls = 0

    def call(self, x):
        type(self).calls += 1
        return x + float(type(self).calls)


def test_verification_failure_raises_with_report(tmp_path):
    x = keras.Input((4,))
    model = keras.Model(x, _PythonCounter()(keras.layers.Dense(3)(x)))
    with pytest.raises(ex.ExportVerificationError, match="differs from the Keras model") as info:
        ex.to_onnx(model, tmp_path / "m.onnx")
    assert info.value.report.max_abs_diff >= 1.0
    assert os.path.exists(tmp_path / "m.onnx")  # kept for inspection
    # verify=False skips the check and reports nan.
    report = ex.to_saved_model(model, tmp_path / "sm", verify=False)
    assert np.isnan(report.max_abs_diff) and "not verified" in report.summary()


def test_explicit_probe_is_used(dense_model, tmp_path):
    probe = np.zeros((2, 16), "float32")
    report = ex.to_onnx(dense_model, tmp_path / "m.onnx", probe=probe)
    assert report.max_abs_diff <= 1e-4
    with pytest.raises(ex.ExportError, match="probe has shape"):
        ex.to_onnx(dense_model, tmp_path / "n.onnx", probe=np.zeros((2, 5), "float32"))


@pytest.mark.parametrize(
    "build,kwargs,error,message",
    [
        (
            lambda: keras.Model(i := keras.Input((8,)), keras.layers.Reshape((2, 4))(i)),
            {},
            ex.NotAnEmbedderError,
            "Not an embedder.*rank 3",
        ),
        (
            lambda: keras.Model([a := keras.Input((3,)), b := keras.Input((3,))], keras.layers.Concatenate()([a, b])),
            {},
            ex.NotAnEmbedderError,
            "2 inputs",
        ),
        (_dense_embedder, {"with_preprocessing": True}, ex.ExportError, "needs an image model"),
        (
            _cnn_embedder,
            {"with_preprocessing": True, "image_size": 32},
            ex.ExportError,
            "does not match the model's input size 28",
        ),
        (
            _cnn_embedder,
            {"with_preprocessing": True, "preset": "cub"},
            ex.ExportError,
            "preset 'cub' crops 224 px but the model takes 28 px",
        ),
        (
            _cnn_embedder,
            {"with_preprocessing": True, "preset": "imagenet"},
            ex.ExportError,
            "Unknown transform preset 'imagenet'",
        ),
        (_cnn_embedder, {"preset": "sop"}, ex.ExportError, "preset only applies with with_preprocessing"),
        (lambda: _cnn_embedder(dynamic=True), {}, ex.ExportError, "dynamic axes"),
        (
            _cnn_embedder,
            {"with_preprocessing": True, "probe": np.zeros((1, 40, 40, 3), "float32")},
            ex.ExportError,
            "probe must be uint8 images",
        ),
        (_dense_embedder, {"opset": 9}, ex.ExportError, "opset must be"),
    ],
)
def test_bad_models_and_arguments_raise_clear_errors(tmp_path, build, kwargs, error, message):
    with pytest.raises(error, match=message):
        ex.to_onnx(build(), tmp_path / "m.onnx", **kwargs)
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_format_and_bad_paths(dense_model, tmp_path):
    with pytest.raises(ex.ExportError, match="Unknown export format 'tflite'.*onnx"):
        ex.export(dense_model, tmp_path / "m", format="tflite")
    with pytest.raises(ex.ExportError, match="is a directory"):
        ex.to_onnx(dense_model, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ex.ExportError, match="existing file"):
        ex.to_saved_model(dense_model, tmp_path / "file")
    with pytest.raises(ex.ExportError, match="Expected a keras.Model"):
        ex.to_onnx(lambda x: x, tmp_path / "m.onnx")
    report = ex.export(dense_model, tmp_path / "d.onnx", format="onnx", opset=17)
    assert report.format == "onnx"


class _Igamma(keras.layers.Layer):
    """tf.math.igamma has no ONNX conversion."""

    def call(self, x):
        return tf.math.igamma(tf.abs(x) + 1.0, tf.abs(x) + 1.0)


def test_unconvertible_op_is_a_clear_error(tmp_path):
    x = keras.Input((4,))
    model = keras.Model(x, _Igamma()(keras.layers.Dense(3)(x)))
    with pytest.raises(ex.ExportError, match="Igamma.*does not support.*SavedModel"):
        ex.to_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    # The SavedModel route keeps the TF op.
    assert ex.to_saved_model(model, tmp_path / "sm").max_abs_diff <= 1e-4


@pytest.mark.parametrize("missing", ["tf2onnx", "onnx", "onnxruntime"])
def test_missing_export_extra_is_named(dense_model, tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # what `import` sees when it is not installed
    with pytest.raises(ImportError, match=r"keras-roadmap\[export\]") as info:
        ex.to_onnx(dense_model, tmp_path / "m.onnx")
    assert missing in str(info.value)


def test_onnx_input_named_as_the_keras_input_and_our_producer_version(tmp_path):
    import onnx

    from keras_roadmap import __version__

    x = keras.Input((6,), name="pixels")
    report = ex.to_onnx(keras.Model(x, keras.layers.Dense(3)(x)), tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert report.input_name == "pixels" and proto.graph.input[0].name == "pixels"
    assert (proto.producer_name, proto.producer_version) == ("keras-roadmap", __version__)
