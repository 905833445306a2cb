"""HAPLoss (HAPPIER's H-AP) against the official code's float64 fixtures, plus the Keras protocol.

Fixtures: ``tests/data/official_happier/hap_*.npz``, written by ``make_fixtures.py`` there.
"""

import pathlib

import keras
import numpy as np
import pytest
from official_happier_cases import DATA, load, value_and_grad

from keras_roadmap import HAPLoss
from keras_roadmap.losses import hap_loss

BATCH_CASES = sorted(p.stem for p in DATA.glob("hap_tree*.npz"))


def test_fixtures_cover_the_traps():
    assert len(BATCH_CASES) == 4
    unknown = load("hap_tree3_b32_unknown")["labels"]
    assert (unknown < 0).any()  # levels unknown for some rows
    ties = load("hap_tree3_b20_ties")["embeddings"]
    assert len(np.unique(ties, axis=0)) < len(ties)  # exact score ties
    for name in BATCH_CASES:
        labels = load(name)["labels"]
        coarse, counts = np.unique(labels[:, 0], return_counts=True)
        assert (counts == 1).any()  # a query with no item of level >= 1 but itself


@pytest.mark.parametrize("name", BATCH_CASES)
def test_batch_form_matches_official(name):
    z = load(name)
    loss = HAPLoss(offset=float(z["offset"]), start=float(z["start"]), dtype="float64")
    value, grad = value_and_grad(lambda x: loss(z["labels"], x), z["embeddings"])
    np.testing.assert_allclose(value, float(z["value"]), atol=1e-6)
    np.testing.assert_allclose(grad, z["grad"], atol=1e-6)
    per_query = loss.hierarchical_average_precision(z["labels"], z["embeddings"]).numpy()
    np.testing.assert_allclose(per_query, z["per_query"], atol=1e-6)
    assert np.abs(z["grad"]).max() > 1e-3  # the comparison is not between two zeros


def test_small_chunks_give_the_same_result():
    z = load("hap_tree3_b32_unknown")
    loss = HAPLoss(pairs_per_chunk=96, dtype="float64")  # several loop steps
    value, grad = value_and_grad(lambda x: loss(z["labels"], x), z["embeddings"])
    np.testing.assert_allclose(value, float(z["value"]), atol=1e-6)
    np.testing.assert_allclose(grad, z["grad"], atol=1e-6)


def test_reference_form_matches_official():
    z = load("hap_reference")
    loss = HAPLoss(dtype="float64")
    value = loss.call_with_reference(z["labels"], z["embeddings"], z["ref_labels"], z["ref_embeddings"])
    np.testing.assert_allclose(float(value), float(z["value"]), atol=1e-6)
    functional = hap_loss(z["labels"], z["embeddings"], z["ref_labels"], z["ref_embeddings"], dtype="float64")
    np.testing.assert_allclose(float(functional), float(z["value"]), atol=1e-6)


def test_unknown_level_is_a_singleton():
    z = load("hap_tree2_b24")
    labels = z["labels"].copy()
    fresh = labels.copy()
    labels[3, 1] = -1
    fresh[3, 1] = labels.max() + 100
    loss = HAPLoss(dtype="float64")
    np.testing.assert_allclose(float(loss(labels, z["embeddings"])), float(loss(fresh, z["embeddings"])), atol=1e-12)


def test_public_exports():
    import keras_roadmap
    from keras_roadmap.evaluation.hierarchical import hierarchical_retrieval_metrics

    assert keras_roadmap.HAPLoss is HAPLoss
    assert keras_roadmap.hierarchical_retrieval_metrics is hierarchical_retrieval_metrics
    assert {"HAPLoss", "RecallAtKLoss", "simix", "hierarchical_retrieval_metrics"} <= set(keras_roadmap.__all__)


def test_config_round_trip_and_errors():
    loss = HAPLoss.inaturalist(alpha=2.0, include_self=False, pairs_per_chunk=16)
    clone = HAPLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    assert (clone.offset, clone.start, clone.alpha) == (1.0, 0.0, 2.0)
    assert keras.losses.deserialize(keras.losses.serialize(loss)).get_config() == loss.get_config()
    with pytest.raises(ValueError, match="tau"):
        HAPLoss(tau=0.0)
    with pytest.raises(ValueError, match="y_true"):
        HAPLoss()(np.zeros((4, 2), "float32"), np.eye(4, dtype="float32"))
    with pytest.raises(ValueError, match="4 rows"):
        HAPLoss()(np.zeros((4, 2), "int64"), np.eye(5, dtype="float32"))


