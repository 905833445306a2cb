"""The SupRank / HAPPIER recipes (`suprank_sop`, `suprank_inaturalist`, issue 23) against the
official configuration, their warm-up and proxies wiring, their smoke runs and their errors.

`tests/data/official_configs/suprank_values.json` transcribes the official yaml files and README
commands of elias-ramzi/SupRank (data, not code); `official_settings` derives from it the value
each setting must have and the file it comes from. `python tests/test_recipes_suprank.py` prints
the table of recipes/README.md.
"""

import json
import math
import pathlib

import numpy as np
import pytest
from settings_tables import cell, readme_table

from keras_roadmap.data.presets import PRESETS
from keras_roadmap.recipes import assembly
from keras_roadmap.recipes.catalog import CONFIG_DIR
from keras_roadmap.recipes.config import ConfigError, load_yaml, resolve_config
from keras_roadmap.recipes.run import main

REPO = pathlib.Path(__file__).resolve().parents[1]
OFFICIAL = json.loads((REPO / "tests" / "data" / "official_configs" / "suprank_values.json").read_text())
TABLE_START, TABLE_END = "<!-- suprank-settings-table:start -->", "<!-- suprank-settings-table:end -->"
CASES = [(recipe, loss) for recipe, entry in OFFICIAL["recipes"].items() for loss in entry["losses"]]


