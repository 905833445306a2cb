"""The recipes start from the paper's ImageNet checkpoint, or refuse to start without
--random-init and say which file to get (smoke runs exempt)."""

import pytest

from keras_roadmap.recipes import main
from keras_roadmap.recipes.catalog import CONFIG_DIR
from keras_roadmap.recipes.config import ConfigError, load_yaml, resolve_config
from keras_roadmap.recipes.pretrained import find_checkpoint, resolve_pretrained

CONFIGS = CONFIG_DIR


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path


def _config(dataset="sop", **overrides):
    return resolve_config(load_yaml(CONFIGS / f"{dataset}.yaml"), overrides=overrides)


def test_recipe_refuses_random_weights_and_names_the_checkpoint(empty_caches, capsys):
    # Usage problems return exit status 2 with one error line (keras_roadmap.recipes.run).
    assert main("sop", ["--data-dir", str(empty_caches), "--out", str(empty_caches / "out")], CONFIGS / "sop.yaml") == 2
    err = capsys.readouterr().err
    assert "resnet50-0676ba61.pth" in err and "IMAGENET1K_V1" in err and "--random-init" in err
    assert (
        main(
            "cub",
            ["--data-dir", str(empty_caches), "--out", str(empty_caches / "out"), "--backbone", "deit_small"],
            CONFIGS / "cub.yaml",
        )
        == 2
    )
    assert "deit_small_distilled_patch16_224-649709d9.pth" in capsys.readouterr().err


@pytest.mark.parametrize("dataset", ["sop", "cub", "inshop", "inaturalist"])
def test_every_paper_profile_asks_for_its_checkpoint(empty_caches, dataset):
    raw = load_yaml(CONFIGS / f"{dataset}.yaml")
    for profile in raw["backbones"]:
        config = resolve_config(raw, overrides={"backbone": profile})
        assert config.weights == "pretrained", (dataset, profile)
        with pytest.raises(ConfigError, match="--random-init"):
            resolve_pretrained(config)


def test_random_init_and_smoke_are_allowed_and_explicit_weights_conflict(empty_caches):
    config = _config()
    resolve_pretrained(config, random_init=True)
    assert config.weights == "random"
    smoke = resolve_config(load_yaml(CONFIGS / "sop.yaml"), smoke=True)
    resolve_pretrained(smoke)
    assert smoke.weights == "random"
    smoke_resnet = resolve_config(load_yaml(CONFIGS / "sop.yaml"), smoke=True, overrides={"backbone": "resnet50"})
    resolve_pretrained(smoke_resnet)  # exempt even with a paper backbone
    assert smoke_resnet.weights == "random"
    explicit = _config(weights="my.weights.h5")
    with pytest.raises(ConfigError, match="contradict"):
        resolve_pretrained(explicit, random_init=True)
    resolve_pretrained(explicit)
    assert explicit.weights == "my.weights.h5"


def test_checkpoints_are_found_where_torchvision_and_timm_download_them(empty_caches):
    assert find_checkpoint("resnet50") is None
    torch_file = empty_caches / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    torch_file.parent.mkdir(parents=True)
    torch_file.write_bytes(b"")
    config = _config()
    resolve_pretrained(config)
    assert config.weights == str(torch_file)
    hf_file = (
        empty_caches
        / "hf"
        / "hub"
        / "models--timm--deit_small_distilled_patch16_224.fb_in1k"
        / "snapshots"
        / "abc123"
        / "model.safetensors"
    )
    hf_file.parent.mkdir(parents=True)
    hf_file.write_bytes(b"")
    assert find_checkpoint("deit_small_distilled") == str(hf_file)
    assert find_checkpoint("tiny_cnn") is None
