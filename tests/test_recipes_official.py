"""Every recipe setting against the official configuration (issue 12, item 5).

`tests/data/official_configs/official_values.json` transcribes the official yaml files and
README commands of elias-ramzi/ROADMAP (data, not code). For each recipe config and backbone
profile, `official_settings` derives from it the value each setting must have and the file it
comes from; the tests compare the resolved config (and the loss it builds) with them, the
transform presets with the transform files, and the table in recipes/README.md with both.

`python tests/test_recipes_official.py` prints that table.
"""

import json
import pathlib

import pytest

from keras_roadmap.data.presets import IMAGENET_MEAN, IMAGENET_STD, PRESETS
from keras_roadmap.recipes.assembly import build_loss
from keras_roadmap.recipes.catalog import CONFIG_DIR
from keras_roadmap.recipes.config import load_yaml, resolve_config

REPO = pathlib.Path(__file__).resolve().parents[1]
OFFICIAL = json.loads((REPO / "tests" / "data" / "official_configs" / "official_values.json").read_text())
CONFIGS = CONFIG_DIR
SAMPLERS = {"HierarchicalSampler": "hierarchical", "MPerClassSampler": "m_per_class"}
MODELS = {"resnet": "resnet50", "resnet_max_ln": "resnet50_max_ln", "deit": "deit_small_distilled"}
TABLE_START, TABLE_END = "<!-- official-settings-table:start -->", "<!-- official-settings-table:end -->"


def profiles():
    return [
        (dataset, name)
        for dataset, entries in OFFICIAL["recipes"].items()
        if not dataset.startswith("_")
        for name in entries
    ]


