"""End-to-end smoke runs of every recipe (train -> select -> test table -> grid -> ONNX). Runs
killed with SIGKILL and resumed: tests/test_reliability_kill.py."""

import csv
import json
import pathlib

import numpy as np
import pytest

from keras_roadmap.recipes.catalog import CONFIG_DIR
from keras_roadmap.recipes.run import main

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = CONFIG_DIR
# Smoke trees (see the `smoke.data` section of each config): test queries and gallery sizes.
SMOKE_QUERIES = {"sop": 36, "cub": 24, "inaturalist": 24, "inshop": 9}
# Flags that route some runs through the other code paths: mixed precision (forced on the CPU)
# with a keyed memory, a FIFO memory, a keyed memory with query/gallery evaluation.
EXTRA_FLAGS = {
    "sop": ["--precision", "mixed_float16", "--memory", "official"],
    "cub": [],
    "inaturalist": ["--memory", "official"],
    "inshop": ["--memory", "official"],
}


def history(out):
    with open(out / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def run_log(out):
    return [json.loads(line) for line in (out / "run_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(SMOKE_QUERIES))
def test_smoke_recipe_end_to_end(tmp_path, capsys, dataset):
    import keras
    import onnxruntime as ort
    from PIL import Image

    from keras_roadmap.evaluation.visualization import grid_cell_origin

    out = tmp_path / dataset
    argv = ["--smoke", "--out", str(out), *EXTRA_FLAGS[dataset]]
    assert main(dataset, argv, CONFIGS / f"{dataset}.yaml") == 0
    printed = capsys.readouterr().out
    assert "SMOKE MODE: tiny_cnn at 32x32" in printed

    result = json.loads((out / "test_metrics.json").read_text())
    smoke_ks = {"sop": [1, 2, 4], "cub": [1, 2, 4, 8], "inaturalist": [1, 4, 16], "inshop": [1, 2, 4]}[dataset]
    metrics = result["metrics"]
    assert metrics["num_queries"] == SMOKE_QUERIES[dataset]
    recalls = [metrics[f"recall@{k}"] for k in smoke_ks]
    assert all(0 <= r <= 1 for r in recalls) and recalls == sorted(recalls)
    assert 0 < metrics["map@r"] <= 1
    assert result["table"] in printed and result["table"].splitlines()[0].startswith("| R@1 |")

    # Model selection: the saved embedder is the epoch with the best val_map@r.
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    (started,) = run_log(out)
    assert started["precision"] == ("mixed_float16" if dataset == "sop" else "float32")
    if EXTRA_FLAGS[dataset]:
        assert started["config"]["memory"]["size"] > 0 and all(float(r["memory_loss"]) > 0 for r in rows)
    scores = [float(r["val_map@r"]) for r in rows]
    assert result["selected"]["epoch"] == int(np.argmax(scores))
    assert result["selected"]["best"] == pytest.approx(max(scores))
    assert any((out / "tensorboard" / "train").iterdir())

    # Pictures: the grid has 4 query rows x (query + 3 neighbours), annotated; the curve is a PNG.
    width, height = grid_cell_origin(4, 4, 96, 4, 4, annotate=True)
    with Image.open(out / "retrieval_grid.png") as grid:
        assert grid.size[1] == height and grid.size[0] >= width
    with Image.open(out / "recall_curve.png") as curve:
        assert curve.format == "PNG"

    # The ONNX file (float32, the preset's test transform baked in: uint8 images of any size)
    # reproduces evaluation: the same transform + the selected embedder (float16 compute under
    # mixed precision). The .keras file records the preset.
    from keras_roadmap.data import eval_transform_batch, read_model_preset

    best = keras.models.load_model(out / "best_embedder.keras")
    preset = read_model_preset(out / "best_embedder.keras")
    assert preset is not None and preset.crop_size == 32 and result["onnx"]["preset"] == preset.name
    probe = np.random.default_rng(0).integers(0, 256, size=(3, 45, 61, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(out / "embedder.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    onnx_out = session.run(None, {session.get_inputs()[0].name: probe})[0]
    expected = best.predict_on_batch(eval_transform_batch(probe, preset))
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4 if dataset != "sop" else 1e-2)
    assert result["onnx"]["max_abs_diff"] <= 1e-4

    # keras-roadmap index / search serve the recipe's ONNX file as is: an image finds itself first.
    from keras_roadmap.cli import main as cli_main

    images = pathlib.Path(result["onnx"]["path"]).parent / "smoke_data"
    assert (
        cli_main(
            [
                "index",
                "--model",
                str(out / "embedder.onnx"),
                "--images",
                str(images),
                "--index",
                str(out / "s.faiss"),
                "--ids",
                str(out / "s.json"),
            ]
        )
        == 0
    )
    query = sorted(p for p in images.rglob("*") if p.suffix.lower() == ".jpg")[-1]  # SOP's files are .JPG
    assert (
        cli_main(
            [
                "search",
                str(query),
                "--model",
                str(out / "embedder.onnx"),
                "--index",
                str(out / "s.faiss"),
                "--ids",
                str(out / "s.json"),
                "--k",
                "3",
                "--json",
                str(out / "hits.json"),
            ]
        )
        == 0
    )
    hits = json.loads((out / "hits.json").read_text())[0]["results"]
    assert hits[0]["path"] == str(query) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
