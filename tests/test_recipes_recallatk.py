"""The RS@k recipes (`recallatk_sop`, `recallatk_inaturalist`, issue 23) against the official
settings, their parts (GeM, the affine LayerNorm, the no-replacement sampler, the checkpoint
file, the chunked trainer), a smoke run and their errors.

`tests/data/official_configs/recallatk_values.json` transcribes yash0307/RecallatK_surrogate
(argparse defaults and per-dataset overrides of `src/main.py`, the README command, the
transforms, model and loss of `src/`): data, not code. `official_settings` derives from it the
value each setting must have and where it comes from. `python tests/test_recipes_recallatk.py`
prints the table of recipes/README.md.
"""

import json
import math
import pathlib

import keras
import numpy as np
import pytest
from settings_tables import cell, readme_table

from keras_roadmap.data.presets import PRESETS
from keras_roadmap.models import GeMPooling, build_embedder
from keras_roadmap.recipes import assembly
from keras_roadmap.recipes.catalog import CONFIG_DIR
from keras_roadmap.recipes.config import ConfigError, load_yaml, resolve_config
from keras_roadmap.recipes.pretrained import resolve_pretrained
from keras_roadmap.recipes.run import main
from keras_roadmap.samplers import NoReplacementSampler

REPO = pathlib.Path(__file__).resolve().parents[1]
OFFICIAL = json.loads((REPO / "tests" / "data" / "official_configs" / "recallatk_values.json").read_text())
TABLE_START, TABLE_END = "<!-- recallatk-settings-table:start -->", "<!-- recallatk-settings-table:end -->"
RECIPES = {"recallatk_sop": "sop", "recallatk_inaturalist": "Inaturalist"}


def official_settings(recipe: str) -> dict:
    """{setting: (official value, source)} for one recipe."""
    dataset = RECIPES[recipe]
    defaults, command = OFFICIAL["main_py_defaults"], OFFICIAL["readme_command"]
    overrides = OFFICIAL["main_py_dataset_overrides"][dataset]
    arch = {**overrides, **overrides[defaults["arch"]]}
    data, net = OFFICIAL["datasets_py"], OFFICIAL["netlib_py"]
    out = {}

    def put(key, value, source):
        out[key] = (value, source)

    def main_py(name):
        """(value, source) of a src/main.py setting: the dataset's override, else the default."""
        if name in overrides[defaults["arch"]]:
            return arch[name], f"src/main.py ({dataset}, {defaults['arch']})"
        if name in overrides:
            return arch[name], f"src/main.py ({dataset})"
        return defaults[name], "src/main.py (argparse default)"

    put("seed", *main_py("seed"))
    put("epochs", *main_py("n_epochs"))
    put("sampler.batch_size", *main_py("bs"))
    put("sampler.samples_per_class", command["samples_per_class"], "README command")
    put("sampler.name", "no_replacement", "src/datasets.py (TrainDatasetrsk)")
    put("chunk_size", *main_py("bs_base"))
    put("evaluation.batch_size", main_py("bs_base")[0], "src/datasets.py (test loaders: batch bs_base)")
    put("evaluation.ks", *main_py("k_vals"))
    assert defaults["infrequent_eval"] == 1
    put("evaluation.every_n_epochs", 5, "src/main.py (infrequent_eval 1: epoch_freq 5)")
    put("memory.size", 0, "src/main.py (no memory)")
    put("mixed_precision", "float32", "src/main.py (no autocast)")

    name, where = main_py("opt")
    put("optimizer.name", name, where)
    put("optimizer.backbone_lr", *main_py("lr"))
    assert command["fc_lr_mul"] == 0  # 0: the embedding layer shares the learning rate
    put("optimizer.head_lr", main_py("lr")[0], "README command (fc_lr_mul 0: one learning rate)")
    put("optimizer.weight_decay", *main_py("decay"))
    assert defaults["scheduler"] == "step"
    put("optimizer.milestones", *main_py("tau"))
    put("optimizer.gamma", *main_py("gamma"))

    assert command["loss"] == "recallatk" and command["mixup"] == 0
    put("loss.name", "rsk", "README command (--loss recallatk --mixup 0)")
    put("loss.tau", *main_py("sigmoid_temperature"))
    put("loss.k_values", *main_py("k_vals_train"))
    put("loss.k_temperatures", [1.0] * len(defaults["k_vals_train"]), "src/main.py ([1] * len(k_vals): 1 for each k)")
    put("loss.include_self", True, "src/losses.py (the query stays in the ranking)")

    rrc = data["train_transform"]["RandomResizedCrop"]
    put(
        "transform",
        {
            "train_resize": None,
            "crop_size": rrc["size"],
            "scale": tuple(rrc["scale"]),
            "ratio": tuple(rrc["ratio"]),
            "flip": data["train_transform"]["RandomHorizontalFlip"]["p"],
            "eval_resize": data["test_transform"]["Resize"]["size"],
            "eval_square": False,
        },
        "src/datasets.py (torchvision defaults for scale, ratio)",
    )
    put("model", defaults["arch"], "src/main.py (--arch)")
    put("model.pooling", net["pooling"]["name"].lower(), "src/netlib.py (GeM, p 3, trainable)")
    put("model.layer_norm", "affine" if net["layer_norm"]["affine"] else True, "src/netlib.py (torch LayerNorm)")
    put("embedding_dim", command["embed_dim"], "README command")
    put("freeze_batchnorm", True, "src/netlib.py (BatchNorm2d eval, train disabled)")
    put("checkpoint", "resnet50-19c8e357.pth", "src/netlib.py (pretrainedmodels resnet50, imagenet)")
    return out


