"""RetrievalEvaluation in real `model.fit` runs: logs, History, ModelCheckpoint, skipped epochs."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_roadmap import ROADMAPLoss
from keras_roadmap.evaluation import RetrievalEvaluation, retrieval_metrics

KEYS = ["val_recall@1", "val_recall@2", "val_precision@1", "val_r_precision", "val_map@r", "val_map", "val_mrr"]


def _clustered(seed, n_classes=8, per_class=12, dim=16, noise=1.2):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes) * 3 + 1, per_class)
    x = np.repeat(centres, per_class, 0) + noise * rng.normal(size=(len(labels), dim))
    order = rng.permutation(len(labels))
    return x[order].astype(np.float32), labels[order]


def _model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(8),
            keras.layers.UnitNormalization(),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=ROADMAPLoss())
    return model


@pytest.mark.slow
def test_fit_logs_metrics_and_checkpoint_saves_best(tmp_path):
    x, y = _clustered(1)
    x_val, y_val = _clustered(2, per_class=6)
    model = _model()
    evaluation = RetrievalEvaluation((x_val, y_val), every_n_epochs=2, ks=(1, 2), verbose=0)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best_{epoch:02d}.keras"), monitor="val_map@r", mode="max", save_best_only=True
    )
    history = model.fit(x, y, batch_size=32, epochs=5, shuffle=True, verbose=0, callbacks=[evaluation, checkpoint])

    # Evaluated on epochs 0, 2 and 4 (the last); the skipped epochs carry the latest values.
    assert evaluation.history["epoch"] == [0, 2, 4]
    for key in KEYS:
        values = history.history[key]
        assert len(values) == 5 and all(isinstance(v, float) for v in values)
        assert values[1] == values[0] and values[3] == values[2]
        assert evaluation.history[key] == [values[0], values[2], values[4]]

    # The logged numbers are retrieval_metrics of the model's embeddings (last epoch = final model).
    final = retrieval_metrics(model.predict(x_val, verbose=0), y_val, ks=(1, 2))
    assert history.history["val_map@r"][-1] == pytest.approx(final["map@r"], abs=1e-12)
    assert history.history["val_recall@2"][-1] == pytest.approx(final["recall@2"], abs=1e-12)

    # ModelCheckpoint saved exactly on the evaluated epochs that improved val_map@r.
    curve = history.history["val_map@r"]
    improved = [e + 1 for e, v in enumerate(curve) if v > max(curve[:e], default=-np.inf)]
    saved = sorted(int(re.search(r"(\d+)", p.name).group(1)) for p in tmp_path.glob("best_*.keras"))
    assert saved == improved and set(saved) <= {1, 3, 5}
    assert curve[-1] > curve[0], "training should improve retrieval on this easy data"
    best = keras.models.load_model(tmp_path / f"best_{saved[-1]:02d}.keras", compile=False)
    reloaded = retrieval_metrics(best.predict(x_val, verbose=0), y_val, ks=(1,))
    assert reloaded["map@r"] == pytest.approx(max(curve), abs=1e-6)


@pytest.mark.slow
def test_dataset_input_query_gallery_omit_mode_and_progress_line(capsys):
    x, y = _clustered(3)
    gallery = tf.data.Dataset.from_tensor_slices(_clustered(4, per_class=6)).batch(10)
    queries = tf.data.Dataset.from_tensor_slices(_clustered(5, per_class=2)).batch(7)
    seen = []
    evaluation = RetrievalEvaluation(
        gallery, query_data=queries, every_n_epochs=2, ks=(1,), skipped_epochs="omit", logged=("map@r",)
    )
    recorder = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(sorted(logs)))
    model = _model()
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[evaluation, recorder])
    assert seen[0] == seen[2] == ["loss", "val_map@r", "val_recall@1"]
    assert seen[1] == ["loss"]
    assert len(history.history["val_map@r"]) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if "retrieval" in line]
    assert len(lines) == 2
    assert re.fullmatch(
        r"Epoch 1: retrieval on 16 queries \(\d+\.\ds\) - val_recall@1: [01]\.\d{4} - val_map@r: [01]\.\d{4}", lines[0]
    )
    assert lines[1].startswith("Epoch 3: ")
    direct = retrieval_metrics(
        model.predict(_clustered(4, per_class=6)[0], verbose=0),
        _clustered(4, per_class=6)[1],
        query_embeddings=model.predict(_clustered(5, per_class=2)[0], verbose=0),
        query_labels=_clustered(5, per_class=2)[1],
        ks=(1,),
    )
    assert history.history["val_map@r"][-1] == pytest.approx(direct["map@r"], abs=1e-6)


def test_embedding_model_argument_evaluates_the_given_model():
    x, y = _clustered(6)
    trunk = _model()
    head = keras.Sequential([trunk, keras.layers.Dense(8)])
    evaluation = RetrievalEvaluation((x, y), ks=(1,), model=trunk, verbose=0)
    evaluation.set_model(head)
    got = evaluation.evaluate()
    assert got["map@r"] == pytest.approx(retrieval_metrics(trunk.predict(x, verbose=0), y, ks=(1,))["map@r"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(data=(np.zeros((4, 16)), np.zeros(4))), "integer dtype"),
        (dict(data=(np.zeros((4, 16)), np.zeros(3, int))), "has 3 entries"),
        (dict(data=tf.data.Dataset.from_tensor_slices(np.zeros((4, 16)))), r"must yield \(x, y\)"),
        (dict(data=(np.zeros((4, 16)), np.zeros(4, int)), every_n_epochs=0), "every_n_epochs"),
        (dict(data=(np.zeros((4, 16)), np.zeros(4, int)), skipped_epochs="zero"), "skipped_epochs"),
        (dict(data=(np.zeros((4, 16)), np.zeros(4, int)), logged=("ndcg",)), "unknown metrics"),
        (dict(data=(np.zeros((4, 16)), np.zeros(4, int)), ks=(0,)), "must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RetrievalEvaluation(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(data=[1, 2, 3]), "must be a batched tf.data.Dataset"),
        (dict(data=(np.zeros((4, 16)), np.zeros(4, int)), every_n_epochs=1.5), "`every_n_epochs` must be an integer"),
        (dict(data=(np.zeros((4, 16)), np.zeros(4, int)), batch_size="64"), "`batch_size` must be an integer"),
    ],
)
def test_wrong_argument_types_raise_type_errors(kwargs, message):
    with pytest.raises(TypeError, match=message):
        RetrievalEvaluation(**kwargs)


def test_unbatched_dataset_and_multi_output_model_raise():
    x, y = _clustered(7)
    evaluation = RetrievalEvaluation(tf.data.Dataset.from_tensor_slices((x, y)), verbose=0)
    evaluation.set_model(_model())
    with pytest.raises(ValueError, match="batch it first"):
        evaluation.evaluate()
    inputs = keras.Input((16,))
    two = keras.Model(inputs, [keras.layers.Dense(4)(inputs), keras.layers.Dense(4)(inputs)])
    evaluation = RetrievalEvaluation(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), verbose=0)
    evaluation.set_model(two)
    with pytest.raises(ValueError, match="several outputs"):
        evaluation.evaluate()
    diverged = keras.Sequential([keras.Input((16,)), keras.layers.Lambda(lambda t: t * np.inf)])
    evaluation = RetrievalEvaluation((x, y), verbose=0)
    evaluation.set_model(diverged)
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluation.evaluate()
