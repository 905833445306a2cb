"""CollapseMonitor, mean_pairwise_cosine and ROADMAPLoss(calibration_warmup_steps=...)."""

import warnings

import keras
import numpy as np
import pytest

from keras_roadmap import (
    CalibrationLoss,
    CollapseMonitor,
    RetrievalTrainer,
    ROADMAPLoss,
    SupAPLoss,
    mean_pairwise_cosine,
)


def brute_force_cosine(x):
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    n = len(x)
    return (sims.sum() - np.trace(sims)) / (n * (n - 1))


def test_mean_pairwise_cosine_is_the_mean_over_pairs():
    x = np.random.default_rng(0).normal(size=(9, 5)).astype("float32") * 3.0
    assert float(mean_pairwise_cosine(x)) == pytest.approx(brute_force_cosine(x), abs=1e-5)
    assert float(mean_pairwise_cosine(np.ones((4, 3), "float32"))) == pytest.approx(1.0, abs=1e-6)
    assert float(mean_pairwise_cosine(np.ones((1, 3), "float32"))) == 0.0  # no pair


def feed(monitor, cosines, losses):
    """Run the monitor's per-step hook on a sequence of logged values (steps 1, 2, ...)."""
    monitor.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))  # no optimizer: steps counted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, (cosine, loss) in enumerate(zip(cosines, losses, strict=False)):
            monitor.on_train_batch_end(step, {"embedding_cosine": cosine, "loss": loss})
    return [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_monitor_warns_once_with_the_numbers_when_collapsed_and_flat():
    monitor = CollapseMonitor(threshold=0.9, patience=20, min_loss_drop=0.05, verbose=0)
    caught = feed(monitor, [0.99] * 100, np.linspace(1.36, 1.33, 100))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "above 0.9 for 20 steps" in message and "calibration_warmup_steps" in message and "pretrained" in message
    assert monitor.alarm["step"] == 21 and monitor.alarm["streak_start"] == 1


def test_monitor_stays_quiet_when_the_cosine_falls_or_the_loss_drops():
    # The cosine leaves the collapsed region before the patience runs out (a healthy start).
    assert feed(CollapseMonitor(patience=20, verbose=0), [0.99] * 15 + [0.5] * 85, [1.0] * 100) == []
    # Collapsed for long, but the loss is falling: progress, no alarm.
    assert feed(CollapseMonitor(patience=20, verbose=0), [0.95] * 100, np.linspace(1.0, 0.5, 100)) == []
    # A streak that breaks restarts the count.
    assert feed(CollapseMonitor(patience=20, verbose=0), ([0.99] * 15 + [0.8]) * 6, [1.0] * 96) == []


def test_monitor_argument_checks():
    with pytest.raises(ValueError, match="threshold"):
        CollapseMonitor(threshold=1.5)
    with pytest.raises(ValueError, match="patience"):
        CollapseMonitor(patience=0)
    monitor = CollapseMonitor()
    monitor.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="probe"):
        monitor.on_train_batch_end(0, {"loss": 1.0})