def official_settings(recipe: str, loss_profile: str) -> dict:
    """{setting: (official value, source)} for one recipe and loss profile."""
    entry, files = OFFICIAL["recipes"][recipe], OFFICIAL["files"]
    command = OFFICIAL["readme_commands"][entry["command"]]
    where = f"README command {entry['command']}"
    out = {}

    def put(key, value, source):
        out[key] = (value, source)

    default = files["default.yaml"]
    put("seed", command["seed"], where)
    if "max_iter" in command:
        put("epochs", command["max_iter"], where)
    else:
        put("epochs", default["max_iter"], "default.yaml (the command sets no max_iter)")
    put(
        "optimizer.warmup_epochs",
        command["warmup_step"],
        f"{where} (warmup_step; warmup_keys {default['warmup_keys']})",
    )
    put("memory.size", 0, f"default.yaml (memory: {default['memory']})")
    put("evaluation.every_n_epochs", default["test_eval_freq"], "default.yaml (test_eval_freq)")

    dataset_file = f"dataset/{command['dataset']}.yaml"
    dataset = files[dataset_file]
    sampler = dataset["sampler"]
    put(
        "sampler.name",
        {"HierarchicalSampler": "hierarchical", "MPerClassSampler": "m_per_class"}[sampler["name"]],
        dataset_file,
    )
    put("sampler.batch_size", sampler["batch_size"], dataset_file)
    put("sampler.samples_per_class", sampler["samples_per_class"], dataset_file)
    if "batches_per_super_tuple" in sampler:
        assert sampler["super_classes_per_batch"] == 2  # what our HierarchicalSampler draws
        put(
            "sampler.batches_per_super_pair",
            sampler["batches_per_super_tuple"],
            f"{dataset_file} (batches_per_super_tuple)",
        )
    put("evaluation.ks", dataset["recall_for_eval"], f"{dataset_file} (recall_for_eval)")
    train, test = dict(dataset["train"]), dict(dataset["test"])
    rrc = train["RandomResizedCrop"]
    size = test["Resize"]["size"]
    put(
        "transform",
        {
            "train_resize": train.get("Resize", {}).get("size"),
            "crop_size": rrc["size"],
            "scale": tuple(rrc["scale"]),
            "ratio": tuple(rrc["ratio"]),
            "flip": train["RandomHorizontalFlip"]["p"],
            "eval_resize": size[0] if isinstance(size, list) else size,
            "eval_square": isinstance(size, list),
        },
        f"{dataset_file} (transform)",
    )

    opt_file = f"optimizer/{command['optimizer']}.yaml"
    opt = files[opt_file]
    put("optimizer.name", opt["backbone"]["name"].lower(), opt_file)
    put("optimizer.backbone_lr", opt["backbone"]["lr"], opt_file)
    put(
        "optimizer.head_lr",
        opt["head"]["lr_mult"] * opt["backbone"]["lr"],
        f"{opt_file} (mult:{opt['head']['lr_mult']})",
    )
    put("optimizer.weight_decay", opt["backbone"]["weight_decay"], opt_file)
    put("optimizer.schedule", "cosine", f"{opt_file} ({opt['scheduler']['name']}, T_max {opt['scheduler']['T_max']})")
    put("optimizer.eta_min", opt["scheduler"]["eta_min"], opt_file)

    model_file = f"model/{command['model']}.yaml"
    model = files[model_file]
    put("model", model["backbone_name"], model_file)
    put("model.layer_norm", model["norm_features"], f"{model_file} (norm_features)")
    put(
        "model.pooling",
        "avg" if model["pooling"] == "default" else model["pooling"],
        f"{model_file} (pooling default: average)",
    )
    put("embedding_dim", model["embed_dim"], model_file)
    put("freeze_batchnorm", model["freeze_batch_norm"], model_file)
    put("mixed_precision", "mixed_float16" if model["with_autocast"] else "float32", f"{model_file} (with_autocast)")
    eval_file = f"evaluation/{entry['evaluation']}.yaml"
    put("evaluation.batch_size", files[eval_file]["inference_batch_size"], f"{eval_file} (inference_batch_size)")

    loss_file = f"loss/{entry['losses'][loss_profile]}.yaml"
    spec = files[loss_file]
    (first, first_kwargs), (second, second_kwargs) = spec["losses"]
    weights = spec["weight"] or [1 / len(spec["losses"])] * len(spec["losses"])
    weight_source = loss_file if spec["weight"] else f"{loss_file} (weight empty: getter.py gives 1/len each)"
    for key in ("tau", "rho", "offset", "delta", "start"):
        put(f"loss.{key}", first_kwargs[key], loss_file)
    first_weight = {
        "SupAPLoss": "ap_weight",
        "SupRecallLoss": "recall_weight",
        "SupHAPLoss": "hap_weight",
        "SupNDCGLoss": "ndcg_weight",
    }[first]
    put(f"loss.{first_weight}", weights[0], weight_source)
    if first == "SupRecallLoss":
        put("loss.at_k", first_kwargs["at_k"], loss_file)
        put("loss.temp", first_kwargs["temp"], loss_file)
    if first == "SupNDCGLoss":
        assert first_kwargs["hierarchy_level"] == "MULTI"
        put("loss.hierarchical", True, f"{loss_file} (hierarchy_level MULTI: graded relevance)")
    if first == "SupHAPLoss":
        assert first_kwargs["with_hrank"] is False  # beta, gamma, leak then unused
        put("loss.alpha", dataset["alpha"], f"{dataset_file} (alpha, relevance_type {dataset['relevance_type']})")
    if second == "CalibrationLoss":
        put("loss.calibration_weight", weights[1], weight_source)
        put("loss.pos_margin", second_kwargs["pos_margin"], loss_file)
        put("loss.neg_margin", second_kwargs["neg_margin"], loss_file)
    else:
        put("loss.cluster_weight", weights[1], loss_file)
        put("loss.temperature", second_kwargs["temperature"], loss_file)
        put("proxies.lr", second_kwargs["optimizer"]["lr"], f"{loss_file} (ClusterLoss optimizer)")
        put("proxies.weight_decay", second_kwargs["optimizer"]["weight_decay"], f"{loss_file} (ClusterLoss optimizer)")
        put("proxies.eta_min", second_kwargs["scheduler"]["eta_min"], f"{loss_file} (ClusterLoss scheduler)")
    return out


def resolved(recipe, loss=None, smoke=False, **overrides):
    raw = load_yaml(CONFIG_DIR / f"{recipe}.yaml")
    return resolve_config(raw, source=recipe, overrides={"loss": loss, **overrides}, smoke=smoke)


