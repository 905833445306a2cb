"""The recipes `keras-roadmap train NAME` knows, and where their YAML configs live.

Standard library only: the CLI builds its parser (``--help``, ``keras-roadmap recipes``) from
this table without importing Keras or TensorFlow. The configs are package data
(``keras_roadmap/recipes/configs/NAME.yaml``), so an installed wheel runs a recipe without the
source tree.
"""

from __future__ import annotations

import pathlib

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"

# Recipe name -> one line for `keras-roadmap recipes`. Every name has CONFIG_DIR/NAME.yaml.
RECIPES = {
    "sop": "Stanford Online Products, the paper setting (ResNet-50 or DeiT, hierarchical sampler)",
    "cub": "CUB-200-2011 birds, the paper setting (ResNet-50 max+LayerNorm or DeiT)",
    "inaturalist": "iNaturalist-2018 retrieval split, the paper setting (ResNet-50, the iNat loss preset)",
    "inshop": "In-Shop Clothes Retrieval, query/gallery evaluation (ResNet-50)",
    "glyphs": "characters rendered from bundled fonts, unseen-class retrieval on a CPU (no download)",
    "suprank_sop": "SOP, the SupRank / HAPPIER setting: --loss roadmap_pp (default), suprecall, supndcg, happier",
    "suprank_inaturalist": "iNaturalist-2018, the SupRank / HAPPIER setting: --loss roadmap_pp, suprecall, supndcg, "
    "happier",
    "recallatk_sop": "SOP, the RS@k setting (Recall@k surrogate, batch 4,000 embedded 200 at a time, GeM)",
    "recallatk_inaturalist": "iNaturalist-2018, the RS@k setting (Recall@k surrogate, batch 4,000, GeM)",
}
# A recipe trains on the dataset of its name unless listed here.
DATASET_OF = {
    "suprank_sop": "sop",
    "suprank_inaturalist": "inaturalist",
    "recallatk_sop": "sop",
    "recallatk_inaturalist": "inaturalist",
}


def dataset_of(name: str) -> str:
    """The dataset (reader, smoke tree, config `dataset:`) recipe `name` trains on."""
    return DATASET_OF.get(name, name)


def recipe_names() -> tuple:
    """The recipe names, in the order of `RECIPES`."""
    return tuple(RECIPES)


def config_path(name: str) -> pathlib.Path:
    """The default YAML config of recipe `name` (inside the installed package)."""
    return CONFIG_DIR / f"{name}.yaml"


def listing() -> str:
    """What `keras-roadmap recipes` prints: one line per recipe, then how to see its settings."""
    width = max(map(len, RECIPES))
    lines = [f"  {name:<{width}}  {text}" for name, text in RECIPES.items()]
    return "\n".join(
        [
            "Recipes (keras-roadmap train NAME):",
            *lines,
            "",
            "keras-roadmap train NAME --print-config prints a recipe's YAML config (copy it, edit it, "
            "pass it back with --config FILE); keras-roadmap train NAME --smoke --out DIR runs it "
            "end to end on a generated tiny dataset.",
        ]
    )
