"""Config -> the objects of a run: dataset splits, sampler, embedder, loss, optimiser, trainer.

Each function does one translation and nothing else, so a test can build exactly what a
recipe trains (model, optimiser, loss) without data on disk.
"""

from __future__ import annotations

import dataclasses

from keras_roadmap.recipes.config import ConfigError, RecipeConfig

# The loss section's names and constructor (re-exported: `assembly.build_loss` builds a run's loss).
from keras_roadmap.recipes.loss_config import (  # noqa: F401
    GRADED_LOSSES,
    HIERARCHICAL_LOSSES,
    LOSS_NAMES,
    PROXY_LOSSES,
    PROXY_SETTINGS,
    build_loss,
    hierarchical_labels,
    loss_class,
)


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
    """The config's sampler over `split` (`MPerClassSampler`, `HierarchicalSampler` or
    `NoReplacementSampler`).

    Raises:
        ConfigError: the sampler settings do not fit the split (e.g. more classes per batch
            than the split has), with the sampler's own explanation.
    """
    try:
        return _sampler(config, split)
    except ValueError as err:
        raise ConfigError(f"sampler settings {config.sampler} do not fit {split.name}: {err}") from err


def _sampler(config: RecipeConfig, split):
    from keras_roadmap.samplers import HierarchicalSampler, MPerClassSampler, NoReplacementSampler

    s = config.sampler
    if s["name"] == "no_replacement":
        return NoReplacementSampler(
            split.labels, batch_size=s["batch_size"], samples_per_class=s["samples_per_class"], seed=config.seed
        )
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


def build_recipe_optimizer(config: RecipeConfig, steps_per_epoch: int, loss=None):
    """`keras_roadmap.optim.build_optimizer` with the profile's settings (PyTorch semantics:
    Adam = coupled decay, AdamW = decoupled; MultiStep or cosine decay counted in epochs; the
    SupRank warm-up). A `loss` with proxies gives them their own group: the loss section's
    `proxy_lr` annealed (cosine over the run's epochs) to `proxy_eta_min`, no weight decay."""
    from keras_roadmap.optim import CosineAnnealingDecay, build_optimizer

    o = config.optimizer
    cosine = o.get("schedule") == "cosine"
    warmup = int(o.get("warmup_epochs") or 0)
    kwargs = {}
    proxies = getattr(loss, "proxies", None)
    if proxies is not None:
        settings = {**PROXY_SETTINGS, **{k: config.loss[k] for k in PROXY_SETTINGS if k in config.loss}}
        kwargs["group_learning_rates"] = {
            proxies.name: CosineAnnealingDecay(
                settings["proxy_lr"],
                config.epochs,
                int(steps_per_epoch),
                eta_min=settings["proxy_eta_min"],
                delay_epochs=warmup,
            )
        }
    optimizer = build_optimizer(
        o["backbone_lr"],
        o["head_lr"],
        optimizer=o["name"],
        weight_decay=o["weight_decay"],
        milestones=[] if cosine else o["milestones"],
        gamma=o["gamma"],
        cosine_epochs=config.epochs if cosine else None,
        eta_min=float(o.get("eta_min") or 0.0),
        warmup_epochs=warmup,
        steps_per_epoch=int(steps_per_epoch) if (o["milestones"] or cosine or warmup or proxies is not None) else None,
        **kwargs,
    )
    if proxies is not None:
        # torch.optim.Adam(lr=10.0, weight_decay=0.0) for the proxies: no decay in either style.
        optimizer.exclude_from_weight_decay(var_list=[proxies.proxies])
    return optimizer


def build_memory(config: RecipeConfig):
    """A `CrossBatchMemory` when `memory.size > 0`, else None."""
    from keras_roadmap.memory import CrossBatchMemory

    m = config.memory
    if not m["size"]:
        return None
    return CrossBatchMemory(m["size"], unique=m["unique"], weight=m["weight"], activate_after=m["activate_after"])


def build_trainer(
    config: RecipeConfig, encoder, steps_per_epoch: int, *, jit_compile: bool = True, num_classes: int | None = None
):
    """A compiled `RetrievalTrainer` around `encoder` (with the config's memory, loss, optimiser);
    `num_classes` (training classes) for a loss with proxies."""
    from keras_roadmap.trainer import RetrievalTrainer

    loss = build_loss(config, num_classes=num_classes, embedding_dim=encoder.output_shape[-1])
    model = encoder
    if getattr(loss, "proxies", None) is not None:
        import keras

        # An identity layer that owns the proxies: they become trained (and saved) weights.
        model = keras.Sequential([encoder, loss.proxies], name=f"{encoder.name}_with_proxies")
    trainer = RetrievalTrainer(model, memory=build_memory(config), chunk_size=config.chunk_size)
    trainer.compile(
        optimizer=build_recipe_optimizer(config, steps_per_epoch, loss),
        loss=loss,
        jit_compile=jit_compile,
    )
    return trainer