def official_settings(dataset: str, profile: str) -> dict:
    """{setting: (official value, source)} for one recipe profile; settings listed as
    `unchecked` (no official source) are left out."""
    entry = OFFICIAL["recipes"][dataset][profile]
    files = OFFICIAL["files"]
    command = dict(OFFICIAL["readme_commands"][entry["command"]]) if "command" in entry else {}
    where = f"README command {entry['command']}" if command else None
    groups = {
        **{k: command[k] for k in ("optimizer", "model", "transform", "dataset", "loss", "memory") if k in command},
        **entry.get("files", {}),
    }
    out = {}

    def put(key, value, source):
        if key not in entry.get("unchecked", []):
            out[key] = (value, source)

    def source_of(group, key):
        # A value set on the command line of a README command comes from the command.
        return (
            where
            if command and key in command and groups.get(group) == command.get(group)
            else f"{group}/{groups[group]}.yaml"
        )

    if "seed" in command:
        put("seed", command["seed"], where)
    if "max_iter" in command:
        put("epochs", command["max_iter"], where)
    if "transform" in groups:
        put("transform", groups["transform"], source_of("transform", "transform"))

    sampler = files[f"dataset/{groups['dataset']}.yaml"]["sampler"]
    dataset_file = f"dataset/{groups['dataset']}.yaml"
    put("sampler.name", SAMPLERS[sampler["name"]], dataset_file)
    put(
        "sampler.batch_size",
        command.get("batch_size", sampler["batch_size"]),
        where if "batch_size" in command else dataset_file,
    )
    put("sampler.samples_per_class", sampler["samples_per_class"], dataset_file)
    if "batches_per_super_pair" in sampler:
        bpsp = command.get("batches_per_super_pair", sampler["batches_per_super_pair"])
        put("sampler.batches_per_super_pair", bpsp, where if "batches_per_super_pair" in command else dataset_file)

    opt_file = f"optimizer/{groups['optimizer']}.yaml"
    opt = files[opt_file]
    put("optimizer.name", opt[0]["name"].lower(), opt_file)
    if len(opt) == 1:
        assert opt[0]["params"] is None
        put("optimizer.backbone_lr", opt[0]["lr"], opt_file)
        put("optimizer.head_lr", None, f"{opt_file} (one group: the head takes the backbone's lr)")
    else:
        by_params = {group["params"]: group for group in opt}
        put("optimizer.backbone_lr", by_params["backbone"]["lr"], opt_file)
        put("optimizer.head_lr", by_params["fc"]["lr"], opt_file)
    decays = {group["weight_decay"] for group in opt}
    assert len(decays) == 1, f"{opt_file}: one weight decay per group is not expressible in our configs"
    put("optimizer.weight_decay", decays.pop(), opt_file)
    schedule = opt[0]["scheduler_on_epoch"]
    put("optimizer.milestones", schedule["milestones"] if schedule else [], opt_file)
    if schedule:
        put("optimizer.gamma", schedule["gamma"], opt_file)

    memory_file = f"memory/{groups['memory']}.yaml"
    put(
        "memory.size",
        0 if files[memory_file]["name"] is None else files[memory_file]["size"],
        f"{where or 'no command'}: memory={groups['memory']} (no XBM)"
        if files[memory_file]["name"] is None
        else memory_file,
    )
    own_memory = f"memory/{dataset}.yaml"
    if own_memory in files:
        put("memory.official_size", files[own_memory]["size"], own_memory)
        put("memory.unique", files[own_memory]["unique"], own_memory)
        put("memory.weight", files[own_memory]["weight"], own_memory)

    loss_file = f"loss/{groups['loss']}.yaml"
    calibration, supap = files[loss_file]
    for key in ("tau", "rho", "offset", "delta"):
        put(f"loss.{key}", supap[key], loss_file)
    default_start = OFFICIAL["code_defaults"]["SupAP.start"]
    put(
        "loss.start",
        supap.get("start", default_start["value"]),
        loss_file if "start" in supap else default_start["file"],
    )
    put("loss.pos_margin", calibration["pos_margin"], loss_file)
    put("loss.neg_margin", calibration["neg_margin"], loss_file)
    put("loss.calibration_weight", calibration["weight"], loss_file)
    put("loss.ap_weight", supap["weight"], loss_file)

    model_file = f"model/{groups['model']}.yaml"
    model = files[model_file]
    put(
        "model",
        MODELS[groups["model"]],
        f"{model_file} (pooling {model['pooling']}, LayerNorm {model['norm_features']})",
    )
    put(
        "embedding_dim",
        None if model["without_fc"] else model["embed_dim"],
        f"{model_file} ({'no projection: the backbone features' if model['without_fc'] else 'projection'})",
    )
    put("freeze_batchnorm", model["freeze_batch_norm"], model_file)

    experience = files["experience/default.yaml"]
    put("evaluation.every_n_epochs", experience["test_eval_freq"], "experience/default.yaml (test_eval_freq)")
    put("evaluation.batch_size", experience["eval_bs"], "experience/default.yaml (eval_bs)")
    return out


def our_settings(dataset: str, profile: str) -> dict:
    config = resolve_config(load_yaml(CONFIGS / f"{dataset}.yaml"), source=dataset, overrides={"backbone": profile})
    loss = build_loss(config).get_config()
    values = {
        "seed": config.seed,
        "epochs": config.epochs,
        "transform": config.transform,
        "model": config.model,
        "embedding_dim": config.embedding_dim,
        "freeze_batchnorm": config.freeze_batchnorm,
        "memory.size": config.memory["size"],
    }
    raw_memory = load_yaml(CONFIGS / f"{dataset}.yaml")["memory"]
    values.update(
        {
            "memory.official_size": raw_memory.get("official_size"),
            "memory.unique": config.memory["unique"],
            "memory.weight": config.memory["weight"],
        }
    )
    for key, value in config.sampler.items():
        values[f"sampler.{key}"] = value
    for key, value in config.optimizer.items():
        values[f"optimizer.{key}"] = value
    for key in (
        "tau",
        "rho",
        "offset",
        "delta",
        "start",
        "pos_margin",
        "neg_margin",
        "calibration_weight",
        "ap_weight",
    ):
        values[f"loss.{key}"] = loss[key]
    values["evaluation.every_n_epochs"] = config.evaluation["every_n_epochs"]
    values["evaluation.batch_size"] = config.evaluation["batch_size"]
    return values


def _equal(ours, official):
    if isinstance(official, float) and isinstance(ours, (int, float)):
        return abs(ours - official) <= 1e-9 * max(1.0, abs(official))
    return ours == official


