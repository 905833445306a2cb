"""The code blocks of the docs/ guides, run as written on small stand-ins of the user's variables.

Each test reads its blocks with ``docs_blocks.code_for(page, test name)`` (the page marks them
``<!-- test: tests/test_docs_examples.py::NAME -->``) and executes them in a namespace that
holds only what the block leaves to the user (``labels``, ``encoder``, ``model``...).
"""

import contextlib
import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tfsim_toy_data
from docs_blocks import code_for


def run(page, test_name, namespace):
    for code in code_for(page, test_name):
        exec(compile(code, page, "exec"), namespace)
    return namespace


def clustered(num_classes=8, per_class=4, dim=16, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    x = rng.normal(size=(num_classes, dim))[labels] + noise * rng.normal(size=(len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32"), labels


def small_embedder(dim=16, out=8):
    return keras.Sequential([keras.Input((dim,)), keras.layers.Dense(out), keras.layers.UnitNormalization()])


@pytest.fixture
def in_tmp(tmp_path):
    before = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(before)


def test_loss_functional_forms():
    embeddings, labels = clustered()
    ns = run(
        "docs/loss.md",
        "test_loss_functional_forms",
        {
            "labels": labels,
            "embeddings": embeddings,
            "memory_labels": labels[::2],
            "memory_embeddings": embeddings[::2],
        },
    )
    from keras_roadmap.losses import SupAPLoss

    expected = SupAPLoss().call_with_reference(labels, embeddings, labels[::2], embeddings[::2])
    np.testing.assert_allclose(float(ns["value"]), float(expected), rtol=1e-5)


@pytest.mark.slow  # end to end: fit, save and reload / export / a JAX process
def test_evaluation_metrics_and_callback(in_tmp):
    embeddings, labels = clustered(num_classes=10, per_class=12)
    keras.utils.set_random_seed(0)
    model = small_embedder()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=__import__("keras_roadmap").ROADMAPLoss())
    train_ds = tf.data.Dataset.from_tensor_slices((embeddings, labels)).batch(120)
    val_ds = tf.data.Dataset.from_tensor_slices((embeddings, labels)).batch(60)
    ns = run(
        "docs/evaluation.md",
        "test_evaluation_metrics_and_callback",
        {
            "keras": keras,
            "model": model,
            "train_ds": train_ds,
            "val_ds": val_ds,
            "embeddings": embeddings,
            "labels": labels,
            "gallery": embeddings[::2],
            "gallery_labels": labels[::2],
            "queries": embeddings[1::2],
            "query_labels": labels[1::2],
        },
    )
    assert ns["metrics"]["recall@1"] > 0.5 and "recall@50" in ns["metrics"]
    assert (in_tmp / "best.keras").is_file()  # the callback's val_map@r reached ModelCheckpoint


@pytest.mark.slow  # end to end: fit, save and reload / export / a JAX process
def test_tensorflow_similarity_flows(in_tmp):
    from keras_roadmap import RetrievalTrainer, ROADMAPLoss

    x, y = tfsim_toy_data()
    keras.utils.set_random_seed(0)
    ns = run(
        "docs/evaluation.md",
        "test_tensorflow_similarity_flows",
        {
            "keras": keras,
            "ROADMAPLoss": ROADMAPLoss,
            "RetrievalTrainer": RetrievalTrainer,
            "x": x,
            "y": y,
            "x_gallery": x[::2],
            "y_gallery": y[::2],
            "x_query": x[1::2],
            "y_query": y[1::2],
            "encoder": small_embedder(),
        },
    )
    assert (in_tmp / "sim_model").is_dir()
    assert (
        type(ns["model"].loss).__name__ == "TFSimilarityLoss"
        and type(ns["trainer"].loss).__name__ == "TFSimilarityLoss"
    )


def test_approximate_index(in_tmp):
    from keras_roadmap import retrieval_metrics

    gallery, labels = clustered(num_classes=20, per_class=10, dim=8)
    ns = run(
        "docs/evaluation.md",
        "test_approximate_index",
        {
            "gallery": gallery,
            "labels": labels,
            "retrieval_metrics": retrieval_metrics,
        },
    )
    assert (in_tmp / "gallery.faiss").is_file() and (in_tmp / "gallery.faiss.json").is_file()
    assert ns["load_index"]("gallery.faiss").ntotal == len(gallery)


def test_transforms():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(300, 260, 3), dtype=np.uint8)
    ns = run(
        "docs/data.md",
        "test_transforms",
        {
            "tf": tf,
            "image_uint8_hw3": image,
            "image": image,
            "top": 10,
            "left": 20,
            "h": 200,
            "w": 180,
        },
    )
    assert tuple(ns["x"].shape) == (224, 224, 3)


def test_models_and_optimisers():
    ns = run("docs/models.md", "test_models_and_optimisers", {"steps": 10})
    assert ns["model"].output_shape == (None, 512)
    assert type(ns["model"].optimizer).__name__ == "TorchAdam"


def test_mirrored_strategy_and_gradient_caching():
    from keras_roadmap import CrossBatchMemory, RetrievalTrainer, ROADMAPLoss, build_embedder

    ns = run(
        "docs/backends.md",
        "test_mirrored_strategy_and_gradient_caching",
        {
            "tf": tf,
            "build_embedder": build_embedder,
            "RetrievalTrainer": RetrievalTrainer,
            "CrossBatchMemory": CrossBatchMemory,
            "ROADMAPLoss": ROADMAPLoss,
            "train_split": range(64),
        },
    )
    assert ns["trainer"].chunk_size == 64


@pytest.mark.slow  # end to end: fit, save and reload / export / a JAX process
def test_export_to_onnx(in_tmp):
    model = keras.Sequential(
        [
            keras.Input((224, 224, 3)),
            keras.layers.AveragePooling2D(28),
            keras.layers.Flatten(),
            keras.layers.Dense(8),
        ]
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run("docs/export.md", "test_export_to_onnx", {"model": model})
    assert (in_tmp / "sop.onnx").is_file() and "embeddings" in printed.getvalue()


@pytest.mark.slow  # end to end: fit, save and reload / export / a JAX process
def test_jax_data_parallel(tmp_path):
    import json
    import subprocess

    import backend_venvs

    python = backend_venvs.ensure("jax")
    (tmp_path / "block.py").write_text("".join(code_for("docs/backends.md", "test_jax_data_parallel")))
    script = (
        "import json, keras, numpy as np\n"
        "from keras_roadmap import ROADMAPLoss\n"
        "def build_model():\n"
        "    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.UnitNormalization()])\n"
        "exec(open('block.py').read())\n"
        "x = np.random.default_rng(0).normal(size=(8, 8)).astype('float32'); y = np.repeat(np.arange(2), 4)\n"
        "loss = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history['loss'][0]\n"
        "mesh = keras.distribution.distribution().device_mesh\n"
        "kind = type(keras.distribution.distribution()).__name__\n"
        "print(json.dumps({'kind': kind, 'devices': int(np.size(mesh.devices)), 'loss': loss}))\n"
    )
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "PYTHONPATH": backend_venvs.ROOT,
    }
    proc = subprocess.run(
        [str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["kind"] == "DataParallel" and result["devices"] == 2 and np.isfinite(result["loss"])
