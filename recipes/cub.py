"""ROADMAP on CUB-200-2011 with the paper's settings (recipes/configs/cub.yaml).

    python recipes/cub.py --data-dir PATH --out runs/cub [--backbone ...] [--smoke]

All the logic lives in keras_roadmap.recipes; run with --help for the flags.
"""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

from keras_roadmap.recipes import main  # noqa: E402

CONFIG = pathlib.Path(__file__).resolve().parent / "configs" / "cub.yaml"

if __name__ == "__main__":
    sys.exit(main("cub", sys.argv[1:], CONFIG))