def resolved(recipe, smoke=False, **overrides):
    return resolve_config(load_yaml(CONFIG_DIR / f"{recipe}.yaml"), source=recipe, overrides=overrides, smoke=smoke)


def our_settings(recipe: str) -> dict:
    config = resolved(recipe)
    loss = assembly.build_loss(config)
    preset = PRESETS[config.transform]
    optimizer = assembly.build_recipe_optimizer(config, steps_per_epoch=10)
    return {
        "seed": config.seed,
        "epochs": config.epochs,
        "chunk_size": config.chunk_size,
        "memory.size": config.memory["size"],
        "mixed_precision": config.mixed_precision,
        **{f"sampler.{k}": v for k, v in config.sampler.items()},
        **{f"evaluation.{k}": v for k, v in config.evaluation.items()},
        "optimizer.name": {("TorchAdam", "coupled"): "adam"}.get((type(optimizer).__name__, optimizer.decay_style)),
        "optimizer.backbone_lr": float(optimizer.learning_rate),
        "optimizer.head_lr": float(optimizer.learning_rate) * optimizer.lr_factor_for("head_projection/kernel"),
        "optimizer.weight_decay": optimizer.decay_rate,
        "optimizer.milestones": config.optimizer["milestones"],
        "optimizer.gamma": config.optimizer["gamma"],
        **{f"loss.{k}": v for k, v in loss.get_config().items()},
        "loss.name": "rsk" if type(loss) is assembly.loss_class("rsk") else type(loss).__name__,
        "transform": {
            key: getattr(preset, key)
            for key in ("train_resize", "crop_size", "scale", "ratio", "flip", "eval_resize", "eval_square")
        },
        "model": config.model,
        "model.pooling": config.model_kwargs.get("pooling", "avg"),
        "model.layer_norm": config.model_kwargs.get("layer_norm", False),
        "embedding_dim": config.embedding_dim,
        "freeze_batchnorm": config.freeze_batchnorm,
        "checkpoint": config.checkpoint,
    }


