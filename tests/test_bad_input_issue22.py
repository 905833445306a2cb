"""Bugs found by trying bad input (issue 22): string sample ids, export paths, damaged .keras
files, stale partial files in a run folder."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_roadmap import CrossBatchMemory, RetrievalTrainer, ROADMAPLoss


def _trainer(size=16):
    encoder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.UnitNormalization()])
    trainer = RetrievalTrainer(encoder, memory=CrossBatchMemory(size=size))
    trainer.compile(optimizer="adam", loss=ROADMAPLoss())
    return trainer


def _toy():
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    labels = np.repeat(np.arange(4), 4)
    return x, labels, np.array([f"img_{i:02d}.jpg" for i in range(16)])


def test_fit_with_string_sample_ids_maps_them_to_slots():
    x, labels, names = _toy()
    trainer = _trainer()
    trainer.fit(x, {"label": labels, "sample_id": names}, batch_size=8, epochs=1, verbose=0, shuffle=False)
    # Each image in its own slot: 16 distinct names fill the 16 slots, nothing out of range.
    assert trainer.memory.num_filled() == 16 and int(trainer.memory.out_of_range) == 0
    # Slot i holds the image whose name is the i-th in sorted order.
    np.testing.assert_array_equal(np.asarray(trainer.memory.labels)[:16], labels[np.argsort(names)])


def test_string_ids_clear_errors():
    x, labels, names = _toy()
    with pytest.raises(ValueError, match=r"16 distinct sample ids but CrossBatchMemory\(size=8\)"):
        _trainer(size=8).fit(x, {"label": labels, "sample_id": names}, batch_size=8, epochs=1, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((x, {"label": labels, "sample_id": names})).batch(8)
    with pytest.raises(ValueError, match=r"sample ids of dtype string.*map them in the dataset"):
        _trainer().fit(ds, epochs=1, verbose=0)
    memory = CrossBatchMemory(size=4, embedding_dim=3)
    with pytest.raises(ValueError, match="sample ids must be integers"):
        memory.enqueue(np.eye(3, dtype="float32")[:2], [0, 1], sample_ids=["a", "b"])


def _tiny_model():
    x = keras.Input((6, 6, 3))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(x))
    return keras.Model(x, keras.layers.Dense(3)(h))


@pytest.mark.parametrize("exporter", ["to_onnx", "to_saved_model"])
def test_export_under_a_regular_file_names_it(tmp_path, exporter):
    from keras_roadmap import export

    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(export.ExportError, match=r"blocker is a file, not a folder"):
        getattr(export, exporter)(_tiny_model(), tmp_path / "blocker" / "sub" / "model.onnx")


def test_export_cli_of_a_truncated_keras_file_names_the_damage(tmp_path, capsys):
    from keras_roadmap.cli import main

    path = tmp_path / "embedder.keras"
    _tiny_model().save(path)
    path.write_bytes(path.read_bytes()[:200])
    rc = main(["export", "--model", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("keras-roadmap: error:"), err
    assert f"{path}: the file is damaged" in err and "truncated or corrupt" in err and "File not found" not in err
    path.write_bytes(b"")
    assert main(["export", "--model", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "is empty (0 bytes)" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_remove_partials_removes_only_our_temporary_files(tmp_path):
    from keras_roadmap import atomic

    ours = atomic.partial_name(tmp_path / "test_metrics.json")
    for name in (ours.name, ".partial-123-history.csv", ".partial-notes.txt", "test_metrics.json"):
        (tmp_path / name).write_text("x")
    atomic.remove_partials(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".partial-notes.txt", "test_metrics.json"]


@pytest.mark.slow
def test_recipe_cleans_stale_partials_and_names_a_damaged_best_embedder(tmp_path, capsys):
    from keras_roadmap.recipes.catalog import config_path
    from keras_roadmap.recipes.run import main

    out = tmp_path / "run"
    out.mkdir()
    # What a run killed inside the write of test_metrics.json leaves (another process's pid).
    (out / ".partial-99999-test_metrics.json").write_text('{"dataset": "cu')
    argv = ["--smoke", "--out", str(out), "--epochs", "1"]
    assert main("cub", argv, config_path("cub")) == 0
    assert not list(out.glob(".partial-*")) and (out / "test_metrics.json").is_file()
    capsys.readouterr()
    best = out / "best_embedder.keras"
    best.write_bytes(best.read_bytes()[:1000])  # truncated
    assert main("cub", argv, config_path("cub")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(best) in err[0] and "truncated or corrupt" in err[0], err
    assert "File not found" not in err[0] and "delete it and" in err[0]
