"""SupRecallLoss, SupNDCGLoss, ClusterLoss, ROADMAPPlusPlusLoss: parity with the official code
(float64 fixtures of tests/data/official_suprank), serialization, training, the proxies' own
learning rate in model.fit and RetrievalTrainer, and docs/rank-losses.md's example."""

import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_roadmap import (
    CalibrationLoss,
    ClusterLoss,
    CosineAnnealingDecay,
    RetrievalTrainer,
    ROADMAPPlusPlusLoss,
    SupAPLoss,
    SupNDCGLoss,
    SupRecallLoss,
    TorchAdam,
)
from keras_roadmap.losses import average_precision, cluster_loss, roadmap_plus_plus, supndcg, suprecall

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "official_suprank"
ALL_CASES = sorted(p.stem for p in FIXTURES.glob("*.npz"))
# Two-level labels for SupNDCG's graded relevance (make_fixtures.py GRADED_CASES).
GRADED = [c for c in ALL_CASES if c.startswith("graded")]
CASES = [c for c in ALL_CASES if c not in GRADED]
BATCH_CASES = [c for c in CASES if not c.startswith("reference")]
F64 = {"dtype": "float64"}

RANK_LOSSES = {
    "suprecall": lambda: SupRecallLoss(**F64),
    "suprecall_at10": lambda: SupRecallLoss(at_k=[10], **F64),
    "suprecall_inat": lambda: SupRecallLoss.inaturalist(**F64),
    "suprecall_calibration": lambda: SupRecallLoss.with_calibration(**F64),
    "supndcg": lambda: SupNDCGLoss(**F64),
    "supndcg_inat": lambda: SupNDCGLoss.inaturalist(**F64),
    "supap": lambda: SupAPLoss(**F64),
    "calibration": lambda: CalibrationLoss(**F64),
}


def fixture(case):
    return dict(np.load(FIXTURES / f"{case}.npz"))


def value_and_grad(fn, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
    return float(value), tape.gradient(value, x).numpy()


def assert_close(value, grad, want_value, want_grad):
    np.testing.assert_allclose(value, want_value, rtol=1e-6, atol=0)
    assert np.abs(want_grad).max() > 1e-4  # a gradient that could be wrong
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-6 * np.abs(want_grad).max())


def test_fixtures_come_from_one_recorded_commit():
    commits = {str(fixture(c)["official_commit"]) for c in ALL_CASES}
    assert len(CASES) == 5 and len(GRADED) == 3 and len(commits) == 1
    for case in GRADED:  # [coarse, fine] labels that form a tree, with more than one coarse group
        levels = fixture(case)["labels"]
        assert levels.shape[1] == 2 and len(np.unique(levels[:, 0])) > 1
        assert all(len(np.unique(levels[levels[:, 1] == c, 0])) == 1 for c in np.unique(levels[:, 1]))
    assert commits.pop() in (FIXTURES / "README.md").read_text()


PARITY = [(c, k) for c in ALL_CASES for k in sorted(RANK_LOSSES) if f"{k}_value" in np.load(FIXTURES / f"{c}.npz")]


@pytest.mark.parametrize("case,key", PARITY)
def test_rank_losses_match_the_official_code(case, key):
    data = fixture(case)
    loss = RANK_LOSSES[key]()
    if "ref_labels" in data:
        value, grad = value_and_grad(
            lambda x: loss.call_with_reference(data["labels"], x, data["ref_labels"], data["ref_embeddings"]),
            data["embeddings"],
        )
    else:
        value, grad = value_and_grad(lambda x: loss(data["labels"], x), data["embeddings"])
    assert_close(value, grad, data[f"{key}_value"], data[f"{key}_grad"])


def proxies_from(data, loss):
    loss.proxies.proxies.assign(data["proxies"].astype("float32"))
    return loss