@pytest.mark.parametrize("dataset,profile", profiles())
def test_every_recipe_setting_has_its_official_value(dataset, profile):
    official, ours = official_settings(dataset, profile), our_settings(dataset, profile)
    wrong = {
        key: (ours[key], value, source) for key, (value, source) in official.items() if not _equal(ours[key], value)
    }
    assert not wrong, f"{dataset}/{profile}: setting -> (ours, official, source): {wrong}"
    assert len(official) >= 20  # the whole setting, not a sample of it


def test_every_config_profile_is_audited():
    ours_only = set()
    for path in sorted(CONFIGS.glob("*.yaml")):
        raw = load_yaml(path)
        if path.stem not in OFFICIAL["recipes"]:
            # A recipe of ours with no ROADMAP counterpart (test_recipes_suprank.py, test_recipes_recallatk.py).
            ours_only.add(path.stem)
            continue
        assert raw["dataset"] == path.stem
        assert sorted(raw["backbones"]) == sorted(OFFICIAL["recipes"][raw["dataset"]]), path.name
    assert ours_only == {"glyphs", "suprank_sop", "suprank_inaturalist", "recallatk_sop", "recallatk_inaturalist"}


def test_known_fixes_are_in():
    # optimizer/inaturalist.yaml: weight decay 4e-4 for both groups (was 1e-4 here).
    assert our_settings("inaturalist", "resnet50")["optimizer.weight_decay"] == 4e-4
    # optimizer/inshop_deit.yaml has no schedule (was MultiStep 25, 50 here).
    assert our_settings("inshop", "deit_small")["optimizer.milestones"] == []
    # No README command uses XBM.
    assert all(our_settings(d, p)["memory.size"] == 0 for d, p in profiles())


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if f"transform/{n}.yaml" in OFFICIAL["files"]))
def test_presets_transcribe_the_transform_files(name):
    spec = OFFICIAL["files"][f"transform/{name}.yaml"]
    preset = PRESETS[name]
    train, test = dict(spec["train"]), dict(spec["test"])
    assert [step for step, _ in spec["train"]][-2:] == ["ToTensor", "Normalize"]
    assert train["Normalize"] == test["Normalize"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert train.get("Resize", {}).get("size") == preset.train_resize
    rrc = train["RandomResizedCrop"]
    assert (rrc["size"], tuple(rrc["scale"]), tuple(rrc["ratio"])) == (preset.crop_size, preset.scale, preset.ratio)
    assert train["RandomHorizontalFlip"]["p"] == preset.flip
    size = test["Resize"]["size"]
    assert preset.eval_square == isinstance(size, list)
    assert (
        preset.eval_resize == (size[0] if isinstance(size, list) else size)
        and test["CenterCrop"]["size"] == preset.crop_size
    )


def _fmt(value):
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value).replace("True", "true").replace("False", "false")


def settings_table() -> str:
    """The markdown table of recipes/README.md: recipe, profile, setting, value, official source."""
    lines = ["| recipe / profile | setting | value | official source |", "|---|---|---|---|"]
    for dataset, profile in profiles():
        entry = OFFICIAL["recipes"][dataset][profile]
        ours = our_settings(dataset, profile)
        for key, (_value, source) in official_settings(dataset, profile).items():
            lines.append(f"| {dataset} / {profile} | {key} | {_fmt(ours[key])} | {source} |")
        for key in entry.get("unchecked", []):
            shown = _fmt(ours[key]) if key in ours else "see config"
            lines.append(f"| {dataset} / {profile} | {key} | {shown} | ours: {entry.get('notes', '')} |")
    return "\n".join(lines)


def test_readme_table_is_the_audit():
    text = (REPO / "recipes" / "README.md").read_text()
    assert TABLE_START in text and TABLE_END in text, "recipes/README.md lost its settings table markers"
    table = text.split(TABLE_START)[1].split(TABLE_END)[0].strip()
    assert table == settings_table(), (
        "recipes/README.md table is stale: regenerate with python tests/test_recipes_official.py"
    )


if __name__ == "__main__":
    print(settings_table())
