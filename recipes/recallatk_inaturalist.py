"""RS@k, the Recall@k surrogate loss (Patel et al., CVPR 2022), on iNaturalist-2018 with the
official settings (keras_roadmap/recipes/configs/recallatk_inaturalist.yaml): batches of 4,000
embedded 200 images at a time, ResNet-50 + GeM + LayerNorm.

    python recipes/recallatk_inaturalist.py --data-dir PATH --out runs/recallatk_inaturalist [--chunk-size N]
        [--smoke] [--verbose 1]

The same as `keras-roadmap train recallatk_inaturalist ...`; run with --help for the flags.
"""

import sys

from _entry import train

if __name__ == "__main__":
    sys.exit(train("recallatk_inaturalist"))