def test_fit_under_xla_in_float64_lowers_the_loss_and_save_load(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    fine = np.repeat(np.arange(16), 4)
    labels = np.stack([fine // 4, fine], axis=1).astype("int64")  # coarse-to-fine
    centres = rng.normal(size=(16, 8))
    x = (centres[fine] + 0.8 * rng.normal(size=(64, 8))).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.UnitNormalization()])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=HAPLoss(dtype="float64"), jit_compile=True)

    def batch_loss():  # eager, on the model's embeddings, as fit's batches of 32 see them
        emb = model.predict(x, batch_size=64, verbose=0).astype("float64")
        return np.mean([float(HAPLoss(dtype="float64")(labels[i : i + 32], emb[i : i + 32])) for i in (0, 32)])

    before = batch_loss()
    history = model.fit(x, labels, batch_size=32, epochs=4, shuffle=False, verbose=0).history["loss"]
    after = batch_loss()
    assert after < before - 0.02, (before, history, after)
    np.testing.assert_allclose(history[0], before, rtol=0.2)  # the XLA loss is this loss
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.loss, HAPLoss)
    assert restored.loss.get_config() == model.loss.get_config()


def test_docs_snippets_run():
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / "hierarchical.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/hierarchical.md", "exec"), {})


def test_happier_loss_is_the_official_weighted_sum_and_round_trips(tmp_path):
    """HAPPIER_SOP.yaml: (1 - 0.1) HAPLoss + 0.1 ClusterLoss on the finest level; the proxies in
    the model train under XLA and survive model.save / load_model."""
    from keras_roadmap import ClusterLoss, HAPPIERLoss

    z = load("hap_tree3_b20_ties")
    labels = z["labels"].clip(min=0)
    fine = np.unique(labels[:, -1], return_inverse=True)[1]
    labels = np.concatenate([labels[:, :-1], fine[:, None]], axis=1)
    loss = HAPPIERLoss(num_classes=int(fine.max()) + 1, embedding_dim=z["embeddings"].shape[1], seed=0, dtype="float64")
    hap = float(HAPLoss(dtype="float64")(labels, z["embeddings"]))
    cluster = float(
        ClusterLoss(loss.proxies.num_classes, loss.proxies.embedding_dim, proxies=loss.proxies, dtype="float64")(
            fine, z["embeddings"]
        )
    )
    np.testing.assert_allclose(float(loss(labels, z["embeddings"])), 0.9 * hap + 0.1 * cluster, rtol=1e-12)
    assert cluster > 0.1 * hap  # the cluster term is not negligible in that sum
    # With a memory (reference form) only the H-AP term remains, weighted, as ROADMAP++ does.
    reference = loss.call_with_reference(labels, z["embeddings"], labels, z["embeddings"])
    np.testing.assert_allclose(
        float(reference),
        0.9 * float(HAPLoss(dtype="float64").call_with_reference(labels, z["embeddings"], labels, z["embeddings"])),
        rtol=1e-12,
    )
    assert HAPPIERLoss.from_config(loss.get_config()).get_config() == loss.get_config()
    inat = HAPPIERLoss.inaturalist(num_classes=4, embedding_dim=4)
    assert (inat.offset, inat.start, inat.hap_weight, inat.cluster_weight) == (1.0, 0.0, 0.9, 0.1)
    with pytest.raises(ValueError, match="hap_weight"):
        HAPPIERLoss(4, 4, hap_weight=-1.0)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    classes = np.repeat(np.arange(8), 4)
    y = np.stack([classes // 4, classes], axis=1)
    x = rng.normal(size=(32, 8)).astype("float32")
    loss = HAPPIERLoss(num_classes=8, embedding_dim=8, seed=0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.UnitNormalization(), loss.proxies])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, jit_compile=True)
    before = loss.proxies.proxies.numpy().copy()
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert np.abs(loss.proxies.proxies.numpy() - before).max() > 1e-3
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(restored.get_layer("cluster_proxies").proxies.numpy(), loss.proxies.proxies.numpy())
    assert isinstance(restored.loss, HAPPIERLoss)
