"""Recipe configs, flags, smoke datasets and checkpoint helpers (fast, no training)."""

import json

import numpy as np
import pytest

from keras_roadmap import data
from keras_roadmap.recipes import assembly
from keras_roadmap.recipes.catalog import CONFIG_DIR
from keras_roadmap.recipes.checkpoints import BestEmbedderCheckpoint, backup_epoch
from keras_roadmap.recipes.config import ConfigError, load_yaml, resolve_config
from keras_roadmap.recipes.run import build_parser, config_from_args, format_table, main
from keras_roadmap.recipes.smoke_data import write_smoke_dataset

CONFIGS = CONFIG_DIR
DATASETS = ("sop", "cub", "inaturalist", "inshop")


def resolved(dataset, **overrides):
    return resolve_config(load_yaml(CONFIGS / f"{dataset}.yaml"), source=dataset, overrides=overrides)


# ------------------------------------------------------------------- paper settings in the files


def test_sop_config_holds_the_paper_setting():
    resnet, deit = resolved("sop"), resolved("sop", backbone="deit_small")
    assert resnet.sampler == {
        "name": "hierarchical",
        "batch_size": 128,
        "samples_per_class": 4,
        "batches_per_super_pair": 10,
    }
    assert (resnet.model, resnet.embedding_dim, resnet.epochs, resnet.seed) == ("resnet50", 512, 100, 333)
    o = resnet.optimizer
    assert (o["name"], o["backbone_lr"], o["head_lr"], o["weight_decay"], o["milestones"], o["gamma"]) == (
        "adam",
        1e-5,
        2e-5,
        1e-4,
        [30, 70],
        0.3,
    )
    assert (deit.epochs, deit.optimizer["name"], deit.optimizer["milestones"]) == (75, "adamw", [25, 50])
    assert resolved("sop", memory="official").memory["size"] == 59551 and resnet.memory["size"] == 0
    assert resnet.evaluation["ks"] == [1, 10, 100, 1000]


def test_cub_config_holds_the_paper_setting():
    c = resolved("cub")
    assert c.model == "resnet50_max_ln" and c.epochs == 200 and resolved("cub", backbone="deit_small").epochs == 150
    assert c.sampler == {"name": "m_per_class", "batch_size": 128, "samples_per_class": 4}
    assert (c.optimizer["name"], c.optimizer["backbone_lr"], c.optimizer["weight_decay"]) == ("adam", 1e-6, 4e-4)
    m = resolved("cub", memory="official").memory
    assert (m["size"], m["unique"]) == (5824, True)
    assert c.evaluation["ks"] == [1, 2, 4, 8]


def test_inaturalist_and_inshop_configs():
    inat = resolved("inaturalist")
    assert (inat.sampler["batch_size"], inat.epochs, inat.loss["preset"]) == (384, 90, "inaturalist")
    m = resolved("inaturalist", memory="official").memory
    assert (m["size"], m["unique"]) == (60000, False)
    assert inat.evaluation["ks"] == [1, 4, 16, 32]
    shop = resolved("inshop")
    assert shop.sampler == {
        "name": "hierarchical",
        "batch_size": 128,
        "samples_per_class": 8,
        "batches_per_super_pair": 4,
    }
    assert shop.evaluation["ks"] == [1, 10, 20, 30, 40, 50]


def test_inaturalist_loss_uses_the_inaturalist_supap_settings():
    loss = assembly.build_loss(resolved("inaturalist")).get_config()
    assert (loss["start"], loss["offset"]) == (0.0, 1.0)
    default = assembly.build_loss(resolved("sop")).get_config()
    assert (default["start"], default["offset"]) == (0.5, 1.44)


def test_optimizer_follows_the_profile():
    from keras_roadmap.optim import TorchAdam

    sop = assembly.build_recipe_optimizer(resolved("sop"), steps_per_epoch=10)
    assert isinstance(sop, TorchAdam) and sop.decay_style == "coupled" and sop.lr_multipliers == {"head_": 2.0}
    rates = []
    for step in (0, 299, 300, 700):  # epochs 0, 29, 30, 70 at 10 steps per epoch
        sop.iterations.assign(step)
        rates.append(float(sop.learning_rate))
    np.testing.assert_allclose(rates, [1e-5, 1e-5, 3e-6, 9e-7], rtol=1e-6)
    deit = assembly.build_recipe_optimizer(resolved("sop", backbone="deit_small"), steps_per_epoch=10)
    assert deit.decay_style == "decoupled" and deit.lr_multipliers == {}
    cub = assembly.build_recipe_optimizer(resolved("cub"), steps_per_epoch=10)
    assert float(cub.learning_rate) == pytest.approx(1e-6)


