"""ROADMAP on iNaturalist-2018 with the paper's settings (recipes/configs/inaturalist.yaml).

    python recipes/inaturalist.py --data-dir PATH --out runs/inaturalist [--backbone ...] [--smoke]

All the logic lives in keras_roadmap.recipes; run with --help for the flags.
"""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

from keras_roadmap.recipes import main  # noqa: E402

CONFIG = pathlib.Path(__file__).resolve().parent / "configs" / "inaturalist.yaml"

if __name__ == "__main__":
    sys.exit(main("inaturalist", sys.argv[1:], CONFIG))
