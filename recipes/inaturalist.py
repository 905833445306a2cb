"""ROADMAP on iNaturalist-2018 with the paper's settings (keras_roadmap/recipes/configs/inaturalist.yaml).

    python recipes/inaturalist.py --data-dir PATH --out runs/inaturalist [--backbone ...] [--smoke] [--verbose 1]

The same as `keras-roadmap train inaturalist ...`; run with --help for the flags.
"""

import sys

from _entry import train

if __name__ == "__main__":
    sys.exit(train("inaturalist"))
