"""The recipe config schema: ONE declarative table of every key a `keras_roadmap/recipes/configs/*.yaml`
file may hold, its type and its valid range.

To add a key, add one `Field` line to the section it belongs to (e.g.
`PROFILE["random_init"] = Field("bool")`); `check_config` then accepts it, checks its type
and range, and suggests it for near-miss spellings. Required keys and cross-key rules (batch
size a multiple of samples per class...) stay in `config.resolve_config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers

from keras_roadmap.errors import ConfigError
from keras_roadmap.recipes.loss_config import LOSS_NAMES


@dataclasses.dataclass(frozen=True)
class Field:
    """One config value.

    kind: "int", "number", "bool", "str", "list" (of `item`), "mapping" (free-form dict, e.g.
    model keyword arguments) or "section" (a dict checked against `fields`), "profiles" (a
    dict of name -> section `fields`). minimum/maximum (inclusive unless min_open), choices,
    nullable (None allowed).
    """

    kind: str
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False
    choices: tuple | None = None
    nullable: bool = False
    item: Field | None = None
    fields: dict | None = None

    def expected(self) -> str:
        text = {
            "int": "an integer",
            "number": "a number",
            "bool": "true or false",
            "str": "a string",
            "list": "a list",
            "mapping": "a mapping",
            "section": "a mapping",
            "profiles": "a mapping of profiles",
        }[self.kind]
        if self.choices:
            text = f"one of {list(self.choices)}"
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.min_open else '>='} {self.minimum}")
        if self.maximum is not None:
            bounds.append(f"<= {self.maximum}")
        if bounds:
            text += " " + " and ".join(bounds)
        if self.kind == "list" and self.item is not None:
            text += f" of {self.item.expected().replace('an ', '').replace('a ', '')}s"
        return text + (" (or null)" if self.nullable else "")


def _section(**fields):
    return Field("section", fields=fields)


POSITIVE_INT = Field("int", minimum=1)
OPTIMIZER = {
    "name": Field("str", choices=("adam", "adamw", "sgd")),
    "backbone_lr": Field("number", minimum=0, min_open=True),
    "head_lr": Field("number", minimum=0, min_open=True, nullable=True),
    "weight_decay": Field("number", minimum=0),
    "milestones": Field("list", item=Field("int", minimum=1)),
    "gamma": Field("number", minimum=0, min_open=True),
    # SupRank's optimizer/*.yaml: CosineAnnealingLR(T_max = the run's epochs, eta_min) per group.
    "schedule": Field("str", choices=("multistep", "cosine")),
    "eta_min": Field("number", minimum=0),
    # SupRank's `warmup_step`: epochs during which the backbone is not updated (keras_roadmap.optim).
    "warmup_epochs": Field("int", minimum=0),
}
PROFILE = {
    "model": Field("str"),
    "model_kwargs": Field("mapping", nullable=True),
    "embedding_dim": Field("int", minimum=1, nullable=True),
    "weights": Field("str", nullable=True),
    # The file `weights: pretrained` looks for (default: the model's, recipes.pretrained.CHECKPOINT_FILES).
    "checkpoint": Field("str", nullable=True),
    "freeze_batchnorm": Field("bool"),
    "image_size": POSITIVE_INT,
    "eval_resize": Field("int", minimum=1, nullable=True),
    # Names of keras_roadmap.data.presets.PRESETS; checked there, with the list, when resolved.
    "transform": Field("str", nullable=True),
    "epochs": POSITIVE_INT,
    "optimizer": Field("section", fields=OPTIMIZER),
}
SAMPLER = {
    "name": Field("str", choices=("m_per_class", "hierarchical", "no_replacement")),
    "batch_size": POSITIVE_INT,
    "samples_per_class": POSITIVE_INT,
    "batches_per_super_pair": POSITIVE_INT,
}
# The loss: `name` (keras_roadmap.recipes.loss_config.LOSS_NAMES) and its keywords; their ranges
# are checked by the loss itself (keras_roadmap.validation).
LOSS = {
    "name": Field("str", choices=LOSS_NAMES),
    "preset": Field("str", choices=("default", "inaturalist")),
    **{
        k: Field("number")
        for k in (
            "tau",
            "rho",
            "delta",
            "start",
            "offset",
            "pos_margin",
            "neg_margin",
            "ap_weight",
            "calibration_weight",
            "recall_weight",
            "cluster_weight",
            "hap_weight",
            "ndcg_weight",
            "temp",
            "temperature",
            "alpha",
            "k_temperatures",  # rsk: one temperature for every k
        )
    },
    "at_k": Field("list", item=Field("int", minimum=1)),
    "k_values": Field("list", item=Field("int", minimum=1)),
    "include_self": Field("bool"),
    "pairs_per_chunk": Field("int", minimum=1, nullable=True),
    "calibration_warmup_steps": Field("int", minimum=0),
    # [super-category, class] labels for the losses that take them (graded relevance: supndcg, road_ndcg).
    "hierarchical": Field("bool"),
    # The class proxies' own optimiser (roadmap_pp, happier): Adam lr, cosine to eta_min.
    "proxy_lr": Field("number", minimum=0, min_open=True),
    "proxy_eta_min": Field("number", minimum=0),
}
MEMORY = {
    "size": Field("int", minimum=0),
    "official_size": POSITIVE_INT,
    "unique": Field("bool"),
    "weight": Field("number", minimum=0),
    "activate_after": Field("int", minimum=0),
}
EVALUATION = {
    "every_n_epochs": POSITIVE_INT,
    "ks": Field("list", item=POSITIVE_INT),
    "batch_size": POSITIVE_INT,
    "grid_queries": POSITIVE_INT,
    "grid_k": POSITIVE_INT,
}
SMOKE_DATA = {"supers": POSITIVE_INT, "classes_per_super": POSITIVE_INT, "images_per_class": POSITIVE_INT}
# The glyph recipe's rendering (keras_roadmap.recipes.run.prepare_glyphs).
GLYPHS = {
    "copies": POSITIVE_INT,
    "fonts_dir": Field("str", nullable=True),
    "min_fonts": POSITIVE_INT,
    "characters": Field("str", nullable=True),
    "seed": Field("int", minimum=0),
    "cache_dir": Field("str", nullable=True),
}
TOP = {
    "dataset": Field("str", choices=("sop", "cub", "inaturalist", "inshop", "glyphs")),
    "backbone": Field("str"),
    "glyphs": Field("section", fields=GLYPHS),
    "seed": Field("int", minimum=0),
    # RetrievalTrainer(chunk_size=...): embed the batch this many images at a time (RS@k's bs_base).
    "chunk_size": Field("int", minimum=1, nullable=True),
    "mixed_precision": Field("str", choices=("float32", "mixed_float16", "mixed_bfloat16")),
    "sampler": Field("section", fields=SAMPLER),
    "loss": Field("section", fields=LOSS),
    # Named loss sections (`--loss NAME` picks one; `loss_profile` is the default), laid over `loss`.
    "loss_profile": Field("str"),
    "losses": Field("profiles", fields=LOSS),
    "memory": Field("section", fields=MEMORY),
    "evaluation": Field("section", fields=EVALUATION),
    "backbones": Field("profiles", fields=PROFILE),
    "smoke": _section(
        data=Field("section", fields=SMOKE_DATA),
        glyphs=Field("section", fields=GLYPHS),
        backbone=Field("section", fields=PROFILE),
        sampler=Field("section", fields=SAMPLER),
        loss=Field("section", fields=LOSS),
        memory=Field("section", fields=MEMORY),
        evaluation=Field("section", fields=EVALUATION),
        chunk_size=Field("int", minimum=1, nullable=True),
    ),
}


def _all_paths(fields: dict, prefix: str = "") -> list:
    paths = []
    for key, field in fields.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if field.kind == "section":
            paths += _all_paths(field.fields, path + ".")
        elif field.kind == "profiles":
            paths += _all_paths(field.fields, path + ".<profile>.")
    return paths


# Common names from other frameworks that difflib cannot map (a key -> where it lives here).
HINTS = {
    "learning_rate": "backbones.<profile>.optimizer.backbone_lr (and head_lr)",
    "lr": "backbones.<profile>.optimizer.backbone_lr (and head_lr)",
    "epochs": "backbones.<profile>.epochs",
    "batch_size": "sampler.batch_size",
}


def _suggestion(key: str, section: dict) -> str:
    if key in HINTS and key not in section:
        return f"did you mean `{HINTS[key]}`?"
    close = difflib.get_close_matches(key, list(section), n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    # Elsewhere in the file (e.g. `learning_rate` at the top level)?
    paths = _all_paths(TOP)
    leaves = {p.rsplit(".", 1)[-1]: p for p in reversed(paths)}
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.6)
    if not close:
        close = [leaf for leaf in leaves if key.replace("_", "") in leaf.replace("_", "") or leaf in key][:1]
    if close:
        return f"did you mean `{leaves[close[0]]}`?"
    return f"valid keys here: {sorted(section)}."


def _value(value, field: Field, path: str, source: str):
    def fail(kind=TypeError):
        raise ConfigError(f"{source}: `{path}` must be {field.expected()}, got {value!r}.")

    if value is None:
        if field.nullable or field.kind in ("section", "mapping"):
            return value
        fail()
    if field.kind == "int":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            fail()
    elif field.kind == "number":
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-5" (no dot) as a string
                value = float(value)
            except ValueError:
                fail()
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            fail()
    elif field.kind == "bool":
        if not isinstance(value, bool):
            fail()
    elif field.kind == "str":
        if not isinstance(value, str):
            fail()
    elif field.kind == "list":
        if not isinstance(value, list):
            fail()
        return [_value(v, field.item, f"{path}[{i}]", source) for i, v in enumerate(value)]
    elif field.kind == "mapping":
        if not isinstance(value, dict):
            fail()
        return value
    elif field.kind == "section":
        return _section_values(value, field.fields, path, source)
    elif field.kind == "profiles":
        if not isinstance(value, dict) or not value:
            fail()
        return {
            name: _section_values(profile, field.fields, f"{path}.{name}", source) for name, profile in value.items()
        }
    if field.choices and value not in field.choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in field.choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{source}: `{path}` must be one of {list(field.choices)}, got {value!r}{hint}.")
    if field.minimum is not None and (value <= field.minimum if field.min_open else value < field.minimum):
        fail()
    if field.maximum is not None and value > field.maximum:
        fail()
    return value


def _section_values(mapping, fields: dict, path: str, source: str):
    if mapping is None:
        return None
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: `{path}` must be a mapping of keys {sorted(fields)}, got {mapping!r}.")
    out = {}
    for key, value in mapping.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"{source}: unknown key `{where}`; {_suggestion(str(key), fields)}")
        out[key] = _value(value, fields[key], where, source)
    return out


def check_config(raw: dict, source: str = "config") -> dict:
    """`raw` with every key known and every value of the right type and range (numbers given
    as YAML strings such as "1e-5" converted), or a ConfigError naming `source`, the key path
    and what is expected."""
    return _section_values(raw, TOP, "", source)
