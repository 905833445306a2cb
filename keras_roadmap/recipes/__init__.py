"""Training recipes: the paper's ROADMAP runs on SOP, CUB-200-2011, iNaturalist-2018, In-Shop.

One entry point, `keras-roadmap train NAME` (NAME: sop, cub, inaturalist, inshop, glyphs), with
the YAML config `recipes/configs/<NAME>.yaml`; the scripts `recipes/<NAME>.py` are thin wrappers
of it. Everything else lives here:

* `config`      YAML + backbone profile + flags -> `RecipeConfig`
* `assembly`    config -> splits, sampler, embedder, loss, optimiser, trainer
* `checkpoints` best-embedder selection on val_map@r, resume point of BackupAndRestore
* `smoke_data`  tiny generated datasets in each real on-disk layout (`--smoke`)
* `preflight`   every package the run needs, checked before it starts
* `run`         train -> test table -> retrieval grid -> ONNX export, and the CLI

Example:
    keras-roadmap train cub --data-dir /data/cub --out runs/cub       # paper setting
    keras-roadmap train cub --smoke --out /tmp/cub_smoke              # 1-2 epochs, tiny data
"""

from keras_roadmap.recipes.config import ConfigError, RecipeConfig, load_yaml, resolve_config
from keras_roadmap.recipes.run import main, run

__all__ = ["ConfigError", "RecipeConfig", "load_yaml", "main", "resolve_config", "run"]
