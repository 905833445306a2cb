"""ROADMAP on Stanford Online Products with the paper's settings (keras_roadmap/recipes/configs/sop.yaml).

    python recipes/sop.py --data-dir PATH --out runs/sop [--backbone ...] [--smoke] [--verbose 1]

The same as `keras-roadmap train sop ...`; run with --help for the flags.
"""

import sys

from _entry import train

if __name__ == "__main__":
    sys.exit(train("sop"))
