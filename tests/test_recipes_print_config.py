"""`keras-roadmap train NAME --print-config`: the printed file, passed back with `--config`,
gives the same run as the flags it was printed with; bad flags fail as in training."""

import pytest
import yaml

from keras_roadmap.cli import main as cli
from keras_roadmap.recipes.catalog import RECIPES, config_path
from keras_roadmap.recipes.run import build_parser, config_from_args, main


def _resolved(dataset, argv):
    return config_from_args(dataset, build_parser(dataset).parse_args(argv), config_path(dataset)).to_dict()


def _printed(dataset, argv, capsys):
    assert main(dataset, ["--print-config", *argv]) == 0
    captured = capsys.readouterr()
    assert not captured.err, captured.err
    return captured.out


@pytest.mark.parametrize(
    "dataset, flags, smoke",
    [
        ("glyphs", [], False),
        (
            "glyphs",
            ["--epochs", "3", "--batch-size", "16", "--memory", "official", "--eval-every", "2", "--seed", "5"],
            True,
        ),
        ("sop", ["--backbone", "deit_small", "--epochs", "2", "--weights", "none", "--batch-size", "64"], False),
        ("cub", ["--memory", "64", "--eval-every", "3"], False),
        ("inshop", ["--epochs", "1"], True),
        ("inaturalist", [], True),
    ],
)
def test_printed_config_reproduces_the_flags(dataset, flags, smoke, capsys, tmp_path):
    mode = ["--smoke"] if smoke else []
    text = _printed(dataset, [*flags, *mode], capsys)
    assert text.startswith(f"# recipes/{dataset}.py --print-config: {config_path(dataset)}")
    path = tmp_path / "edited.yaml"
    path.write_text(text)
    assert _resolved(dataset, ["--config", str(path), *mode]) == _resolved(dataset, [*flags, *mode])
    if not flags:  # nothing to apply: the file itself, comments included
        assert text.split("\n", 2)[2] == config_path(dataset).read_text()


def test_a_backbone_chosen_for_a_smoke_run_becomes_the_smoke_profile(capsys, tmp_path):
    flags = ["--smoke", "--backbone", "deit_small", "--epochs", "1"]
    path = tmp_path / "edited.yaml"
    path.write_text(_printed("sop", flags, capsys))
    rerun, original = _resolved("sop", ["--config", str(path), "--smoke"]), _resolved("sop", flags)
    assert rerun.pop("backbone") == "smoke" and original.pop("backbone") == "deit_small"
    assert rerun == original and rerun["model"].startswith("deit_small")  # not the tiny smoke model


def test_an_edit_of_the_printed_config_is_what_trains(capsys, tmp_path):
    raw = yaml.safe_load(_printed("glyphs", [], capsys))
    raw["backbones"]["tiny_cnn"]["embedding_dim"] = 48
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert _resolved("glyphs", ["--config", str(path)])["embedding_dim"] == 48


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--backbone", "resnet9000"], "unknown backbone profile 'resnet9000'"),
        (["--batch-size", "30"], "not a multiple of samples_per_class"),
        (["--eval-every", "0"], "--eval-every must be >= 1"),
    ],
)
def test_bad_flags_fail_as_in_training(argv, fragment, capsys):
    assert cli(["train", "glyphs", "--print-config", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("keras-roadmap train glyphs: error:") and fragment in err, err
    assert not captured.out


def test_train_without_out_is_one_error_line(capsys):
    assert cli(["train", "glyphs"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out DIR is required" in err and "--print-config" in err, err


def test_every_recipe_prints_its_packaged_config(capsys):
    for name in RECIPES:
        assert cli(["train", name, "--print-config"]) == 0
        out = capsys.readouterr().out
        assert yaml.safe_load(out) == yaml.safe_load(config_path(name).read_text())
