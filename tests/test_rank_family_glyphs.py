"""benchmarks/rank_family_glyphs.py: the --smoke family comparison end to end."""

import importlib.util
import json
import math
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "rank_family_glyphs.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("rank_family_glyphs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_runs_every_loss_and_writes_finite_metrics(bench, tmp_path):
    out, plot = tmp_path / "family.json", tmp_path / "family.png"
    result = bench.main(["--smoke", "--out", str(out), "--plot", str(plot), "--cache-dir", str(tmp_path / "cache")])
    saved = json.loads(out.read_text())
    assert saved["table"] == result["table"]
    methods = [r["method"] for r in saved["runs"]]
    assert methods == ["untrained", *bench.METHODS]
    for run in saved["runs"]:
        for key in bench.METRICS:
            assert math.isfinite(run[key]) and 0.0 <= run[key] <= 1.0, (run["method"], key)
    assert all(math.isfinite(r["final_loss"]) for r in saved["runs"][1:])
    # The smoke characters hold all three scripts and digits, so the coarse level is real.
    assert set(saved["dataset"]["classes_per_script"]["test"]) == {"Latin", "Greek", "Cyrillic", "Common"}
    for title in bench.METHODS.values():
        assert f"| {title} |" in saved["table"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = bench.main(["--replot", str(out), "--plot", str(tmp_path / "again.png")])
    assert bench.markdown_table(bench.summarise(again["runs"])) == result["table"]

    # --resume keeps the finished runs and trains only the missing one (SmoothAP, dropped here).
    saved["runs"] = [r for r in saved["runs"] if r["method"] != "smoothap"]
    out.write_text(json.dumps(saved))
    common = ["--smoke", "--resume", "--out", str(out), "--plot", "", "--cache-dir", str(tmp_path / "cache")]
    resumed = bench.main(common)
    assert [r["method"] for r in resumed["runs"]] == methods
    assert resumed["runs"][:-1] == saved["runs"]  # kept as they were, not retrained
    # ... and refuses a results file made with other settings
    saved["config"]["copies"] = 2
    out.write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="--copies"):
        bench.main(common)


def test_arguments(bench):
    args = bench.parse_args(["--smoke"])
    assert (args.seeds, args.steps, args.classes_per_batch, args.eager) == (1, 4, 8, True)
    defaults = bench.parse_args([])
    assert (defaults.seeds, defaults.steps, defaults.classes_per_batch, defaults.samples_per_class) == (3, 400, 32, 4)
    assert not defaults.xla and defaults.methods == list(bench.METHODS)
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "45", "--epochs", "10"])