# -------------------------------------------------------------------------- flags and errors


def args_for(dataset, *argv):
    return config_from_args(
        dataset, build_parser(dataset).parse_args(["--out", "x", *argv]), CONFIGS / f"{dataset}.yaml"
    )


def test_flags_override_the_file():
    c = args_for(
        "sop", "--epochs", "3", "--batch-size", "64", "--memory", "1000", "--weights", "none", "--eval-every", "2"
    )
    assert (c.epochs, c.sampler["batch_size"], c.memory["size"], c.weights) == (3, 64, 1000, None)
    assert c.evaluation["every_n_epochs"] == 2
    smoke = args_for("cub", "--smoke")
    assert (smoke.model, smoke.image_size, smoke.smoke) == ("tiny_cnn", 32, True)
    assert args_for("cub", "--smoke", "--backbone", "resnet50").model == "resnet50"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"backbone": "vgg16"}, "unknown backbone profile 'vgg16'"),
        ({"batch_size": 130}, "not a multiple of samples_per_class"),
        ({"batch_size": 12}, "batch_size / samples_per_class must be even"),
        ({"memory": "lots"}, "--memory must be"),
        ({"memory": -5}, "memory size must be >= 0"),
        ({"epochs": 0}, "epochs must be a positive integer"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolved("sop", **overrides)


def test_bad_config_files_name_the_problem(tmp_path):
    raw = load_yaml(CONFIGS / "sop.yaml")
    with pytest.raises(ConfigError, match="`dataset` must be one of"):
        resolve_config({**raw, "dataset": "mnist"})
    with pytest.raises(ConfigError, match="`sampler.name` must be one of"):
        resolve_config({**raw, "sampler": {**raw["sampler"], "name": "random"}})
    with pytest.raises(ConfigError, match="missing key `backbones`"):
        resolve_config({k: v for k, v in raw.items() if k != "backbones"}, source="mine.yaml")
    with pytest.raises(FileNotFoundError, match="Recipe config not found"):
        load_yaml(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_yaml(tmp_path / "list.yaml")


def test_cli_errors_are_one_line_messages(tmp_path, capsys):
    # Usage problems return exit status 2 with one `...: error: ...` line (no SystemExit, no traceback).
    assert main("cub", ["--out", str(tmp_path)], CONFIGS / "cub.yaml") == 2
    assert "--data-dir is required" in capsys.readouterr().err
    assert (
        main(
            "cub",
            ["--out", str(tmp_path), "--config", str(CONFIGS / "sop.yaml"), "--data-dir", "x"],
            CONFIGS / "cub.yaml",
        )
        == 2
    )
    assert "is a config for 'sop', not 'cub'" in capsys.readouterr().err
    assert main("cub", ["--out", str(tmp_path), "--data-dir", "x", "--resume"], CONFIGS / "cub.yaml") == 2
    err = capsys.readouterr().err
    assert "no backup to continue from" in err and len(err.strip().splitlines()) == 1
    status = main(
        "cub",
        ["--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "empty"), "--random-init"],
        CONFIGS / "cub.yaml",
    )
    assert status == 2 and "CUB images list not found" in capsys.readouterr().err
    status = main("cub", ["--smoke", "--out", str(tmp_path / "s"), "--batch-size", "64"], CONFIGS / "cub.yaml")
    assert status == 2 and "do not fit cub/train" in capsys.readouterr().err


def test_format_table_lists_the_dataset_ks_then_map_at_r():
    metrics = {"recall@1": 0.5, "recall@2": 0.75, "recall@4": 0.875, "recall@8": 1.0, "map@r": 0.25}
    table = format_table(resolved("cub"), metrics).splitlines()
    assert table[0] == "| R@1 | R@2 | R@4 | R@8 | mAP@R |"
    assert table[2] == "| 50.00 | 75.00 | 87.50 | 100.00 | 25.00 |"


# ------------------------------------------------------------------------------ smoke data


@pytest.mark.parametrize("dataset", DATASETS)
def test_smoke_trees_are_read_by_the_real_readers(tmp_path, dataset):
    shape = {"supers": 2, "classes_per_super": 3, "images_per_class": 3}
    root = write_smoke_dataset(dataset, tmp_path / dataset, shape)
    splits = assembly.load_splits(dataset, root)
    assert len(splits.train) == 18 and splits.train.num_classes == 6
    if dataset == "inshop":
        assert len(splits.query) == 6 and len(splits.gallery) == 12
        np.testing.assert_array_equal(np.unique(splits.query.labels), np.unique(splits.gallery.labels))
    else:
        assert len(splits.gallery) == 18 and splits.gallery.num_classes == 6
        assert not set(splits.train.class_names) & set(splits.gallery.class_names)
    if dataset != "cub":
        assert len(splits.train.super_class_names) == 2
    # The images decode in the real pipeline.
    batch = next(iter(data.make_eval_dataset(splits.train, 4, image_size=32)))
    assert batch[0].shape == (4, 32, 32, 3)


def test_smoke_dataset_rejects_unknown_names_and_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="No smoke dataset for 'mnist'"):
        write_smoke_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="images_per_class"):
        write_smoke_dataset("cub", tmp_path, {"images_per_class": 0})


def test_hierarchical_sampler_needs_super_labels(tmp_path):
    root = write_smoke_dataset("cub", tmp_path / "cub")
    config = resolved("cub")
    config.sampler = {"name": "hierarchical", "batch_size": 8, "samples_per_class": 2, "batches_per_super_pair": 1}
    with pytest.raises(ConfigError, match="has no super-categories"):
        assembly.build_sampler(config, assembly.load_splits("cub", root).train)
    config.sampler = {"name": "m_per_class", "batch_size": 64, "samples_per_class": 4}
    with pytest.raises(ConfigError, match="do not fit cub/train: .*16"):
        assembly.build_sampler(config, assembly.load_splits("cub", root).train)


# ------------------------------------------------------------------------------ checkpoints


def test_backup_epoch_reads_the_backup_and_rejects_a_corrupt_one(tmp_path):
    assert backup_epoch(tmp_path / "none") == 0
    # A backup written by keras.callbacks.BackupAndRestore (older runs) is still read.
    (tmp_path / "latest.weights.h5").write_bytes(b"weights")
    (tmp_path / "training_metadata.json").write_text(json.dumps({"epoch": 7, "batch": 0}))
    assert backup_epoch(tmp_path) == 7
    (tmp_path / "training_metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="delete .* to start over"):
        backup_epoch(tmp_path)


def _tiny_embedder(seed):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.UnitNormalization()])


