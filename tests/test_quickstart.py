"""The README's main job: the quickstart (glyph recipe, short schedule) improves unseen-class
retrieval and ends with a served search of a held-out glyph."""

import importlib.util

from conftest import REPO


def load_quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "recipes" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_improves_unseen_class_retrieval_and_serves(tmp_path, monkeypatch, capsys):
    from keras_roadmap.data.glyphs import candidate_characters

    monkeypatch.setenv("KERAS_ROADMAP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "qs"
    # A subset of the characters (about 100) and 8 short epochs keep the test short.
    characters = "".join(candidate_characters()[:110])
    result = load_quickstart().main(["--epochs", "8", "--out", str(out), "--characters", characters, "--verbose", "2"])
    before, after = result["before"], result["after"]
    assert after["recall@1"] > before["recall@1"] + 0.05
    assert after["map@r"] > before["map@r"]
    printed = capsys.readouterr().out
    assert "unseen-class retrieval (exact, faiss)   before   after" in printed and "mAP@R" in printed
    assert (out / "retrieval_grid.png").read_bytes()[:4] == b"\x89PNG" and (out / "embedder.onnx").is_file()
    # The served search: the held-out glyph is not in the index, and the top 5 are printed with labels.
    assert len(result["hits"]) == 5 and all(h["label"] for h in result["hits"])
    assert all("held_out" not in h["path"] for h in result["hits"])
    assert f"held-out glyph {result['query']!r}" in printed
    assert sum(line.startswith(("  1. ", "  2. ", "  3. ", "  4. ", "  5. ")) for line in printed.splitlines()) == 5
