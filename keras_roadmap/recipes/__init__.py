"""Training recipes: the paper's ROADMAP runs on SOP, CUB-200-2011, iNaturalist-2018, In-Shop.

The per-dataset scripts in `recipes/` are thin: they call `main(dataset, argv, config_path)`
with their YAML config (`recipes/configs/<dataset>.yaml`). Everything else lives here:

* `config`      YAML + backbone profile + flags -> `RecipeConfig`
* `assembly`    config -> splits, sampler, embedder, loss, optimiser, trainer
* `checkpoints` best-embedder selection on val_map@r, resume point of BackupAndRestore
* `smoke_data`  tiny generated datasets in each real on-disk layout (`--smoke`)
* `run`         train -> test table -> retrieval grid -> ONNX export, and the CLI

Example:
    python recipes/cub.py --data-dir /data/cub --out runs/cub         # paper setting
    python recipes/cub.py --smoke --out /tmp/cub_smoke                # 1-2 epochs, tiny data
"""

from keras_roadmap.recipes.config import ConfigError, RecipeConfig, load_yaml, resolve_config
from keras_roadmap.recipes.run import main, run

__all__ = ["ConfigError", "RecipeConfig", "load_yaml", "main", "resolve_config", "run"]
