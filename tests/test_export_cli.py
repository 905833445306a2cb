"""The `keras-roadmap export` command: success paths, one-line errors, lazy TensorFlow import."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_roadmap.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _subprocess_env():
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    return env


@pytest.fixture(scope="module")
def embedder_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    x = keras.Input((20, 20, 3), name="pixels")
    h = keras.layers.Conv2D(4, 3, activation="relu")(x)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(x, keras.layers.Dense(6)(h))
    path = tmp_path_factory.mktemp("models") / "embedder.keras"
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def not_embedder_file(tmp_path_factory):
    x = keras.Input((20, 20, 3))
    model = keras.Model(x, keras.layers.Conv2D(4, 3)(x))
    path = tmp_path_factory.mktemp("models") / "feature_map.keras"
    model.save(path)
    return str(path)


def _assert_one_line_error(capsys, rc, *fragments):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("keras-roadmap: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_export_onnx_with_preprocessing(embedder_file, tmp_path, capsys):
    out = tmp_path / "nested" / "m.onnx"
    rc = main(
        [
            "export",
            "--model",
            embedder_file,
            "--format",
            "onnx",
            "--out",
            str(out),
            "--opset",
            "16",
            "--with-preprocessing",
            "--l2-normalize",
        ]
    )
    stdout = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "exported onnx" in stdout and "'images' uint8" in stdout and "[?, 6]" in stdout
    from keras_roadmap.export import read_onnx_contract

    contract = read_onnx_contract(out)
    assert contract["preprocessing"]["image_size"] == 20 and contract["l2_normalized"]


def test_missing_file(tmp_path, capsys):
    rc = main(
        ["export", "--model", str(tmp_path / "nope.keras"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    )
    _assert_one_line_error(capsys, rc, "model file not found", "nope.keras")


def test_not_an_embedder(not_embedder_file, tmp_path, capsys):
    rc = main(["export", "--model", not_embedder_file, "--format", "saved_model", "--out", str(tmp_path / "sm")])
    _assert_one_line_error(capsys, rc, "Not an embedder", "rank 4")
    assert not (tmp_path / "sm").exists()


def test_unknown_format(embedder_file, tmp_path, capsys):
    rc = main(["export", "--model", embedder_file, "--format", "tflite", "--out", str(tmp_path / "x")])
    _assert_one_line_error(capsys, rc, "unknown format 'tflite'", "onnx, saved_model")


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--format", "saved_model", "--opset", "17"], "--opset only applies"),
        (["--format", "onnx", "--image-size", "0"], "--image-size must be a positive"),
        (["--format", "onnx", "--with-preprocessing", "--image-size", "32"], "does not match"),
    ],
)
def test_bad_flag_combinations(embedder_file, tmp_path, capsys, extra, fragment):
    rc = main(["export", "--model", embedder_file, "--out", str(tmp_path / "m.onnx"), *extra])
    _assert_one_line_error(capsys, rc, fragment)


def test_not_a_model_file(tmp_path, capsys):
    bad = tmp_path / "weights.txt"
    bad.write_text("hello")
    rc = main(["export", "--model", str(bad), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    _assert_one_line_error(capsys, rc, "not a Keras model file")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip archive")
    rc = main(["export", "--model", str(corrupt), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    _assert_one_line_error(capsys, rc, "could not load a Keras model", "corrupt.keras")


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 2
    assert "export" in capsys.readouterr().out


@pytest.mark.slow
def test_subprocess_export_of_model_trained_with_roadmap_loss(tmp_path):
    """Compile + fit with ROADMAPLoss, save .keras, export it from a fresh `python -m` process."""
    from keras_roadmap.losses import ROADMAPLoss

    keras.utils.set_random_seed(3)
    x = keras.Input((10,), name="features")
    model = keras.Model(x, keras.layers.UnitNormalization()(keras.layers.Dense(4)(x)))
    model.compile(optimizer="adam", loss=ROADMAPLoss())
    rng = np.random.default_rng(0)
    model.fit(
        rng.standard_normal((16, 10)).astype("float32"), np.repeat(np.arange(4), 4), batch_size=16, epochs=1, verbose=0
    )
    model_path = tmp_path / "trained.keras"
    model.save(model_path)
    with open(model_path, "rb") as handle:  # the loss config really is in the file
        import zipfile

        config = json.loads(zipfile.ZipFile(handle).read("config.json"))
    assert config["compile_config"]["loss"]["class_name"].endswith("ROADMAPLoss")

    out = tmp_path / "sm"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_roadmap.cli",
            "export",
            "--model",
            str(model_path),
            "--format",
            "saved_model",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        cwd=str(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "exported saved_model" in result.stdout and "max |diff| vs Keras" in result.stdout

    import tensorflow as tf

    probe = rng.standard_normal((5, 10)).astype("float32")
    served = tf.saved_model.load(str(out)).signatures["serving_default"](
        features=tf.constant(probe)
    )  # named as the Keras input
    np.testing.assert_allclose(served["embeddings"].numpy(), model.predict_on_batch(probe), atol=1e-5)

    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_roadmap.cli",
            "export",
            "--model",
            str(tmp_path / "missing.keras"),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "m.onnx"),
        ],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        cwd=str(tmp_path),
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    # Other stderr lines, if any, are TensorFlow's C++ start-up logging.
    ours = [line for line in bad.stderr.splitlines() if line.startswith("keras-roadmap")]
    assert ours == [f"keras-roadmap: error: model file not found: {tmp_path / 'missing.keras'}"]


def test_help_does_not_import_tensorflow_beyond_the_package():
    """The CLI module and `--help` add no TensorFlow imports of their own.

    (Whether `import keras_roadmap` itself loads TensorFlow is decided by the package's
    top-level __init__.)
    """
    code = (
        "import sys\n"
        "import keras_roadmap\n"
        "before = {m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')}\n"
        "import keras_roadmap.cli as cli\n"
        "try:\n"
        "    cli.main(['export', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "after = {m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')}\n"
        "print('NEW_HEAVY_MODULES=%d' % len(after - before))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_subprocess_env(), timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "--with-preprocessing" in result.stdout
    assert "NEW_HEAVY_MODULES=0" in result.stdout
