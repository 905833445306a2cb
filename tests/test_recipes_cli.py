"""`keras-roadmap train`: the preflight stops before training with the install line, progress
modes, and the glyph recipe end to end (same recipe system) with a served search."""

import os
import pathlib
import subprocess
import sys

import pytest

from keras_roadmap.recipes import preflight
from keras_roadmap.recipes.run import resolve_verbose, with_progress

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_blocked(tmp_path, blocked, *command):
    """Run `command` with the modules `blocked` made unimportable (a sitecustomize shim)."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    )
    env = dict(os.environ, PYTHONPATH=f"{shim}{os.pathsep}{REPO}")
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize(
    "blocked, named", [(["matplotlib"], "matplotlib"), (["tensorboard", "tf2onnx"], "tf2onnx, tensorboard")]
)
def test_missing_extra_stops_before_training_with_the_install_line(tmp_path, blocked, named):
    out = tmp_path / "run"
    result = _run_blocked(tmp_path, blocked, "-m", "keras_roadmap.cli", "train", "cub", "--smoke", "--out", str(out))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines == [
        f"keras-roadmap train cub: error: `keras-roadmap train cub` needs {named}, not installed: "
        'pip install "keras-roadmap[recipes]"'
    ], result.stderr
    assert "Epoch" not in result.stdout and not (out / "history.csv").exists() and not (out / "smoke_data").exists()


def test_recipe_script_wrapper_runs_the_same_preflight(tmp_path):
    result = _run_blocked(tmp_path, ["yaml"], str(REPO / "recipes" / "sop.py"), "--smoke", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "needs pyyaml" in result.stderr and "keras-roadmap[recipes]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_preflight_asks_for_keras_hub_only_when_the_backbone_needs_it():
    class Config:
        model, model_kwargs = "tiny_cnn", {}

    assert not preflight.needs_keras_hub(Config)
    Config.model = "resnet50"
    assert preflight.needs_keras_hub(Config)
    Config.model_kwargs = {"variant": "keras_applications"}
    assert not preflight.needs_keras_hub(Config)
    assert preflight.importable("numpy") and not preflight.importable("no_such_module_xyz")


def test_verbose_auto_follows_the_terminal(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert resolve_verbose("auto") == 1
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert resolve_verbose("auto") == 2 and resolve_verbose("0") == 0 and resolve_verbose("1") == 1


def test_long_evaluation_reports_progress(capsys):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_roadmap.evaluation import embed

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    data = tf.data.Dataset.from_tensor_slices((np.ones((10, 3), "float32"), np.zeros(10, "int64"))).batch(4)
    out, _ = embed(model, with_progress(data, total=3, name="gallery", verbose=2))
    printed = capsys.readouterr().out
    assert (
        out.shape == (10, 2) and "Embedding gallery (3 batches)" in printed and "Embedded gallery: 10 images" in printed
    )
    embed(model, with_progress(data, total=3, name="gallery", verbose=1))
    assert "3/3" in capsys.readouterr().out  # keras' progress bar
