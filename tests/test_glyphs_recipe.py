"""recipes/glyphs.py: the --smoke ablation end to end, its arguments, the tf-similarity adapter."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "glyphs.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("glyphs_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_compare_end_to_end(recipe, tmp_path):
    out, plot = tmp_path / "results.json", tmp_path / "gap.png"
    # One plain loss, the tf-similarity baseline and a memory run (gap curve + plot) keep the
    # test short while going through every code path of the full comparison.
    result = recipe.main(
        [
            "--compare",
            "--smoke",
            "--methods",
            "roadmap",
            "multisimilarity",
            "supap_memory",
            "--out",
            str(out),
            "--plot",
            str(plot),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["table"] == result["table"]
    methods = [r["method"] for r in saved["runs"]]
    assert methods == ["raw_pixels", "untrained", "roadmap", "multisimilarity", "supap_memory"]
    for run in saved["runs"]:
        assert 0.0 <= run["recall@1"] <= 1.0 and 0.0 < run["map@r"] <= 1.0
    trained = {r["method"]: r for r in saved["runs"][2:]}
    assert all(np.isfinite(r["gap"]) and np.isfinite(r["final_loss"]) for r in trained.values())
    curve = trained["supap_memory"]["gap_curve"]
    assert [c["step"] for c in curve] == [0, 2, 4]  # before training, then each of the 2 epochs
    assert saved["dataset"]["train_classes"] == saved["dataset"]["test_classes"] == 20
    assert "| ROADMAP (SupAP + calibration) |" in saved["table"] and "| Raw pixels |" in saved["table"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --replot redraws the plot and the table from the results file alone.
    again = recipe.main(["--replot", str(out), "--plot", str(tmp_path / "again.png")])
    assert recipe.markdown_table(recipe.summarise(again["runs"])) == result["table"]
    assert (tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_arguments(recipe):
    with pytest.raises(SystemExit):
        recipe.parse_args([])  # --compare (or --replot) is required
    with pytest.raises(SystemExit):
        recipe.parse_args(["--compare", "--steps", "45", "--epochs", "10"])
    with pytest.raises(SystemExit):
        recipe.parse_args(["--compare", "--memory-size", "100"])  # not a multiple of 128
    args = recipe.parse_args(["--compare", "--smoke"])
    assert (args.seeds, args.steps, args.classes_per_batch) == (1, 4, 8)
    defaults = recipe.parse_args(["--compare"])
    assert (defaults.seeds, defaults.steps, defaults.classes_per_batch, defaults.samples_per_class) == (3, 400, 32, 4)


def test_tfsim_adapter_matches_tfsim_and_compiles(recipe):
    import tensorflow as tf
    import tensorflow_similarity as tfsim

    inner = tfsim.losses.MultiSimilarityLoss(reduction="sum_over_batch_size")
    adapter = recipe.TFSimilarityLossAdapter(inner)
    labels = tf.constant(np.repeat(np.arange(6), 4))
    rng = np.random.default_rng(0)
    embeddings = tf.math.l2_normalize(tf.constant(rng.normal(size=(24, 8)), tf.float32), axis=1)
    eager = float(inner(labels, embeddings))  # tf-similarity itself works eagerly
    assert float(adapter(labels, embeddings)) == pytest.approx(eager, rel=1e-6)
    compiled = tf.function(lambda y, x: adapter(y, x), jit_compile=True)
    assert float(compiled(labels, embeddings)) == pytest.approx(eager, rel=1e-5)