def _equal(ours, official):
    if isinstance(official, float) and isinstance(ours, (int, float)):
        return math.isclose(ours, official, rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(official, (list, tuple)) and isinstance(ours, (list, tuple)):
        return len(ours) == len(official) and all(_equal(a, b) for a, b in zip(ours, official, strict=True))
    if isinstance(official, dict) and isinstance(ours, dict):
        return ours.keys() == official.keys() and all(_equal(ours[k], official[k]) for k in official)
    return ours == official


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_setting_has_its_official_value(recipe):
    official, ours = official_settings(recipe), our_settings(recipe)
    wrong = {
        key: (ours.get(key), value, src) for key, (value, src) in official.items() if not _equal(ours.get(key), value)
    }
    assert not wrong, f"{recipe}: setting -> (ours, official, source): {wrong}"
    assert len(official) >= 29  # every setting above, none skipped


def test_gem_pooling_is_the_generalised_mean_and_learns_its_exponent():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 3, 4, 5)).astype("float32")
    layer = GeMPooling()
    got = keras.ops.convert_to_numpy(layer(features))
    expected = np.mean(np.maximum(features, 1e-6) ** 3.0, axis=(1, 2)) ** (1 / 3.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert [w.name for w in layer.trainable_weights] == ["p"]
    # p = 1 is average pooling of the clamped features.
    layer.p.assign([1.0])
    np.testing.assert_allclose(layer(features), np.maximum(features, 1e-6).mean(axis=(1, 2)), rtol=1e-5)
    assert GeMPooling.from_config(GeMPooling(p=2.5).get_config()).initial_p == 2.5
    with pytest.raises(ValueError, match="GeMPooling takes"):
        GeMPooling()(features[:, 0])
    with pytest.raises(ValueError, match="p"):
        GeMPooling(p=0)


def test_the_smoke_head_has_gem_and_an_affine_layer_norm_and_round_trips(tmp_path):
    model = build_embedder(
        "tiny_cnn", input_shape=(16, 16, 3), embedding_dim=8, width=4, pooling="gem", layer_norm="affine"
    )
    norm = model.get_layer("head_layer_norm")
    assert norm.center and norm.scale
    assert model.get_layer("head_gem_pool").p.trainable
    path = tmp_path / "m.keras"
    model.save(path)
    images = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(keras.models.load_model(path)(images), model(images), atol=1e-6)
    with pytest.raises(ValueError, match="layer_norm must be one of"):
        build_embedder("tiny_cnn", input_shape=(16, 16, 3), layer_norm="yes")


def test_gem_and_the_layer_norm_train_and_decay_like_every_other_parameter():
    # src/main.py optimises model.parameters() in one group: GeM's p and the LayerNorm's scale and
    # offset get the same learning rate and the coupled weight decay.
    from keras_roadmap import _keras_compat

    config = resolved("recallatk_sop", smoke=True)
    encoder = assembly.build_encoder(config)
    trainer = assembly.build_trainer(config, encoder, steps_per_epoch=2, jit_compile=False)
    head = {v.path: v for v in encoder.trainable_variables if v.path.startswith(("head_gem_pool", "head_layer_norm"))}
    assert sorted(head) == ["head_gem_pool/p", "head_layer_norm/beta", "head_layer_norm/gamma"]
    optimizer = trainer.optimizer
    assert all(_keras_compat.uses_weight_decay(optimizer, v) for v in head.values())
    assert all(optimizer.lr_factor_for(path) == 1.0 for path in head) and optimizer.decay_rate == 4e-4
    rng = np.random.default_rng(0)
    images = rng.normal(size=(16, 32, 32, 3)).astype("float32")
    before = {path: v.numpy().copy() for path, v in head.items()}
    trainer.train_on_batch(images, np.repeat(np.arange(4), 4).astype("int32"))
    assert all(not np.array_equal(before[path], v.numpy()) for path, v in head.items())


def _official_rule_batches(sizes, per_batch, m, rng):
    """The number of batches of TrainDatasetrsk.reshuffle for class sizes `sizes` (its rule:
    sweep the shuffled classes, take m images of each class that still has m, stop at the first
    sweep that cannot fill a batch)."""
    left = np.array(sizes)
    order = rng.permutation(len(sizes))
    count = 0
    while True:
        chosen = order[left[order] >= m][:per_batch]
        if len(chosen) < per_batch:
            return count
        left[chosen] -= m
        count += 1


def test_the_no_replacement_sampler_uses_each_image_once_per_epoch():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 13, size=300)  # SOP-like class sizes, some below m
    labels = np.repeat(np.arange(300) * 7, sizes)  # non-contiguous ids
    sampler = NoReplacementSampler(labels, batch_size=160, samples_per_class=4, seed=3)
    official = {_official_rule_batches(sizes, 40, 4, rng) for _ in range(30)}
    assert len(sampler) >= max(official)  # the most the class sizes allow
    for epoch in (0, 1):
        batches = sampler.batches(epoch)
        assert batches.shape == (len(sampler), 160)
        assert len(np.unique(batches)) == batches.size  # no image twice in an epoch
        blocks = labels[batches].reshape(len(sampler), 40, 4)
        assert (blocks == blocks[:, :, :1]).all()  # class blocks of m
        assert all(len(set(b[:, 0])) == 40 for b in blocks)  # distinct classes per batch
        assert np.isin(labels[batches], np.arange(300)[sizes < 4] * 7).sum() == 0
    assert np.array_equal(sampler.batches(1), NoReplacementSampler(labels, 160, 4, seed=3).batches(1))
    assert not np.array_equal(sampler.batches(0), sampler.batches(1))
    with pytest.raises(ValueError, match="only 2 classes have that many"):
        NoReplacementSampler(np.repeat([0, 1, 2], [4, 4, 3]), batch_size=12, samples_per_class=4)


