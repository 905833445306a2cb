"""The rank-loss family (SupRank / HAPPIER) on iNaturalist-2018 with the official settings
(keras_roadmap/recipes/configs/suprank_inaturalist.yaml).

    python recipes/suprank_inaturalist.py --data-dir PATH --out runs/suprank_inaturalist
        [--loss roadmap_pp|suprecall|supndcg|happier]
        [--smoke] [--verbose 1]

The same as `keras-roadmap train suprank_inaturalist ...`; run with --help for the flags.
"""

import sys

from _entry import train

if __name__ == "__main__":
    sys.exit(train("suprank_inaturalist"))
