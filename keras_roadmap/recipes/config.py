"""Recipe configuration: one YAML file per dataset, a backbone profile, command-line overrides.

A config file (see `keras_roadmap/recipes/configs/*.yaml`) holds the dataset-wide settings (sampler, loss,
memory, evaluation) and, under `backbones:`, one profile per backbone with the settings that
change with it (model, input size, epochs, optimiser). `resolve_config` picks the profile and
applies the command-line overrides, giving one flat `RecipeConfig`.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib

from keras_roadmap.errors import ConfigError  # noqa: F401  (re-exported: recipes.config.ConfigError)
from keras_roadmap.recipes.schema import check_config

SAMPLERS = ("m_per_class", "hierarchical", "no_replacement")
LOSS_PRESETS = ("default", "inaturalist")
DATASETS = ("sop", "cub", "inaturalist", "inshop", "glyphs")


@dataclasses.dataclass
class RecipeConfig:
    """Everything one training run needs, after profile selection and overrides.

    Attributes:
        dataset: "sop", "cub", "inaturalist" or "inshop".
        backbone: the profile name (a key of the file's `backbones:`).
        model: `keras_roadmap.build_embedder` name; model_kwargs: its extra arguments.
        embedding_dim: None = the model's default; weights: preset name/dir, .weights.h5 or None.
        freeze_batchnorm: passed to build_embedder (paper: True).
        image_size: train crop / eval crop side; eval_resize: shorter side before the eval crop
            (None = the data pipeline's default).
        epochs: total epochs; seed: sampler, augmentation and initialisation seed.
        sampler: dict(name, batch_size, samples_per_class[, batches_per_super_pair]).
        optimizer: dict(name, backbone_lr, head_lr, weight_decay, milestones, gamma).
        loss: dict(name (default "roadmap"), preset[, the loss's keywords, e.g.
            calibration_warmup_steps; proxy_lr / proxy_eta_min for the proxy losses]).
        memory: dict(size (0 = off), unique, weight, activate_after).
        evaluation: dict(every_n_epochs, ks, batch_size, grid_queries, grid_k).
        mixed_precision: Keras dtype policy used when a GPU is present ("float32" = off).
        smoke: True for a `--smoke` run.
        precision_forced: apply `mixed_precision` even without a GPU (`--precision`).
        transform: the profile's transform preset name (`keras_roadmap.data.presets`: "sop",
            "sop_big", "cub", ...); `transform_preset(config)` gives it at `image_size`.
        loss_profile: the `losses:` profile the loss came from (`--loss NAME`), None without.
        chunk_size: `RetrievalTrainer(chunk_size=...)`: the batch embedded this many images at a
            time (gradient caching; RS@k's `bs_base`), None = the whole batch at once.
        checkpoint: the file `weights: pretrained` looks for, None = the model's default
            (`keras_roadmap.recipes.pretrained.CHECKPOINT_FILES`).
    """

    dataset: str
    backbone: str
    model: str
    model_kwargs: dict
    embedding_dim: int | None
    weights: str | None
    freeze_batchnorm: bool
    image_size: int
    eval_resize: int | None
    epochs: int
    seed: int
    sampler: dict
    optimizer: dict
    loss: dict
    memory: dict
    evaluation: dict
    mixed_precision: str
    smoke: bool = False
    precision_forced: bool = False
    transform: str | None = None
    loss_profile: str | None = None
    chunk_size: int | None = None
    checkpoint: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_yaml(path) -> dict:
    """Read a YAML mapping (pyyaml, a core dependency of the recipes)."""
    try:
        import yaml
    except ImportError as err:
        raise ImportError("The recipes read YAML configs: pip install pyyaml") from err
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe config not found: {path}. Pass --config path/to/config.yaml.")
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe config must be a YAML mapping, got {type(data).__name__}.")
    return data


def _require(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise ConfigError(f"{where}: missing key `{key}`.")
    return mapping[key]


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}.")
    return int(value)


def _float_or_none(value, where: str):
    if value is None:
        return None
    try:
        # YAML reads "1e-5" (no dot) as a string; accept it.
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number, got {value!r}.") from None


def _deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        out[key] = (
            _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _check_loss_arguments(loss: dict, source: str) -> None:
    """The loss keywords' ranges, checked by the loss constructor itself (one set of rules)."""
    import types

    from keras_roadmap.recipes.loss_config import build_loss

    try:
        # Any class count and width: only the keywords are checked here.
        build_loss(types.SimpleNamespace(loss=loss), num_classes=2, embedding_dim=2)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: `loss` ({loss.get('name', 'roadmap')}): {err}") from None


def _loss_section(raw: dict, sections: dict, overrides: dict, smoke_section: dict | None, source: str):
    """(profile name or None, the loss section): `losses[NAME]` (NAME = `--loss` or the file's
    `loss_profile`) laid over `loss:`, then, in a smoke run, `smoke.loss` over that."""
    profiles = raw.get("losses")
    wanted = overrides.get("loss", raw.get("loss_profile"))
    if not profiles:
        if "loss" in overrides:
            raise ConfigError(
                f"{source}: --loss {overrides['loss']}: this config has no `losses:` profiles; set `loss.name` "
                "in a copy (--print-config) or use a recipe with loss profiles (keras-roadmap recipes)."
            )
        return None, sections["loss"]
    if wanted not in profiles:
        raise ConfigError(f"{source}: unknown loss profile {wanted!r}; this config defines {sorted(profiles)}.")
    loss = _deep_update(raw.get("loss") or {}, profiles[wanted])
    if smoke_section is not None:
        loss = _deep_update(loss, smoke_section.get("loss") or {})
    return wanted, loss


def resolve_config(
    raw: dict, *, source: str = "config", overrides: dict | None = None, smoke: bool = False
) -> RecipeConfig:
    """Flatten a raw config mapping into a checked `RecipeConfig`.

    Args:
        raw: the YAML mapping (see `keras_roadmap/recipes/configs/sop.yaml` for the keys).
        source: where `raw` came from (named in errors).
        overrides: flag values; keys backbone, weights, epochs, batch_size, memory, seed, loss,
            chunk_size (None values are ignored). `memory` is an int size (0 = off) or "official" (the
            file's `memory.official_size`).
        smoke: apply the file's `smoke:` section (a tiny model and sampler) before the overrides.

    Raises:
        ConfigError: unknown dataset/backbone/sampler/loss preset, or an invalid value.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    raw = check_config(raw, source)
    dataset = _require(raw, "dataset", source)
    if dataset not in DATASETS:
        raise ConfigError(f"{source}: dataset must be one of {DATASETS}, got {dataset!r}.")
    profiles = _require(raw, "backbones", source)
    sections = {key: copy.deepcopy(raw.get(key) or {}) for key in ("sampler", "loss", "memory", "evaluation")}
    backbone = overrides.get("backbone", raw.get("backbone"))
    smoke_section = None
    if smoke:
        smoke_section = raw.get("smoke") or {}
        for key in sections:
            sections[key] = _deep_update(sections[key], smoke_section.get(key) or {})
        if "backbone" not in overrides:
            backbone = "smoke"
            profiles = {**profiles, "smoke": _require(smoke_section, "backbone", f"{source}: smoke")}
    if backbone not in profiles:
        raise ConfigError(f"{source}: unknown backbone profile {backbone!r}; this config defines {sorted(profiles)}.")
    profile = profiles[backbone]
    where = f"{source}: backbones.{backbone}"

    sampler = sections["sampler"]
    if "batch_size" in overrides:
        sampler["batch_size"] = overrides["batch_size"]
    if sampler.get("name") not in SAMPLERS:
        raise ConfigError(f"{source}: sampler.name must be one of {SAMPLERS}, got {sampler.get('name')!r}.")
    for key in ("batch_size", "samples_per_class"):
        sampler[key] = _positive_int(_require(sampler, key, f"{source}: sampler"), f"sampler.{key}")
    if sampler["batch_size"] % sampler["samples_per_class"]:
        raise ConfigError(
            f"batch size {sampler['batch_size']} is not a multiple of samples_per_class "
            f"{sampler['samples_per_class']}; choose e.g. "
            f"{sampler['samples_per_class'] * (sampler['batch_size'] // sampler['samples_per_class'] or 1)}."
        )
    if sampler["name"] == "hierarchical":
        if (sampler["batch_size"] // sampler["samples_per_class"]) % 2:
            raise ConfigError(
                f"the hierarchical sampler takes half of each batch's classes from each of two "
                f"super-categories, so batch_size / samples_per_class must be even; got "
                f"{sampler['batch_size']} / {sampler['samples_per_class']}."
            )
        sampler["batches_per_super_pair"] = _positive_int(
            sampler.get("batches_per_super_pair", 10), "sampler.batches_per_super_pair"
        )

    loss_profile, loss = _loss_section(raw, sections, overrides, smoke_section, source)
    loss.setdefault("preset", "default")
    if loss["preset"] not in LOSS_PRESETS:
        raise ConfigError(f"{source}: loss.preset must be one of {LOSS_PRESETS}, got {loss['preset']!r}.")
    if "calibration_warmup_steps" in loss:
        # 0 (the paper) or N: the calibration weight ramps in over N steps (README, "When ROADMAP helps").
        warmup = loss["calibration_warmup_steps"]
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ConfigError(
                f"{source}: loss.calibration_warmup_steps must be an integer >= 0 (0 = off), got {warmup!r}."
            )

    _check_loss_arguments(loss, source)

    memory = sections["memory"]
    size = overrides.get("memory", memory.get("size") or 0)
    if size == "official":
        size = _require(memory, "official_size", f"{source}: memory")
    try:
        size = int(size)
    except (TypeError, ValueError):
        raise ConfigError(f"--memory must be a number of slots, 0 (off) or 'official', got {size!r}.") from None
    if size < 0:
        raise ConfigError(f"memory size must be >= 0 (0 = no memory), got {size}.")
    memory.update(
        size=size,
        unique=bool(memory.get("unique", True)),
        weight=float(memory.get("weight", 1.0)),
        activate_after=int(memory.get("activate_after", 0)),
    )
    from keras_roadmap.recipes.loss_config import GRADED_LOSSES, HIERARCHICAL_LOSSES

    if loss.get("hierarchical") and loss.get("name") not in GRADED_LOSSES + HIERARCHICAL_LOSSES:
        raise ConfigError(
            f"{source}: loss.hierarchical applies to {', '.join(GRADED_LOSSES + HIERARCHICAL_LOSSES)} (the losses that "
            f"take [super-category, class] labels), not {loss.get('name', 'roadmap')!r}."
        )
    if (loss.get("name") in HIERARCHICAL_LOSSES or loss.get("hierarchical")) and size:
        raise ConfigError(
            f"{source}: loss {loss.get('name', 'roadmap')!r} trains on [super-category, class] labels, which the "
            "cross-batch memory does not store (the official runs use none): use --memory 0."
        )

    evaluation = sections["evaluation"]
    evaluation["every_n_epochs"] = _positive_int(evaluation.get("every_n_epochs", 1), "evaluation.every_n_epochs")
    evaluation["ks"] = [
        _positive_int(k, "evaluation.ks entries") for k in _require(evaluation, "ks", f"{source}: evaluation")
    ]
    evaluation["batch_size"] = _positive_int(evaluation.get("batch_size", 64), "evaluation.batch_size")
    evaluation["grid_queries"] = _positive_int(evaluation.get("grid_queries", 8), "evaluation.grid_queries")
    evaluation["grid_k"] = _positive_int(evaluation.get("grid_k", 5), "evaluation.grid_k")

    optimizer = copy.deepcopy(_require(profile, "optimizer", where))
    optimizer["name"] = str(optimizer.get("name", "adam")).lower()
    optimizer["backbone_lr"] = _float_or_none(_require(optimizer, "backbone_lr", f"{where}.optimizer"), "backbone_lr")
    optimizer["head_lr"] = _float_or_none(optimizer.get("head_lr"), "head_lr")
    optimizer["weight_decay"] = _float_or_none(optimizer.get("weight_decay", 0.0), "weight_decay")
    optimizer["milestones"] = [int(m) for m in optimizer.get("milestones") or []]
    optimizer["gamma"] = _float_or_none(optimizer.get("gamma", 0.3), "gamma")
    if optimizer.get("schedule") == "cosine" and optimizer["milestones"]:
        raise ConfigError(f"{where}.optimizer: schedule cosine takes no milestones (those are MultiStepLR's).")
    if optimizer.get("warmup_epochs") and optimizer.get("schedule") != "cosine":
        raise ConfigError(f"{where}.optimizer: warmup_epochs (SupRank's warm-up) needs schedule: cosine.")

    weights = overrides.get("weights", profile.get("weights"))
    if isinstance(weights, str) and weights.lower() in ("none", "null", "random", ""):
        weights = None
    embedding_dim = profile.get("embedding_dim")
    image_size = _positive_int(_require(profile, "image_size", where), f"{where}.image_size")
    transform = _transform_setting(profile, image_size, where, smoke)
    return RecipeConfig(
        dataset=dataset,
        backbone=backbone,
        model=_require(profile, "model", where),
        model_kwargs=dict(profile.get("model_kwargs") or {}),
        embedding_dim=None if embedding_dim is None else _positive_int(embedding_dim, f"{where}.embedding_dim"),
        weights=weights,
        freeze_batchnorm=bool(profile.get("freeze_batchnorm", True)),
        image_size=image_size,
        eval_resize=profile.get("eval_resize"),
        epochs=_positive_int(overrides.get("epochs", _require(profile, "epochs", where)), "epochs"),
        seed=int(overrides.get("seed", raw.get("seed", 0))),
        sampler=sampler,
        optimizer=optimizer,
        loss=loss,
        memory=memory,
        evaluation=evaluation,
        mixed_precision=str(raw.get("mixed_precision", "mixed_float16")),
        smoke=smoke,
        transform=transform,
        loss_profile=loss_profile,
        chunk_size=_chunk_size(
            overrides.get("chunk_size", (smoke_section or {}).get("chunk_size", raw.get("chunk_size"))),
            sampler["batch_size"],
            source,
        ),
        checkpoint=profile.get("checkpoint"),
    )


def _chunk_size(value, batch_size: int, source: str):
    if value is None:
        return None
    value = _positive_int(value, "chunk_size")
    if value > batch_size:
        raise ConfigError(
            f"{source}: chunk_size {value} is larger than the batch ({batch_size}); give at most the batch size "
            "(or none: the whole batch at once)."
        )
    return value


def with_overrides(raw: dict, overrides: dict | None = None, *, smoke: bool = False) -> dict:
    """A copy of the config mapping `raw` with the flag values written where `resolve_config`
    reads them, so that the copy, resolved without flags (and with the same `smoke`), gives the
    same run: what `keras-roadmap train NAME --print-config` prints.

    `overrides` has the keys of `resolve_config`'s, plus `eval_every`. In a smoke run the
    sampler, memory, evaluation and profile values go into the `smoke:` section (which the
    smoke run lays over the others); a `backbone` chosen for a smoke run becomes the
    `smoke.backbone` profile. Call it on a config `resolve_config` accepted: values are
    written, not checked.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    out = copy.deepcopy(raw)
    smoke_section = out.setdefault("smoke", {}) if smoke else None
    if "backbone" in overrides:
        out["backbone"] = overrides["backbone"]
        if smoke:
            smoke_section["backbone"] = copy.deepcopy(out["backbones"][overrides["backbone"]])
    profile = smoke_section["backbone"] if smoke else out["backbones"][out["backbone"]]
    for key in ("epochs", "weights"):
        if key in overrides:
            profile[key] = overrides[key]
    sections = smoke_section if smoke else out
    if "batch_size" in overrides:
        sections.setdefault("sampler", {})["batch_size"] = overrides["batch_size"]
    if "memory" in overrides:
        size = overrides["memory"]
        if size == "official":
            size = _deep_update(raw.get("memory") or {}, (raw.get("smoke") or {}).get("memory") if smoke else {})[
                "official_size"
            ]
        sections.setdefault("memory", {})["size"] = int(size)
    if "eval_every" in overrides:
        sections.setdefault("evaluation", {})["every_n_epochs"] = overrides["eval_every"]
    if "seed" in overrides:
        out["seed"] = overrides["seed"]
    if "chunk_size" in overrides:
        sections["chunk_size"] = overrides["chunk_size"]
    if "loss" in overrides:
        out["loss_profile"] = overrides["loss"]
    return out


# --- Transform presets (issue 12): each profile names the official transform it trains and
# --- evaluates with; kept apart from the schema above.


def _transform_setting(profile: dict, image_size: int, where: str, smoke: bool) -> str:
    """Check the profile's `transform:` preset name against its `image_size`."""
    from keras_roadmap.data.presets import PRESETS

    if profile.get("eval_resize") is not None:
        raise ConfigError(
            f"{where}.eval_resize is no longer used: the test resize comes from the transform preset "
            f"(`transform:`, one of {sorted(PRESETS)})."
        )
    name = _require(profile, "transform", where)
    if name not in PRESETS:
        raise ConfigError(f"{where}.transform must be one of {sorted(PRESETS)}, got {name!r}.")
    crop = PRESETS[name].crop_size
    if image_size != crop and not smoke:
        raise ConfigError(
            f"{where}: image_size {image_size} does not match the crop of transform preset {name!r} "
            f"({crop}); use the preset's size (smoke runs rescale the preset)."
        )
    return name


def transform_preset(config: RecipeConfig):
    """The `TransformPreset` a run trains and evaluates with: the profile's preset at the
    config's `image_size` (rescaled when they differ, e.g. the 32 px smoke model)."""
    from keras_roadmap.data.presets import get_preset

    return get_preset(config.transform or "sop", image_size=config.image_size)
