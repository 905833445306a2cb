"""The rank-loss family (SupRank / HAPPIER) on Stanford Online Products with the official settings
(keras_roadmap/recipes/configs/suprank_sop.yaml).

    python recipes/suprank_sop.py --data-dir PATH --out runs/suprank_sop [--loss roadmap_pp|suprecall|supndcg|happier]
        [--smoke] [--verbose 1]

The same as `keras-roadmap train suprank_sop ...`; run with --help for the flags.
"""

import sys

from _entry import train

if __name__ == "__main__":
    sys.exit(train("suprank_sop"))
