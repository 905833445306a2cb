"""Check, before a recipe run starts, that every package it will need is importable.

A run without the ``[recipes]`` extra used to stop on the first missing package, one traceback
at a time, the last one (matplotlib) after training. :func:`missing_packages` lists them all at
start, without importing them (``importlib.util.find_spec``), and :func:`message` is the one line
that says what to install.
"""

from __future__ import annotations

import importlib.util
import sys

INSTALL_LINE = 'pip install "keras-roadmap[recipes]"'
# Import name -> distribution name, for what every recipe run uses:
# configs (yaml), images and the grid (PIL), plots (matplotlib), the ONNX export and its check,
# the TensorBoard logs.
ALWAYS = {
    "yaml": "pyyaml",
    "PIL": "Pillow",
    "matplotlib": "matplotlib",
    "onnx": "onnx",
    "tf2onnx": "tf2onnx",
    "onnxruntime": "onnxruntime",
    "tensorboard": "tensorboard",
}
HUB = {"keras_hub": "keras-hub"}
# Embedders built without keras-hub (everything else in the registry loads a keras-hub backbone).
NO_HUB_MODELS = ("tiny_cnn",)


def importable(name: str) -> bool:
    """Whether ``import name`` would find the module (a ``sys.modules[name] = None`` block counts as absent)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def needs_keras_hub(config) -> bool:
    """Whether the embedder of ``config`` (a ``RecipeConfig``) is built from a keras-hub backbone."""
    if config.model in NO_HUB_MODELS:
        return False
    return config.model_kwargs.get("variant") != "keras_applications"


def missing_packages(recipe: str, config=None) -> list:
    """Distribution names the run of ``recipe`` needs and cannot import, in a stable order.

    Args:
        config: the resolved ``RecipeConfig`` when already known (decides keras-hub); None
            checks keras-hub only for recipes whose default backbone needs it.
    """
    wanted = dict(ALWAYS)
    if config is not None:
        if needs_keras_hub(config):
            wanted.update(HUB)
    elif recipe != "glyphs":
        wanted.update(HUB)
    return [dist for name, dist in wanted.items() if not importable(name)]


def message(missing, recipe: str = "") -> str:
    """One line: what is missing and the install line."""
    what = f"`keras-roadmap train {recipe}`" if recipe else "this recipe run"
    return f"{what} needs {', '.join(missing)}, not installed: {INSTALL_LINE}"
