"""RS@k, the Recall@k surrogate loss (Patel et al., CVPR 2022), on Stanford Online Products with the official
settings (keras_roadmap/recipes/configs/recallatk_sop.yaml): batches of 4,000 embedded 200 images
at a time, ResNet-50 + GeM + LayerNorm.

    python recipes/recallatk_sop.py --data-dir PATH --out runs/recallatk_sop [--chunk-size N]
        [--smoke] [--verbose 1]

The same as `keras-roadmap train recallatk_sop ...`; run with --help for the flags.
"""

import sys

from _entry import train

if __name__ == "__main__":
    sys.exit(train("recallatk_sop"))