@pytest.mark.parametrize("case", BATCH_CASES)
def test_cluster_and_roadmap_plus_plus_match_the_official_code(case):
    data = fixture(case)
    num_classes, dim = data["proxies"].shape
    # The functional forms take the float64 proxies of the fixture (a layer's are float32).
    proxies = tf.Variable(data["proxies"])
    for fn, key, weight in (
        (lambda x: cluster_loss(data["labels"], x, proxies, dtype="float64"), "cluster", 1.0),
        (lambda x: roadmap_plus_plus(data["labels"], x, proxies, dtype="float64"), "roadmap_pp", 0.1),
    ):
        x = tf.constant(data["embeddings"])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            value = fn(x)
        assert_close(float(value), tape.gradient(value, x).numpy(), data[f"{key}_value"], data[f"{key}_grad"])
        proxy_grad = tape.gradient(value, proxies).numpy()
        np.testing.assert_allclose(proxy_grad, weight * data["cluster_proxy_grad"], rtol=1e-6, atol=1e-9)
    # The classes equal the functions (float32 proxies: within their rounding).
    loss = proxies_from(data, ROADMAPPlusPlusLoss(num_classes, dim, **F64))
    np.testing.assert_allclose(float(loss(data["labels"], data["embeddings"])), data["roadmap_pp_value"], rtol=1e-6)
    cluster = proxies_from(data, ClusterLoss(num_classes, dim, **F64))
    np.testing.assert_allclose(float(cluster(data["labels"], data["embeddings"])), data["cluster_value"], rtol=1e-6)


def test_functional_forms_equal_the_classes():
    data = fixture("uneven_b20_d8")
    y, x = data["labels"], data["embeddings"]
    assert float(suprecall(y, x, at_k=[1, 4], temp=0.5, dtype="float64")) == pytest.approx(
        float(SupRecallLoss([1, 4], 0.5, **F64)(y, x)), rel=1e-12
    )
    assert float(supndcg(y, x, start=0.0, offset=1.0, dtype="float64")) == pytest.approx(
        float(SupNDCGLoss.inaturalist(**F64)(y, x)), rel=1e-12
    )
    ref = fixture("reference_b10_m24_d8")
    args = (ref["labels"], ref["embeddings"], ref["ref_labels"], ref["ref_embeddings"])
    assert float(suprecall(*args, dtype="float64")) == pytest.approx(float(ref["suprecall_value"]), rel=1e-6)
    assert float(supndcg(*args, dtype="float64")) == pytest.approx(float(ref["supndcg_value"]), rel=1e-6)


@pytest.mark.parametrize(
    "make", [lambda: SupRecallLoss(pairs_per_chunk=23, **F64), lambda: SupNDCGLoss(pairs_per_chunk=23, **F64)]
)
def test_chunks_and_recomputed_scores_change_nothing(monkeypatch, make):
    data = fixture("uneven_ties_b18_d8")
    base = value_and_grad(lambda x: make()(data["labels"], x), data["embeddings"])
    key = "suprecall" if isinstance(make(), SupRecallLoss) else "supndcg"
    assert_close(*base, data[f"{key}_value"], data[f"{key}_grad"])
    # Above DENSE_SCORES_LIMIT no (B, N) score matrix exists: each chunk recomputes its rows.
    monkeypatch.setattr(average_precision, "DENSE_SCORES_LIMIT", 10)
    assert_close(*value_and_grad(lambda x: make()(data["labels"], x), data["embeddings"]), *base)


