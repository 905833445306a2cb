"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = [
    "keras_roadmap.losses.ap_losses",
    "keras_roadmap.losses.calibration",
    "keras_roadmap.losses.roadmap",
    "keras_roadmap.losses.hierarchical",
    "keras_roadmap.data.glyphs",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
