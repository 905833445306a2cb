"""Shared test helpers: the location of the official-code fixtures and quiet TensorFlow."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def fixtures_dir() -> pathlib.Path:
    """`tests/data/official` in the checkout (or $KERAS_ROADMAP_FIXTURES)."""
    env = os.environ.get("KERAS_ROADMAP_FIXTURES")
    path = pathlib.Path(env) if env else REPO / "tests" / "data" / "official"
    if not path.is_dir():
        raise FileNotFoundError(
            f"Reference fixtures not found at {path}. Set KERAS_ROADMAP_FIXTURES to the folder "
            "holding loss_*.npz and metrics_*.npz (the official-code outputs)."
        )
    return path


def load_fixture(name: str) -> dict:
    with np.load(fixtures_dir() / name) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def fixture_loader():
    return load_fixture


def tfsim_toy_data(seed=0):
    """200 float32 vectors of 16 dims around 20 class centres (10 each) and their int labels:
    the small clustered set of the tensorflow-similarity tests."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 16))
    y = np.repeat(np.arange(20), 10)
    x = (centres[y] + 0.8 * rng.normal(size=(200, 16))).astype("float32")
    return x, y


@pytest.fixture(scope="session")
def onnx_embedder(tmp_path_factory):
    """A tiny conv embedder (16-d, crop 32) exported to ONNX with its preprocessing, once per session
    (tests/serving_fixtures.py)."""
    from serving_fixtures import export_embedder

    return export_embedder(tmp_path_factory.mktemp("embedder") / "embedder.onnx")