def our_settings(recipe: str, loss_profile: str) -> dict:
    config = resolved(recipe, loss_profile)
    loss = assembly.build_loss(config, num_classes=8, embedding_dim=config.embedding_dim)
    preset = PRESETS[config.transform]
    values = {
        "seed": config.seed,
        "epochs": config.epochs,
        "memory.size": config.memory["size"],
        "evaluation.every_n_epochs": config.evaluation["every_n_epochs"],
        "evaluation.ks": config.evaluation["ks"],
        "evaluation.batch_size": config.evaluation["batch_size"],
        "transform": {
            key: getattr(preset, key)
            for key in ("train_resize", "crop_size", "scale", "ratio", "flip", "eval_resize", "eval_square")
        },
        "model": config.model,
        "model.layer_norm": config.model_kwargs.get("layer_norm", False),
        "model.pooling": config.model_kwargs.get("pooling", "avg"),
        "embedding_dim": config.embedding_dim,
        "freeze_batchnorm": config.freeze_batchnorm,
        "mixed_precision": config.mixed_precision,
        **{f"sampler.{k}": v for k, v in config.sampler.items()},
        **{f"optimizer.{k}": v for k, v in config.optimizer.items()},
        **{f"loss.{k}": v for k, v in loss.get_config().items()},
        "loss.hierarchical": assembly.hierarchical_labels(config),
    }
    if loss.get_config().get("at_k") is not None:
        values["loss.at_k"] = list(loss.get_config()["at_k"])
    if getattr(loss, "proxies", None) is not None:
        optimizer = assembly.build_recipe_optimizer(config, steps_per_epoch=10, loss=loss)
        group = optimizer.group_learning_rates[loss.proxies.name]
        from keras_roadmap import _keras_compat

        values["proxies.lr"] = float(group(0))
        values["proxies.eta_min"] = group.eta_min
        decays = _keras_compat.uses_weight_decay(optimizer, loss.proxies.proxies)
        values["proxies.weight_decay"] = optimizer.decay_rate if decays else 0.0
        assert group.epochs == config.epochs  # T_max = max_iter
    return values


def _equal(ours, official):
    if isinstance(official, float) and isinstance(ours, (int, float)):
        return math.isclose(ours, official, rel_tol=1e-6, abs_tol=1e-12)
    return ours == official


@pytest.mark.parametrize("recipe,loss", CASES)
def test_every_setting_has_its_official_value(recipe, loss):
    official, ours = official_settings(recipe, loss), our_settings(recipe, loss)
    wrong = {
        key: (ours.get(key), value, src) for key, (value, src) in official.items() if not _equal(ours.get(key), value)
    }
    assert not wrong, f"{recipe} --loss {loss}: setting -> (ours, official, source): {wrong}"
    assert len(official) >= 30


def test_every_loss_profile_is_audited():
    for recipe, entry in OFFICIAL["recipes"].items():
        raw = load_yaml(CONFIG_DIR / f"{recipe}.yaml")
        assert sorted(raw["losses"]) == sorted(entry["losses"]), recipe
        assert raw["loss_profile"] == "roadmap_pp"
    assert not {k for k in OFFICIAL["not_transcribed"] if k.startswith("loss/")}


