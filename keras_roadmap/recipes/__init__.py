"""Training recipes: the paper's ROADMAP runs on SOP, CUB-200-2011, iNaturalist-2018, In-Shop.

One entry point, `keras-roadmap train NAME` (NAME: sop, cub, inaturalist, inshop, glyphs;
`keras-roadmap recipes` lists them), with the YAML config `configs/<NAME>.yaml` of this package
(`keras-roadmap train NAME --print-config` prints it); the scripts `recipes/<NAME>.py` of the
source tree are thin wrappers of it. Everything else lives here:

* `catalog`     the recipe names, their one-line descriptions and config files
* `arguments`   the recipe flags (shared by the CLI and the scripts)
* `config`      YAML + backbone profile + flags -> `RecipeConfig`
* `assembly`    config -> splits, sampler, embedder, loss, optimiser, trainer
* `checkpoints` best-embedder selection on val_map@r, resume point of BackupAndRestore
* `smoke_data`  tiny generated datasets in each real on-disk layout (`--smoke`)
* `preflight`   every package the run needs, checked before it starts
* `run`         train -> test table -> retrieval grid -> ONNX export, `--print-config`

Example:
    keras-roadmap train cub --data-dir /data/cub --out runs/cub       # paper setting
    keras-roadmap train cub --smoke --out /tmp/cub_smoke              # 1-2 epochs, tiny data

Importing this package imports neither Keras nor TensorFlow (the CLI reads `catalog` and
`arguments` to build its parser); `main` loads the training modules on first access. The
submodule `run` holds `run.run(config, data_dir, out)`, which does the work of one run.
"""

from keras_roadmap.recipes.config import ConfigError, RecipeConfig, load_yaml, resolve_config

__all__ = ["ConfigError", "RecipeConfig", "load_yaml", "main", "resolve_config"]


def __getattr__(name):
    if name == "main":
        from keras_roadmap.recipes.run import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