def collapsed_embedder(seed=0):
    """Dense on all-positive inputs with a large shared offset: every embedding points the same way."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, kernel_initializer="ones"), keras.layers.UnitNormalization()]
    )


def test_probe_mode_on_plain_fit_reads_the_model():
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(64, 8)) + 5.0).astype("float32")
    y = np.repeat(np.arange(16), 4)
    model = collapsed_embedder()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=SupAPLoss())  # lr 0: stays collapsed
    monitor = CollapseMonitor(patience=5, probe=x[:16], every_n_steps=2, verbose=0)
    with pytest.warns(RuntimeWarning, match="Embedding collapse"):
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, callbacks=[monitor], verbose=0)
    assert [s for s, _, _ in monitor.history] == [2, 4, 6, 8]  # measured every 2 optimizer steps
    assert monitor.history[0][1] > 0.99 and monitor.alarm["step"] == 8


def test_trainer_logs_the_step_cosine():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = np.repeat(np.arange(8), 4)
    trainer = RetrievalTrainer(collapsed_embedder())
    trainer.compile(optimizer="adam", loss=ROADMAPLoss())
    history = trainer.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    expected = brute_force_cosine(trainer.predict(x, verbose=0))
    assert history.history["embedding_cosine"][-1] != pytest.approx(0.0)
    # The logged value is the last step's (before its update), not an epoch mean.
    assert abs(history.history["embedding_cosine"][-1] - expected) < 0.05
    assert "embedding_cosine" not in trainer.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)


# ---- calibration warm-up -------------------------------------------------------------------


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return np.repeat(np.arange(4), 4), rng.normal(size=(16, 6)).astype("float32")


@pytest.mark.parametrize("step, factor", [(0, 0.0), (25, 0.25), (100, 1.0), (400, 1.0)])
def test_warmup_ramps_the_calibration_weight(step, factor):
    labels, x = batch()
    loss = ROADMAPLoss(calibration_warmup_steps=100, calibration_weight=2.0)
    loss.set_step_counter(keras.Variable(step, dtype="int64", trainable=False))
    expected = float(SupAPLoss()(labels, x)) + 2.0 * factor * float(CalibrationLoss()(labels, x))
    assert float(loss(labels, x)) == pytest.approx(expected, rel=1e-5)


def test_default_is_the_paper_and_warmup_is_serialised():
    labels, x = batch()
    assert ROADMAPLoss().get_config()["calibration_warmup_steps"] == 0
    assert float(ROADMAPLoss()(labels, x)) == pytest.approx(
        float(SupAPLoss()(labels, x)) + float(CalibrationLoss()(labels, x)), rel=1e-6
    )
    restored = ROADMAPLoss.from_config(ROADMAPLoss(calibration_warmup_steps=300).get_config())
    assert restored.calibration_warmup_steps == 300
    with pytest.raises(ValueError, match="set_step_counter"):
        restored(labels, x)  # no step: a clear error, not a silent weight
    with pytest.raises(ValueError, match="calibration_warmup_steps"):
        ROADMAPLoss(calibration_warmup_steps=-1)


def test_trainer_connects_the_optimizer_step_and_resumes_it(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = np.repeat(np.arange(8), 4)

    def embedder():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), keras.layers.UnitNormalization()])

    trainer = RetrievalTrainer(embedder())
    trainer.compile(optimizer=keras.optimizers.SGD(0.0), loss=ROADMAPLoss(calibration_warmup_steps=10))
    first = trainer.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0).history["loss"][0]
    embeddings = trainer.predict(x, verbose=0)
    assert first == pytest.approx(float(SupAPLoss()(y, embeddings)), rel=1e-5)  # step 0: SupAP alone
    trainer.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0)  # steps 1..4
    trainer.save(tmp_path / "trainer.keras")
    loaded = keras.models.load_model(tmp_path / "trainer.keras")
    assert int(loaded.optimizer.iterations) == 5
    resumed = loaded.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0).history["loss"][0]
    half = float(SupAPLoss()(y, embeddings)) + 0.5 * float(CalibrationLoss()(y, embeddings))
    assert resumed == pytest.approx(half, rel=1e-5)  # step 5 of 10: half the calibration weight


def test_recipe_config_key_reaches_the_loss():
    from keras_roadmap.recipes import assembly
    from keras_roadmap.recipes.catalog import config_path
    from keras_roadmap.recipes.config import ConfigError, load_yaml, resolve_config

    raw = load_yaml(config_path("sop"))
    assert assembly.build_loss(resolve_config(raw)).calibration_warmup_steps == 0  # the paper by default
    raw["loss"] = {**(raw.get("loss") or {}), "calibration_warmup_steps": 500}
    assert assembly.build_loss(resolve_config(raw)).calibration_warmup_steps == 500
    raw["loss"]["calibration_warmup_steps"] = 2.5
    with pytest.raises(ConfigError, match="calibration_warmup_steps"):
        resolve_config(raw)


def test_plain_fit_with_the_optimizer_step_counter():
    """The plain ``model.fit`` form of docs/evidence.md: connect the step after compile."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = np.repeat(np.arange(8), 4)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), keras.layers.UnitNormalization()])
    loss = ROADMAPLoss(calibration_warmup_steps=2)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    loss.set_step_counter(model.optimizer.iterations)
    losses = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0).history["loss"]
    embeddings = model.predict(x, verbose=0)
    supap, calibration = float(SupAPLoss()(y, embeddings)), float(CalibrationLoss()(y, embeddings))
    np.testing.assert_allclose(losses, [supap, supap + 0.5 * calibration, supap + calibration], rtol=1e-5)


def test_when_roadmap_helps_snippet_runs():
    """Runs the "When ROADMAP helps" code block of docs/evidence.md as written, on tiny stand-ins."""
    import tensorflow as tf
    from docs_blocks import REPO, code_for

    section = (REPO / "docs" / "evidence.md").read_text()
    section = section[section.index("## When ROADMAP helps") :]
    [code] = code_for("docs/evidence.md", "test_when_roadmap_helps_snippet_runs")
    assert code in section
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = np.repeat(np.arange(8), 4)

    def embedder():
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), keras.layers.UnitNormalization()])

    namespace = {
        "encoder": embedder(),
        "model": embedder(),
        "images_of_a_batch": x[:16],
        "train_ds": tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
    }
    exec(compile(code, "docs/evidence.md", "exec"), namespace)
    assert int(namespace["trainer"].optimizer.iterations) == 20 and int(namespace["model"].optimizer.iterations) == 20