def test_the_warmup_trains_head_and_proxies_but_not_the_backbone():
    import keras

    config = resolved("suprank_sop", "happier", smoke=True)
    keras.utils.set_random_seed(0)
    encoder = assembly.build_encoder(config)
    trainer = assembly.build_trainer(config, encoder, steps_per_epoch=2, jit_compile=False, num_classes=4)
    proxies = trainer.encoder.get_layer("cluster_proxies").proxies  # the wrapped model owns them
    assert trainer.loss.proxies.proxies is proxies

    def values():
        return {v.path: v.numpy().copy() for v in encoder.trainable_variables}

    before, proxies_before = values(), proxies.numpy().copy()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    labels = np.array([[0, 0], [0, 0], [0, 1], [0, 1], [1, 2], [1, 2], [1, 3], [1, 3]])
    # The smoke profile warms up for 1 epoch of 2 steps: 2 steps frozen, then the backbone moves.
    trainer.fit(images, labels, batch_size=8, epochs=2, verbose=0, shuffle=False)
    after = values()
    moved = {p for p in before if not np.array_equal(before[p], after[p])}
    assert moved and all(p.startswith("head_") for p in moved), moved
    assert not np.array_equal(proxies.numpy(), proxies_before)
    trainer.fit(images, labels, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert any(not np.array_equal(after[p], v) for p, v in values().items() if not p.startswith("head_"))


def test_the_paper_profile_builds_resnet50_with_a_layer_norm():
    config = resolved("suprank_sop", "roadmap_pp", weights="none")
    config.image_size = 32  # the real profile, small images
    encoder = assembly.build_encoder(config)
    assert encoder.output_shape == (None, 512)
    assert encoder.get_layer("head_layer_norm").scale is False


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe,loss", [("suprank_sop", "happier"), ("suprank_inaturalist", None), ("suprank_inaturalist", "supndcg")]
)
def test_smoke_run(tmp_path, capsys, recipe, loss):
    out = tmp_path / recipe
    argv = ["--smoke", "--out", str(out)] + (["--loss", loss] if loss else [])
    assert main(recipe, argv, CONFIG_DIR / f"{recipe}.yaml") == 0
    assert "SMOKE MODE: tiny_cnn at 32x32" in capsys.readouterr().out
    result = json.loads((out / "test_metrics.json").read_text())
    assert all(math.isfinite(v) for v in result["metrics"].values())
    hierarchical = {"H-AP", "ASI", "NDCG"} & set(result["metrics"])
    assert hierarchical == ({"H-AP", "ASI", "NDCG"} if loss in ("happier", "supndcg") else set())
    logged = json.loads((out / "run_log.jsonl").read_text().splitlines()[0])["config"]
    name = {None: "roadmap_pp", "supndcg": "road_ndcg"}.get(loss, loss)
    assert logged["loss_profile"] == (loss or "roadmap_pp") and logged["loss"]["name"] == name
    assert (out / "embedder.onnx").stat().st_size > 0


@pytest.mark.parametrize(
    "recipe,argv,message",
    [
        ("suprank_sop", ["--loss", "ndcg"], "unknown loss profile 'ndcg'; this config defines"),
        ("suprank_sop", ["--loss", "supndcg", "--memory", "64"], "use --memory 0"),
        ("suprank_sop", ["--loss", "happier", "--memory", "64"], "use --memory 0"),
        ("sop", ["--loss", "happier"], "this config has no `losses:` profiles"),
    ],
)
def test_bad_loss_flags_stop_with_one_line(tmp_path, capsys, recipe, argv, message):
    assert main(recipe, ["--smoke", "--out", str(tmp_path / "run"), *argv], CONFIG_DIR / f"{recipe}.yaml") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "backup").exists()


def test_a_hierarchical_loss_needs_super_categories():
    from keras_roadmap.data.split import make_split
    from keras_roadmap.recipes.run import super_of_class

    flat = make_split("train", ["a", "b"], ["x", "y"])
    with pytest.raises(ConfigError, match="no super-categories"):
        super_of_class(flat)
    mixed = make_split("train", ["a", "b", "c"], ["x", "x", "y"], raw_super=["s", "t", "t"])
    with pytest.raises(ConfigError, match="two super-categories"):
        super_of_class(mixed)
    ok = make_split("train", ["a", "b", "c"], ["x", "x", "y"], raw_super=["s", "s", "t"])
    assert super_of_class(ok).tolist() == [0, 1]


def settings_table() -> str:
    """The markdown table of recipes/README.md: recipe / loss, setting, value, official source."""
    lines = ["| recipe / --loss | setting | value | official source |", "|---|---|---|---|"]
    for recipe, loss in CASES:
        ours = our_settings(recipe, loss)
        for key, (_value, source) in official_settings(recipe, loss).items():
            lines.append(f"| {recipe} / {loss} | `{key}` | {cell(ours[key])} | {source} |")
    return "\n".join(lines)


def test_recipes_readme_has_the_table():
    assert readme_table(TABLE_START, TABLE_END) == settings_table()


if __name__ == "__main__":
    print(settings_table())