def test_xla_equals_eager():
    # One compiled program for both kernels' users (compilation dominates this test's time);
    # ROADMAP++ compiles under XLA in the docs example's fit (test_the_docs_example_runs_as_written).
    data = fixture("equal_b24_d8")
    losses = [SupRecallLoss(at_k=[1, 4]), SupNDCGLoss()]
    x = data["embeddings"].astype("float32")
    eager = [value_and_grad(lambda e, loss=loss: loss(data["labels"], e), x) for loss in losses]

    @tf.function(jit_compile=True)
    def compiled(e):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(e)
            values = [loss(data["labels"], e) for loss in losses]
        return [(value, tape.gradient(value, e)) for value in values]

    for (value, grad), (want_value, want_grad) in zip(compiled(tf.constant(x)), eager, strict=True):
        np.testing.assert_allclose(float(value), want_value, rtol=1e-5)
        np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "loss",
    [
        SupRecallLoss(at_k=[2, 5], temp=0.5, calibration_weight=0.3, start=0.0, pairs_per_chunk=7),
        SupNDCGLoss.inaturalist(include_self=False),
        ClusterLoss(10, 4, temperature=0.1, proxies_name="p", seed=3),
        ROADMAPPlusPlusLoss(10, 4, ap_weight=0.8, cluster_weight=0.2, temperature=0.1, seed=2),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_config_round_trip(loss):
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()


def test_defaults_are_the_official_config_values():
    recall = SupRecallLoss()
    assert recall.at_k == (1, 2, 4, 8, 16) and recall.temp == 1.0 and recall.calibration_weight == 0.0
    assert recall.supap_parameters == {"tau": 0.01, "rho": 100.0, "delta": 0.05, "start": 0.5, "offset": 1.44}
    assert (SupRecallLoss.with_calibration().recall_weight, SupRecallLoss.with_calibration().calibration_weight) == (
        0.5,
        0.5,
    )
    assert SupNDCGLoss.inaturalist().supap_parameters["start"] == 0.0
    plus = ROADMAPPlusPlusLoss(5, 3)
    assert (plus.ap_weight, plus.cluster_weight, plus.cluster.temperature) == (0.9, 0.1, 0.05)
    bound = 1 / np.sqrt(3)
    assert np.abs(plus.proxies.proxies.numpy()).max() <= bound


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="at_k"):
        SupRecallLoss(at_k=[])
    with pytest.raises(ValueError, match="at_k"):
        SupRecallLoss(at_k=[0, 2])
    with pytest.raises(ValueError, match="temp"):
        SupRecallLoss(temp=0.0)
    with pytest.raises(ValueError, match=r"class ids in \[0, num_classes=3\)"):
        ClusterLoss(3, 4)([0, 1, 5], np.eye(3, 4, dtype="float32"))
    with pytest.raises(ValueError, match="no reference form"):
        ClusterLoss(3, 4).call_with_reference([0], np.ones((1, 4)), [0], np.ones((1, 4)))
    with pytest.raises(ValueError, match="proxies have shape"):
        ClusterLoss(3, 4, proxies=ClusterLoss(2, 4).proxies)
    with pytest.raises(ValueError, match="group_learning_rates"):
        TorchAdam(group_learning_rates={"cluster_proxies": -1.0})


def test_reference_form_of_roadmap_plus_plus_is_its_weighted_supap():
    data = fixture("reference_b10_m24_d8")
    args = (data["labels"], data["embeddings"], data["ref_labels"], data["ref_embeddings"])
    value = ROADMAPPlusPlusLoss(7, 8, **F64).call_with_reference(*args)
    np.testing.assert_allclose(float(value), 0.9 * data["supap_value"], rtol=1e-6)


