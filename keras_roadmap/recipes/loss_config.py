"""A recipe config's loss section -> the loss: the loss names, which of them take hierarchical
labels or own class proxies, and the constructor call.

Apart from `keras_roadmap.recipes.assembly` so that `keras_roadmap.recipes.config` checks a
loss section with the very code that builds it, without importing the assembly (which imports
the config).
"""

from __future__ import annotations

from keras_roadmap.errors import ConfigError

#: `loss.name` values (default "roadmap"): every training loss the package ships.
LOSS_NAMES = (
    "roadmap",
    "supap",
    "smoothap",
    "calibration",
    "suprecall",
    "supndcg",
    "roadmap_pp",
    "happier",
    "road_ndcg",
    "rsk",
)
#: Losses whose `y_true` is always `(B, 2)`: [super-category, class] (the split's two levels);
#: `loss.hierarchical: true` gives those labels to the others that take them (supndcg, road_ndcg).
HIERARCHICAL_LOSSES = ("happier",)
#: Losses that also take `(B, 2)` labels (graded relevance) with `loss.hierarchical: true`.
GRADED_LOSSES = ("supndcg", "road_ndcg")
#: Losses with class proxies (ClusterLoss): trained with their own learning rate.
PROXY_LOSSES = ("roadmap_pp", "happier", "road_ndcg")
#: The proxies' own optimiser settings in a loss section (not loss keywords), with the official
#: values (suprank/config/loss/ROADMAP_pp_SOP.yaml: Adam lr 10.0, weight_decay 0.0,
#: CosineAnnealingLR T_max = max_iter, eta_min 0.1).
PROXY_SETTINGS = {"proxy_lr": 10.0, "proxy_eta_min": 0.1}
_NOT_KEYWORDS = ("preset", "name", "hierarchical", *PROXY_SETTINGS)


def hierarchical_labels(config) -> bool:
    """Whether the run trains on `(B, 2)` [super-category, class] labels."""
    return config.loss.get("name") in HIERARCHICAL_LOSSES or bool(config.loss.get("hierarchical"))


def loss_class(name: str):
    """The loss class of a `loss.name` (ConfigError for an unknown one)."""
    from keras_roadmap import losses

    classes = {
        "roadmap": losses.ROADMAPLoss,
        "supap": losses.SupAPLoss,
        "smoothap": losses.SmoothAPLoss,
        "calibration": losses.CalibrationLoss,
        "suprecall": losses.SupRecallLoss,
        "supndcg": losses.SupNDCGLoss,
        "roadmap_pp": losses.ROADMAPPlusPlusLoss,
        "happier": losses.HAPPIERLoss,
        "road_ndcg": losses.ROADNDCGLoss,
        "rsk": losses.RecallAtKLoss,
    }
    if name not in classes:
        raise ConfigError(f"loss.name must be one of {LOSS_NAMES}, got {name!r}.")
    return classes[name]


def build_loss(config, num_classes: int | None = None, embedding_dim: int | None = None):
    """The config's loss: `loss.name` (default "roadmap") built with the section's keywords.

    `loss.preset` ("default": SOP/CUB/In-Shop, "inaturalist") picks the SupAP parameters of
    the losses that have presets (roadmap, supap, suprecall, supndcg, roadmap_pp, happier,
    road_ndcg);
    keywords given in the section win over it. The proxy losses (roadmap_pp, happier, road_ndcg) need
    `num_classes` (training classes, ids in [0, C)) and `embedding_dim`.
    """
    name = config.loss.get("name", "roadmap")
    cls = loss_class(name)
    kwargs = {k: v for k, v in config.loss.items() if k not in _NOT_KEYWORDS}
    if name in PROXY_LOSSES:
        if num_classes is None or embedding_dim is None:
            raise ConfigError(f"loss {name!r} has class proxies: give num_classes and embedding_dim.")
        kwargs.update(num_classes=int(num_classes), embedding_dim=int(embedding_dim))
    preset = config.loss.get("preset", "default")
    if preset == "inaturalist" and hasattr(cls, "inaturalist"):
        return cls.inaturalist(**kwargs)
    if preset != "default" and not hasattr(cls, "inaturalist"):
        raise ConfigError(f"loss.preset {preset!r} does not apply to loss {name!r} (it has no SupAP presets).")
    return cls(**kwargs)
