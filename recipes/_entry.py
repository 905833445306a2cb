"""The one body of every `recipes/<name>.py` script: `keras-roadmap train <name> ARGS`."""

import pathlib
import sys

# Run from a source tree without installing: the package is next to this folder.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def train(name: str, argv=None) -> int:
    from keras_roadmap.cli import main

    return main(["train", name, *(sys.argv[1:] if argv is None else argv)])
