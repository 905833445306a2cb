"""The recipe flags, shared by `keras-roadmap train NAME` and `recipes/<name>.py`.

Standard library only (the CLI adds them to its parser without importing Keras); the library
owns them, so the recipes never import the CLI.
"""

from __future__ import annotations

import argparse


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the recipe flags (the same for every recipe) to `parser`."""
    add = parser.add_argument
    add(
        "--data-dir",
        help="dataset root, in the layout the keras_roadmap.data reader documents "
        "(glyphs: where the rendered images are written; default a cache folder)",
    )
    # Required unless --print-config; checked by the recipe (one error line) rather than argparse.
    add("--out", help="output directory (checkpoints, logs, metrics, ONNX); required to train")
    add("--config", help="YAML config replacing the recipe's default one (see --print-config)")
    add(
        "--print-config",
        action="store_true",
        help="print the recipe's YAML config with the other flags applied (to copy, edit and pass back "
        "with --config), then exit without training",
    )
    add("--backbone", help="backbone profile of the config (e.g. resnet50, deit_small)")
    add(
        "--weights",
        help="torchvision/timm checkpoint (.pth, .safetensors), .weights.h5 file or keras-hub preset name/dir",
    )
    add(
        "--random-init",
        action="store_true",
        help="train from random weights although the paper started from ImageNet ones",
    )
    add(
        "--loss",
        help="loss profile of the config (its `losses:` table; e.g. the suprank recipes: roadmap_pp, suprecall, "
        "supndcg, happier; recallatk: rsk)",
    )
    add("--epochs", type=int, help="total number of epochs")
    add("--batch-size", type=int, help="images per batch (a multiple of samples_per_class)")
    add(
        "--chunk-size",
        type=int,
        help="embed each batch this many images at a time (gradient caching: memory grows with the chunk, "
        "the result is the whole batch's); default the config's chunk_size, none = the whole batch",
    )
    add("--memory", help="cross-batch memory slots: an int, 0 (off) or 'official'")
    add("--eval-every", type=int, help="evaluate (and select the best model) every N epochs")
    add(
        "--precision",
        choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
        default="auto",
        help="Keras dtype policy; auto (default) = the config's mixed_precision on a GPU, float32 otherwise",
    )
    add("--seed", type=int, help="sampler/augmentation/initialisation seed")
    add(
        "--resume",
        action="store_true",
        help="require a backup in --out to continue from (a run always continues from one when present)",
    )
    add("--smoke", action="store_true", help="generate a tiny dataset in --out and run 1-2 epochs end to end")
    add(
        "--allow-config-change",
        action="store_true",
        help="continue a backup made with another configuration (e.g. a longer schedule); without it such a "
        "rerun stops and lists the differences",
    )
    add(
        "--verbose",
        choices=("auto", "0", "1", "2"),
        default="auto",
        help="progress: 1 = per-step bar with ETA, 2 = one line per epoch, 0 = none; "
        "auto (default) = 1 on a terminal, 2 otherwise",
    )


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage is one ``--help`` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def output_path_problem(path, flag: str = "--out"):
    """The one-line problem when ``path`` cannot be created because a parent is a regular file,
    else None."""
    import pathlib

    parent = pathlib.Path(path).absolute().parent
    for folder in (parent, *parent.parents):
        if folder.exists():
            return None if folder.is_dir() else f"{flag} {path}: {folder} is a file, not a directory"
    return None
