"""The README's main job: the quickstart trains and clearly improves held-out retrieval."""

import importlib.util

from conftest import REPO


def load_quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "recipes" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_improves_held_out_retrieval(capsys):
    before, after = load_quickstart().main(["--steps", "150"])
    assert after["map@r"] > before["map@r"] + 0.3
    assert after["recall@1"] > before["recall@1"]
    out = capsys.readouterr().out
    assert "before   after" in out and "map@r" in out


def test_split_is_stratified_and_disjoint():
    x_train, y_train, x_test, y_test = load_quickstart().load_digits_split(0)
    assert set(y_train) == set(y_test) == set(range(10))
    assert abs(len(x_train) - len(x_test)) <= 1
    train_rows = {row.tobytes() for row in x_train}
    assert sum(row.tobytes() in train_rows for row in x_test) < 5  # a few digits are exact duplicates
