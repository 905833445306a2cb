"""docs/own-images.md, end to end: its commands run exactly as written (a kill in the middle of
training and the rerun included), and `train custom` refuses bad input before writing anything."""

import csv
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from keras_roadmap.recipes import custom as custom_recipe

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "own-images.md"


def doc_commands():
    blocks = re.findall(r"```console\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    return [line for block in blocks for line in block.strip().splitlines()]


def environment(home):
    env = dict(
        os.environ, HOME=str(home), PYTHONPATH=str(REPO), MPLCONFIGDIR=str(home / "mpl"), TF_CPP_MIN_LOG_LEVEL="2"
    )
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    env.pop("KERAS_ROADMAP_TEST_STALL_IN", None)
    return env


def rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return sorted(
            (r["label"], os.path.realpath(os.path.join(os.path.dirname(path), r["path"])), r["split"])
            for r in csv.DictReader(handle)
        )


@pytest.mark.slow
def test_the_page_runs_as_written_and_resumes_after_a_kill(tmp_path):
    commands = doc_commands()
    assert [c.split()[0] for c in commands] == ["python", "keras-roadmap", "keras-roadmap"]
    env = environment(tmp_path)
    for command in commands[:2]:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
    assert "held out as gallery-only" not in done.stdout  # no single-image class in the glyph folder
    assert "Converted: 782 image(s) grayscale -> RGB" in done.stdout

    train = commands[2]
    mark = tmp_path / "stalled"
    stalled = dict(env, KERAS_ROADMAP_TEST_STALL_IN="history_write:2", KERAS_ROADMAP_TEST_STALL_MARK=str(mark))
    process = subprocess.Popen(
        train,
        shell=True,
        cwd=tmp_path,
        env=stalled,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 900
        while not mark.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert mark.exists(), "the run never reached the end of epoch 2 (epoch 1 backed up)"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    run_dir = tmp_path / "my_run"
    assert not (run_dir / "test_metrics.json").exists()

    done = subprocess.run(train, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resuming from epoch 1" in done.stdout
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    keys = {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "map"}
    assert keys <= set(metrics["trained"]) and keys <= set(metrics["untrained"])
    assert metrics["trained"]["num_queries"] == metrics["untrained"]["num_queries"] > 0
    assert metrics["trained"] != metrics["untrained"]
    for name in ("embedder.keras", "embedder.onnx", "config.yaml", "split.report.json"):
        assert (run_dir / name).is_file(), name
    assert rows(run_dir / "split.csv") == rows(tmp_path / "my_split.csv")  # the same split as prepare
    config = (run_dir / "config.yaml").read_text()
    assert "image_size: 32" in config and "calibration_warmup_steps: 4" in config and "backbone_lr: 0.002" in config
    assert not list(run_dir.glob(".partial-*"))


def train_custom(argv, capsys):
    code = custom_recipe.main(argv)
    return code, capsys.readouterr().err


def glyph_like(root, classes, per_class):
    from PIL import Image

    for c in range(classes):
        for i in range(per_class):
            path = root / f"c{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (c * 20 % 255, i * 30 % 255, 7)).save(path)
    return root


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (lambda root: root.mkdir(), [], "no images found"),
        (lambda root: glyph_like(root, 1, 3), [], "found 1 class"),
        (lambda root: glyph_like(root, 6, 1), [], "single image"),
        (lambda root: glyph_like(root, 5, 2), ["--test-classes", "0.9"], "each side needs at least 2"),
        (lambda root: glyph_like(root, 6, 3), ["--loss", "triplet"], "--loss 'triplet' is not one of"),
        (lambda root: glyph_like(root, 6, 3), ["--batch-size", "10"], "not a multiple of --samples-per-class 4"),
        (lambda root: glyph_like(root, 6, 3), ["--weights", "imagenet"], "tiny_cnn has no ImageNet weights"),
        (
            lambda root: glyph_like(root, 6, 3),
            ["--batch-size", "64"],
            "needs 16 classes per batch, but the training side has 3",
        ),
    ],
)
def test_train_custom_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, make, extra, message):
    make(tmp_path / "d")
    code, err = train_custom(["--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), *extra], capsys)
    assert (
        code == 2 and message in err and err.startswith("keras-roadmap train custom: error: ") and err.count("\n") == 1
    )
    assert not (tmp_path / "run").exists()


def test_imagenet_offline_names_the_file_and_where_to_put_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    glyph_like(tmp_path / "d", 6, 3)
    code, err = train_custom(
        ["--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--backbone", "resnet50", "--batch-size", "8"],
        capsys,
    )
    assert code == 2 and "resnet50-0676ba61.pth" in err and "hub/checkpoints" in err and "--weights none" in err
    assert not (tmp_path / "run").exists()