def test_the_checkpoint_file_is_the_one_asked_for_and_found(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="resnet50-19c8e357.pth"):
        resolve_pretrained(resolved("recallatk_sop"))
    wanted = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-19c8e357.pth"
    wanted.parent.mkdir(parents=True)
    (wanted.parent / "resnet50-0676ba61.pth").write_bytes(b"x")  # another file is not taken
    with pytest.raises(ConfigError):
        resolve_pretrained(resolved("recallatk_sop"))
    wanted.write_bytes(b"x")
    config = resolved("recallatk_sop")
    resolve_pretrained(config)
    assert config.weights == str(wanted)


@pytest.mark.slow
def test_smoke_run_trains_in_chunks(tmp_path, capsys):
    out = tmp_path / "run"
    assert main("recallatk_sop", ["--smoke", "--out", str(out), "--chunk-size", "4"]) == 0
    assert "SMOKE MODE: tiny_cnn at 32x32" in capsys.readouterr().out
    result = json.loads((out / "test_metrics.json").read_text())
    assert all(math.isfinite(v) for v in result["metrics"].values())
    logged = json.loads((out / "run_log.jsonl").read_text().splitlines()[0])["config"]
    assert logged["chunk_size"] == 4 and logged["sampler"]["name"] == "no_replacement"
    assert logged["loss"]["name"] == "rsk"
    assert (out / "embedder.onnx").stat().st_size > 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--chunk-size", "17"], "chunk_size 17 is larger than the batch (16)"),
        (["--chunk-size", "0"], "chunk_size must be a positive integer"),
        (["--loss", "happier"], "this config has no `losses:` profiles"),
    ],
)
def test_bad_flags_stop_with_one_line(tmp_path, capsys, argv, message):
    assert main("recallatk_inaturalist", ["--smoke", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "backup").exists()


def settings_table() -> str:
    """The markdown table of recipes/README.md: recipe, setting, value, official source."""
    lines = ["| recipe | setting | value | official source |", "|---|---|---|---|"]
    for recipe in RECIPES:
        ours = our_settings(recipe)
        for key, (_value, source) in official_settings(recipe).items():
            lines.append(f"| {recipe} | `{key}` | {cell(ours[key])} | {source} |")
    return "\n".join(lines)


def test_recipes_readme_has_the_table():
    assert readme_table(TABLE_START, TABLE_END) == settings_table()


if __name__ == "__main__":
    print(settings_table())
