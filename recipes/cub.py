"""ROADMAP on CUB-200-2011 with the paper's settings (keras_roadmap/recipes/configs/cub.yaml).

    python recipes/cub.py --data-dir PATH --out runs/cub [--backbone ...] [--smoke] [--verbose 1]

The same as `keras-roadmap train cub ...`; run with --help for the flags.
"""

import sys

from _entry import train

if __name__ == "__main__":
    sys.exit(train("cub"))