def test_best_embedder_checkpoint_saves_the_embedder_on_improvement_only(tmp_path):
    import keras

    embedder = _tiny_embedder(0)
    trainer = keras.Sequential([embedder, keras.layers.Dense(2)])  # stands for the wrapping trainer
    path = tmp_path / "best.keras"
    checkpoint = BestEmbedderCheckpoint(embedder, str(path), verbose=0)
    checkpoint.set_model(trainer)
    checkpoint.on_epoch_end(0, {"loss": 1.0})  # no evaluation this epoch: nothing saved
    assert not path.exists()
    checkpoint.on_epoch_end(1, {"val_map@r": 0.5})
    saved = keras.models.load_model(path)
    assert saved.output_shape == (None, 3)  # the embedder, not the trainer
    np.testing.assert_array_equal(saved.get_weights()[0], embedder.get_weights()[0])
    assert json.loads((tmp_path / "best.keras.best.json").read_text())["epoch"] == 1

    # A resumed run knows the best value: a worse model does not overwrite the file.
    other = _tiny_embedder(1)
    resumed = BestEmbedderCheckpoint(other, str(path), verbose=0)
    resumed.set_model(other)
    resumed.on_epoch_end(2, {"val_map@r": 0.4})
    np.testing.assert_array_equal(keras.models.load_model(path).get_weights()[0], embedder.get_weights()[0])
    resumed.on_epoch_end(3, {"val_map@r": 0.6})
    np.testing.assert_array_equal(keras.models.load_model(path).get_weights()[0], other.get_weights()[0])
    assert json.loads((tmp_path / "best.keras.best.json").read_text()) == {
        "best": 0.6,
        "epoch": 3,
        "monitor": "val_map@r",
    }


def test_resumed_training_stream_continues_the_uninterrupted_one(tmp_path):
    """A run resumed at epoch k reads exactly the batches an unbroken run reads from epoch k."""
    from keras_roadmap.recipes.run import _datasets

    config = resolve_config(load_yaml(CONFIGS / "sop.yaml"), source="sop", smoke=True)
    splits = assembly.load_splits("sop", write_smoke_dataset("sop", tmp_path / "sop"))
    sampler = assembly.build_sampler(config, splits.train)
    steps = len(sampler)
    unbroken = [b for b in _datasets(config, splits, sampler, first_epoch=0)[0].take(3 * steps)]
    resumed = [b for b in _datasets(config, splits, sampler, first_epoch=2)[0].take(steps)]
    for (images, labels), (images_r, labels_r) in zip(unbroken[2 * steps :], resumed, strict=False):
        np.testing.assert_array_equal(labels, labels_r)
        np.testing.assert_array_equal(images, images_r)
    assert not np.array_equal(unbroken[0][1], resumed[0][1]) or not np.array_equal(unbroken[0][0], resumed[0][0])
