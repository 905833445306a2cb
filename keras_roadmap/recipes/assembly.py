"""Config -> the objects of a run: dataset splits, sampler, embedder, loss, optimiser, trainer.

Each function does one translation and nothing else, so a test can build exactly what a
recipe trains (model, optimiser, loss) without data on disk.
"""

from __future__ import annotations

import dataclasses

from keras_roadmap.recipes.config import ConfigError, RecipeConfig


@dataclasses.dataclass
class Splits:
    """The splits a recipe uses: `train`, and either `gallery` alone (same-source evaluation:
    every image queries all the others; SOP, CUB, iNaturalist) or `query` + `gallery` (In-Shop)."""

    train: object
    gallery: object
    query: object = None


def load_splits(dataset: str, root) -> Splits:
    """Read the dataset's splits with the `keras_roadmap.data` readers (which check the files)."""
    from keras_roadmap import data

    if dataset == "inshop":
        return Splits(
            train=data.load_inshop(root, "train"),
            gallery=data.load_inshop(root, "gallery"),
            query=data.load_inshop(root, "query"),
        )
    if dataset == "custom":
        # `root` is the run's split CSV (written by `keras-roadmap train custom`).
        custom = data.load_custom(root)
        return Splits(train=custom.train, gallery=custom.gallery, query=custom.query)
    if dataset == "glyphs":
        from keras_roadmap.data.glyph_tree import load_glyphs

        return Splits(train=load_glyphs(root, "train"), gallery=load_glyphs(root, "test"))
    loader = {"sop": data.load_sop, "cub": data.load_cub, "inaturalist": data.load_inaturalist}[dataset]
    return Splits(train=loader(root, "train"), gallery=loader(root, "test"))


def build_sampler(config: RecipeConfig, split):
    """The config's sampler over `split` (`MPerClassSampler` or `HierarchicalSampler`).

    Raises:
        ConfigError: the sampler settings do not fit the split (e.g. more classes per batch
            than the split has), with the sampler's own explanation.
    """
    try:
        return _sampler(config, split)
    except ValueError as err:
        raise ConfigError(f"sampler settings {config.sampler} do not fit {split.name}: {err}") from err


def _sampler(config: RecipeConfig, split):
    from keras_roadmap.samplers import HierarchicalSampler, MPerClassSampler

    s = config.sampler
    if s["name"] == "hierarchical":
        if split.super_labels is None:
            raise ValueError(
                f"{split.name} has no super-categories, so the hierarchical sampler cannot be used; "
                "set sampler.name: m_per_class in the config."
            )
        return HierarchicalSampler(
            split.labels,
            split.super_labels,
            batch_size=s["batch_size"],
            samples_per_class=s["samples_per_class"],
            batches_per_super_pair=s["batches_per_super_pair"],
            seed=config.seed,
        )
    sampler = MPerClassSampler(
        split.labels, batch_size=s["batch_size"], samples_per_class=s["samples_per_class"], seed=config.seed
    )
    if s.get("steps_per_epoch"):
        from keras_roadmap.samplers import FixedStepsSampler

        return FixedStepsSampler(sampler, s["steps_per_epoch"])
    return sampler


def build_encoder(config: RecipeConfig, *, weights="config"):
    """The embedder: images (B, S, S, 3) ImageNet-normalised -> (B, D) float32, L2-normalised.

    `weights="config"` uses `config.weights`; pass None (or "random") to build with random
    initialisation (e.g. a float32 copy into which trained weights are loaded).
    """
    from keras_roadmap.models import build_embedder

    return build_embedder(
        config.model,
        embedding_dim=config.embedding_dim,
        weights=config.weights if weights == "config" else (weights or "random"),
        input_shape=(config.image_size, config.image_size, 3),
        freeze_batchnorm=config.freeze_batchnorm,
        **config.model_kwargs,
    )


#: `loss.name` values (default "roadmap"): every training loss the package ships.
LOSS_NAMES = ("roadmap", "supap", "smoothap", "calibration")


def build_loss(config: RecipeConfig):
    """The config's loss: `loss.name` (default "roadmap": `ROADMAPLoss.from_preset(loss.preset)`,
    "default": SOP/CUB/In-Shop, "inaturalist"; "supap" the same preset; "smoothap";
    "calibration"), with any extra keywords."""
    from keras_roadmap import losses

    kwargs = {k: v for k, v in config.loss.items() if k not in ("preset", "name")}
    name = config.loss.get("name", "roadmap")
    if name == "roadmap":
        return losses.ROADMAPLoss.from_preset(config.loss["preset"], **kwargs)
    if name == "supap":
        return losses.SupAPLoss.from_preset(config.loss["preset"], **kwargs)
    if name == "smoothap":
        return losses.SmoothAPLoss(**kwargs)
    if name == "calibration":
        return losses.CalibrationLoss(**kwargs)
    raise ConfigError(f"loss.name must be one of {LOSS_NAMES}, got {name!r}.")


def build_recipe_optimizer(config: RecipeConfig, steps_per_epoch: int):
    """`keras_roadmap.optim.build_optimizer` with the profile's settings (PyTorch semantics:
    Adam = coupled decay, AdamW = decoupled; MultiStep decay counted in epochs)."""
    from keras_roadmap.optim import build_optimizer

    o = config.optimizer
    return build_optimizer(
        o["backbone_lr"],
        o["head_lr"],
        optimizer=o["name"],
        weight_decay=o["weight_decay"],
        milestones=o["milestones"],
        gamma=o["gamma"],
        steps_per_epoch=int(steps_per_epoch) if o["milestones"] else None,
    )


def build_memory(config: RecipeConfig):
    """A `CrossBatchMemory` when `memory.size > 0`, else None."""
    from keras_roadmap.memory import CrossBatchMemory

    m = config.memory
    if not m["size"]:
        return None
    return CrossBatchMemory(m["size"], unique=m["unique"], weight=m["weight"], activate_after=m["activate_after"])


def build_trainer(config: RecipeConfig, encoder, steps_per_epoch: int, *, jit_compile: bool = True):
    """A compiled `RetrievalTrainer` around `encoder` (with the config's memory, loss, optimiser)."""
    from keras_roadmap.trainer import RetrievalTrainer

    trainer = RetrievalTrainer(encoder, memory=build_memory(config))
    trainer.compile(
        optimizer=build_recipe_optimizer(config, steps_per_epoch),
        loss=build_loss(config),
        jit_compile=jit_compile,
    )
    return trainer
