"""The recipes start from the paper's ImageNet checkpoints, or say where to get them.

A profile's ``weights: pretrained`` means the paper's checkpoint for its model
(:data:`keras_roadmap.models.convert.PRETRAINED`): it is looked up where torchvision and timm
download it (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch``; timm's
``$HF_HOME/hub``, default ``~/.cache/huggingface``) and otherwise must be given with
``--weights PATH``. A recipe whose model the paper trained from ImageNet weights refuses to run
from random weights unless ``--random-init`` says so (smoke runs are exempt: their numbers mean
nothing anyway).
"""

from __future__ import annotations

import glob
import os

from keras_roadmap.recipes.config import ConfigError

PRETRAINED_KEYWORD = "pretrained"

# File names torchvision / the DeiT release use, and timm's hub repository of the same weights.
CHECKPOINT_FILES = {
    "resnet50": ("resnet50-0676ba61.pth", None),
    "resnet50_max_ln": ("resnet50-0676ba61.pth", None),
    "deit_small": ("deit_small_patch16_224-cd65a155.pth", "timm/deit_small_patch16_224.fb_in1k"),
    "deit_small_distilled": (
        "deit_small_distilled_patch16_224-649709d9.pth",
        "timm/deit_small_distilled_patch16_224.fb_in1k",
    ),
    "deit_base": ("deit_base_patch16_224-b5f2ef4d.pth", "timm/deit_base_patch16_224.fb_in1k"),
}


def find_checkpoint(model: str, filename: str | None = None) -> str | None:
    """Path of the paper's checkpoint for embedder ``model`` (or the file ``filename``, e.g. a
    profile's ``checkpoint:``) in the torch hub or Hugging Face cache, or None when it is not
    there (or ``model`` has none)."""
    if filename is not None:
        hub_repo = None
    elif model in CHECKPOINT_FILES:
        filename, hub_repo = CHECKPOINT_FILES[model]
    else:
        return None
    torch_home = os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch"))
    candidate = os.path.join(torch_home, "hub", "checkpoints", filename)
    if os.path.isfile(candidate):
        return candidate
    if hub_repo is not None:
        hf_home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        folder = "models--" + hub_repo.replace("/", "--")
        found = sorted(glob.glob(os.path.join(hf_home, "hub", folder, "snapshots", "*", "model.safetensors")))
        if found:
            return found[-1]
    return None


def resolve_pretrained(config, *, random_init: bool = False, recipe: str = "this recipe") -> None:
    """Settle ``config.weights`` in place: a checkpoint path, another weights source, or
    ``"random"``.

    Raises:
        ConfigError: the paper trained ``config.model`` from ImageNet weights, none was given or
            found, and ``random_init`` is False (the message names the checkpoint and its file);
            or ``random_init`` together with explicit weights.
    """
    from keras_roadmap.models.convert import PRETRAINED

    weights = config.weights
    wants_pretrained = weights == PRETRAINED_KEYWORD
    if random_init:
        if weights not in (None, PRETRAINED_KEYWORD, "random"):
            raise ConfigError(f"--random-init and --weights {weights} contradict each other: give one.")
        config.weights = "random"
        return
    checkpoint = config.checkpoint
    if wants_pretrained:
        config.weights = find_checkpoint(config.model, checkpoint)
    if config.weights is None or config.weights == "random":
        if config.model not in PRETRAINED or config.smoke:
            config.weights = "random"
            return
        filename = checkpoint or CHECKPOINT_FILES[config.model][0]
        source = f"the file {checkpoint}" if checkpoint else PRETRAINED[config.model]
        raise ConfigError(
            f"{recipe} with backbone {config.backbone!r} ({config.model}) starts from ImageNet weights, "
            f"as the paper did: {source}. Pass --weights PATH/TO/{filename} (or "
            f"put the file in $TORCH_HOME/hub/checkpoints/, default ~/.cache/torch), or "
            "--random-init to train from random weights (not the paper's setting)."
        )
