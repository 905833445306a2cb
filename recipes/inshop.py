"""ROADMAP on In-Shop Clothes Retrieval with the paper's settings (keras_roadmap/recipes/configs/inshop.yaml).

    python recipes/inshop.py --data-dir PATH --out runs/inshop [--backbone ...] [--smoke] [--verbose 1]

The same as `keras-roadmap train inshop ...`; run with --help for the flags.
"""

import sys

from _entry import train

if __name__ == "__main__":
    sys.exit(train("inshop"))