def clustered(num_classes=8, per_class=8, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    x = np.eye(num_classes, dim)[labels] + 0.5 * rng.normal(size=(len(labels), dim))
    return x.astype("float32"), labels


def embedder(dim_in=16, dim=8, extra=()):
    return keras.Sequential([keras.Input((dim_in,)), keras.layers.Dense(dim), keras.layers.UnitNormalization(), *extra])


@pytest.mark.parametrize(
    "make", [lambda: SupRecallLoss.with_calibration(), lambda: SupNDCGLoss()], ids=["suprecall", "supndcg"]
)
def test_fit_lowers_the_loss_and_save_load_round_trip(tmp_path, make):
    keras.utils.set_random_seed(0)
    x, y = clustered()
    model = embedder()
    model.compile(optimizer=keras.optimizers.Adam(3e-2), loss=make(), jit_compile=False)
    before = model.evaluate(x, y, batch_size=32, verbose=0)
    model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
    after = model.evaluate(x, y, batch_size=32, verbose=0)
    assert after < before - 0.02, (before, after)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    assert restored.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(restored.evaluate(x, y, batch_size=32, verbose=0), after, rtol=1e-5)


def test_proxies_get_their_own_learning_rate_in_fit_and_survive_save_load(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = clustered()
    loss = ROADMAPPlusPlusLoss(num_classes=8, embedding_dim=8, seed=0)
    model = embedder(extra=[loss.proxies])
    assert "cluster_proxies/proxies" in [v.path for v in model.trainable_variables]
    optimizer = TorchAdam(learning_rate=1e-3, weight_decay=1e-4, group_learning_rates={"cluster_proxies": 0.25})
    optimizer.exclude_from_weight_decay(var_names=["proxies"])
    model.compile(optimizer=optimizer, loss=loss, jit_compile=False)
    proxies0 = loss.proxies.proxies.numpy().copy()
    kernel0 = model.layers[0].kernel.numpy().copy()
    model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)  # one Adam step: |update| = lr
    proxy_step = np.abs(loss.proxies.proxies.numpy() - proxies0)
    kernel_step = np.abs(model.layers[0].kernel.numpy() - kernel0)
    np.testing.assert_allclose(proxy_step.max(), 0.25, rtol=1e-3)
    assert kernel_step.max() == pytest.approx(1e-3, rel=0.05)  # (+ the coupled decay, 1e-4 * w)
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(restored.get_layer("cluster_proxies").proxies.numpy(), loss.proxies.proxies.numpy())
    assert restored.optimizer.group_learning_rates == {"cluster_proxies": 0.25}
    with pytest.raises(ValueError, match="proxies=model.get_layer"):
        restored.loss(y, x[:, :8])  # its own proxies copy is no model weight: never a silent no-op
    rebound = ROADMAPPlusPlusLoss(8, 8, proxies=restored.get_layer("cluster_proxies"))
    np.testing.assert_allclose(
        float(rebound(y, restored.predict(x, verbose=0))), float(loss(y, model.predict(x, verbose=0))), rtol=1e-5
    )


def test_cosine_annealing_matches_the_torch_closed_form():
    schedule = CosineAnnealingDecay(10.0, epochs=4, steps_per_epoch=3, eta_min=0.1)
    got = [float(schedule(step)) for step in range(15)]
    want = [0.1 + 9.9 * (1 + np.cos(np.pi * (s // 3) / 4)) / 2 for s in range(15)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    restored = TorchAdam.from_config(TorchAdam(group_learning_rates={"p": schedule}).get_config())
    assert restored.group_learning_rates["p"].get_config() == schedule.get_config()


def test_retrieval_trainer_trains_the_proxies():
    keras.utils.set_random_seed(0)
    x, y = clustered()
    loss = ROADMAPPlusPlusLoss(num_classes=8, embedding_dim=8, seed=0)
    trainer = RetrievalTrainer(embedder(extra=[loss.proxies]))
    trainer.compile(
        optimizer=TorchAdam(1e-2, group_learning_rates={"cluster_proxies": 0.1}), loss=loss, jit_compile=False
    )
    before = loss.proxies.proxies.numpy().copy()
    first = trainer.evaluate(x, y, batch_size=32, verbose=0)
    trainer.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    assert np.abs(loss.proxies.proxies.numpy() - before).max() > 0.1
    last = trainer.evaluate(x, y, batch_size=32, verbose=0)
    first, last = (v[0] if isinstance(v, list) else v for v in (first, last))
    assert last < first


def test_the_docs_example_runs_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "rank-losses.md").read_text(), flags=re.S)
    assert len(blocks) == 1
    namespace = {"__name__": "rank_losses_doc"}
    exec(compile(blocks[0], "docs/rank-losses.md", "exec"), namespace)
    before, after = namespace["before"], namespace["after"]
    assert after < before - 0.05, (before, after)
    assert re.fullmatch(r"loss \d\.\d{3} -> \d\.\d{3}\n", capsys.readouterr().out)


@pytest.mark.parametrize("name", ["recall", "ndcg", "cluster"])
def test_docstring_examples(name):
    import doctest
    import importlib

    module = importlib.import_module(f"keras_roadmap.losses.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_graded_supndcg_is_not_the_binary_one_and_chunks_change_nothing():
    """Two-level labels take the graded path (parity above); one level, or (B, 1), the binary
    one; the graded kernel's loop gives the same result in small chunks and under XLA."""
    data = fixture("graded_ties_b18_d8")
    levels, x = data["labels"], data["embeddings"]
    graded = value_and_grad(lambda e: SupNDCGLoss(**F64)(levels, e), x)
    binary = value_and_grad(lambda e: SupNDCGLoss(**F64)(levels[:, 1], e), x)
    column = value_and_grad(lambda e: SupNDCGLoss(**F64)(levels[:, 1:], e), x)
    assert abs(graded[0] - binary[0]) > 1e-3  # the coarse level changes the loss
    np.testing.assert_allclose(column[0], binary[0], rtol=1e-12)
    chunked = value_and_grad(lambda e: SupNDCGLoss(pairs_per_chunk=5, **F64)(levels, e), x)
    assert_close(*chunked, data["supndcg_value"], data["supndcg_grad"])

    @tf.function(jit_compile=True)
    def compiled(e):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = SupNDCGLoss()(levels, e)
        return value, tape.gradient(value, e)

    value, grad = compiled(tf.constant(x.astype("float32")))
    np.testing.assert_allclose(float(value), data["supndcg_value"], rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), data["supndcg_grad"], atol=1e-5)


def test_road_ndcg_is_the_official_weighted_sum_and_trains_its_proxies(tmp_path):
    """roadndcg_sop.yaml: 0.9 SupNDCG (graded) + 0.1 ClusterLoss on the finest level."""
    from keras_roadmap import ROADNDCGLoss

    data = fixture("graded_b24_d8")
    levels, x = data["labels"], data["embeddings"]
    loss = ROADNDCGLoss(num_classes=int(levels[:, 1].max()) + 1, embedding_dim=x.shape[1], seed=0, **F64)
    cluster = ClusterLoss(loss.proxies.num_classes, loss.proxies.embedding_dim, proxies=loss.proxies, **F64)
    want = 0.9 * data["supndcg_value"] + 0.1 * float(cluster(levels[:, 1], x))
    np.testing.assert_allclose(float(loss(levels, x)), want, rtol=1e-6)
    reference = loss.call_with_reference(levels, x, levels, x)  # a memory: the NDCG term only
    np.testing.assert_allclose(
        float(reference), 0.9 * float(SupNDCGLoss(**F64).call_with_reference(levels, x, levels, x)), rtol=1e-9
    )
    assert ROADNDCGLoss.from_config(loss.get_config()).get_config() == loss.get_config()
    inat = ROADNDCGLoss.inaturalist(num_classes=4, embedding_dim=4)
    assert (inat.supap_parameters["start"], inat.supap_parameters["offset"]) == (0.0, 1.0)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    fine = np.repeat(np.arange(8), 4)
    y = np.stack([fine // 4, fine], axis=1)
    inputs = rng.normal(size=(32, 8)).astype("float32")
    loss = ROADNDCGLoss(num_classes=8, embedding_dim=8, seed=0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.UnitNormalization(), loss.proxies])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, jit_compile=True)
    before = loss.proxies.proxies.numpy().copy()
    model.fit(inputs, y, batch_size=32, epochs=2, verbose=0)
    assert np.abs(loss.proxies.proxies.numpy() - before).max() > 1e-3
    model.save(tmp_path / "m.keras")
    assert isinstance(keras.models.load_model(tmp_path / "m.keras").loss, ROADNDCGLoss)
