"""The losses as Keras citizens: serialization, fit, XLA, mixed precision, bad input."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_roadmap import CalibrationLoss, ROADMAPLoss, SmoothAPLoss, SupAPLoss, heaviside_average_precision

ALL_LOSSES = [SupAPLoss, SmoothAPLoss, CalibrationLoss, ROADMAPLoss]


def clustered_batch(num_classes=8, per_class=4, dim=16, noise=0.8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class)
    emb = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    order = rng.permutation(len(labels))
    return labels[order].astype("int64"), emb[order].astype("float32")


def value_and_grad(loss, labels, emb):
    x = tf.constant(emb)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(labels, x)
    return value.numpy(), tape.gradient(value, x).numpy()


# --- a slow, obviously-correct reference for the textbook (include_self=False) SupAP --------


def reference_supap_excluding_self(labels, emb, tau=0.01, rho=100.0, delta=0.05, start=0.5, offset=1.44):
    scores = emb.astype(np.float64) @ emb.astype(np.float64).T
    aps = []
    for q in range(len(labels)):
        others = [j for j in range(len(labels)) if j != q]
        positives = [k for k in others if labels[k] == labels[q]]
        if not positives:
            continue
        total = 0.0
        for k in positives:
            rank_plus, rank = 1.0, 1.0
            for j in others:
                if j == k:
                    continue
                t = scores[q, j] - scores[q, k]
                if labels[j] == labels[q]:
                    h = 1.0 if t >= 0 else 0.0
                    rank_plus += h
                else:
                    sig = 1.0 / (1.0 + np.exp(np.clip(-t / tau, -50, 50)))
                    h = rho * (t - delta) + offset if t > delta else (start + sig if t > 0 else sig)
                rank += h
            total += rank_plus / rank
        aps.append(total / len(positives))
    return 1.0 - np.mean(aps) if aps else 0.0


def test_textbook_supap_matches_slow_reference():
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5], dtype="int64")  # 2 and 4, 5 are singletons
    emb = rng.normal(size=(len(labels), 6))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ours = SupAPLoss(include_self=False, dtype="float64")(labels, emb)
    np.testing.assert_allclose(float(ours), reference_supap_excluding_self(labels, emb), rtol=1e-10)


def test_textbook_mode_without_any_positive_pair_is_zero_not_nan():
    labels = np.arange(6, dtype="int64")
    emb = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    for loss in (SupAPLoss(include_self=False), SmoothAPLoss(include_self=False)):
        value, grad = value_and_grad(loss, labels, emb)
        assert value == 0.0
        assert np.all(grad == 0.0)
    value = ROADMAPLoss(include_self=False)(labels, emb)
    assert np.isfinite(float(value))


def test_paper_mode_keeps_singletons_as_their_own_positive():
    """Official behaviour: a query alone of its class still retrieves itself (finite AP)."""
    labels = np.array([0, 1, 1, 2], dtype="int64")
    emb = np.eye(4, dtype="float32")
    ap = SupAPLoss().average_precision(labels, emb).numpy()
    assert np.all(np.isfinite(ap))
    np.testing.assert_allclose(ap[[0, 3]], 1.0)
    excluded = SupAPLoss(include_self=False).average_precision(labels, emb).numpy()
    assert np.isnan(excluded[0]) and np.isnan(excluded[3]) and np.all(np.isfinite(excluded[1:3]))


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_chunking_changes_nothing(chunk):
    labels, emb = clustered_batch(num_classes=5, per_class=5)
    labels[:3] = 99  # uneven class sizes: 3 and 2 of the first class
    base_v, base_g = value_and_grad(ROADMAPLoss(), labels, emb)
    v, g = value_and_grad(ROADMAPLoss(pairs_per_chunk=chunk), labels, emb)
    np.testing.assert_allclose(v, base_v, rtol=1e-6)
    np.testing.assert_allclose(g, base_g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls", [SupAPLoss, SmoothAPLoss, ROADMAPLoss])
@pytest.mark.parametrize("include_self", [True, False])
def test_scores_recomputed_per_chunk_equal_the_dense_scores(monkeypatch, cls, include_self):
    # Above DENSE_SCORES_LIMIT the AP kernel never holds the (B, N) scores: each chunk
    # recomputes its rows from the embeddings and the gradient goes onto them directly.
    from keras_roadmap.losses import average_precision

    labels, emb = clustered_batch(num_classes=5, per_class=5)
    labels[:3] = 99
    ref_labels, ref_emb = clustered_batch(num_classes=6, per_class=3, seed=1)
    dense = [value_and_grad(cls(include_self=include_self, pairs_per_chunk=7), labels, emb)]
    dense.append(cls(pairs_per_chunk=7).call_with_reference(labels, emb, ref_labels, ref_emb).numpy())
    monkeypatch.setattr(average_precision, "DENSE_SCORES_LIMIT", 10)
    assert not average_precision.holds_dense_scores(25, 25)
    v, g = value_and_grad(cls(include_self=include_self, pairs_per_chunk=7), labels, emb)
    np.testing.assert_allclose(v, dense[0][0], rtol=1e-6)
    np.testing.assert_allclose(g, dense[0][1], rtol=1e-5, atol=1e-7)
    assert np.abs(g).max() > 1e-3  # a gradient that could be wrong
    with_ref = cls(pairs_per_chunk=7).call_with_reference(labels, emb, ref_labels, ref_emb).numpy()
    np.testing.assert_allclose(with_ref, dense[1], rtol=1e-6)


def test_heaviside_ap_is_exact_on_a_hand_case():
    # Query 0 (label 0): scores vs items 1..3 are 0.9 (neg), 0.5 (pos), 0.1 (neg).
    emb = np.array([[1.0, 0.0], [0.9, np.sqrt(1 - 0.81)], [0.5, np.sqrt(0.75)], [0.1, -np.sqrt(0.99)]])
    labels = np.array([0, 1, 0, 2])
    ap = heaviside_average_precision(labels, emb, include_self=False, dtype="float64").numpy()
    assert ap[0] == pytest.approx(0.5)  # the single positive is ranked 2nd
    ap_self = heaviside_average_precision(labels, emb, dtype="float64").numpy()
    assert ap_self[0] == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)  # self at rank 1, positive at rank 3


# --- Keras citizenship -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_config_round_trip(cls):
    kwargs = {"include_self": False, "gather_across_replicas": False, "name": "custom"}
    if cls is not CalibrationLoss:
        kwargs["tau"] = 0.02
    loss = cls(**kwargs)
    config = loss.get_config()
    restored = cls.from_config(config)
    assert restored.get_config() == config
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is cls and again.get_config() == config
    labels, emb = clustered_batch()
    np.testing.assert_allclose(float(restored(labels, emb)), float(loss(labels, emb)), rtol=1e-6)


def test_inaturalist_presets():
    assert ROADMAPLoss.inaturalist().get_config()["offset"] == 1.0
    assert ROADMAPLoss.inaturalist().get_config()["start"] == 0.0
    assert SupAPLoss.inaturalist(tau=0.02).tau == 0.02


def small_embedder(dim_in=16, dim_out=8):
    return keras.Sequential(
        [
            keras.Input((dim_in,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(dim_out),
            keras.layers.UnitNormalization(),
        ]
    )


def balanced_dataset(steps=30, classes_per_batch=8, per_class=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    xs, ys = [], []
    for _ in range(steps):
        classes = rng.choice(40, classes_per_batch, replace=False)
        labels = np.repeat(classes, per_class)
        xs.append(centres[labels] + 1.5 * rng.normal(size=(len(labels), dim)))
        ys.append(labels)
    return np.concatenate(xs).astype("float32"), np.concatenate(ys).astype("int64")


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_lowers_the_loss_and_save_load_round_trip(tmp_path, jit_compile):
    keras.utils.set_random_seed(0)
    x, y = balanced_dataset()
    model = small_embedder()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=ROADMAPLoss(), jit_compile=jit_compile)
    before = model.evaluate(x, y, batch_size=32, verbose=0)
    history = model.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0)
    after = model.evaluate(x, y, batch_size=32, verbose=0)
    assert after < before - 0.05, (before, history.history["loss"], after)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.loss, ROADMAPLoss)
    assert restored.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(restored.predict(x[:32], verbose=0), model.predict(x[:32], verbose=0), atol=1e-6)
    np.testing.assert_allclose(restored.evaluate(x, y, batch_size=32, verbose=0), after, rtol=1e-5)


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_xla_equals_eager(cls):
    labels, emb = clustered_batch(num_classes=6, per_class=4)
    loss = cls()
    eager_v, eager_g = value_and_grad(loss, labels, emb)

    @tf.function(jit_compile=True)
    def compiled(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(labels, x)
        return value, tape.gradient(value, x)

    v, g = compiled(tf.constant(emb))
    np.testing.assert_allclose(v.numpy(), eager_v, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g.numpy(), eager_g, rtol=1e-4, atol=1e-6)


def test_dynamic_batch_size_under_tf_function():
    loss = ROADMAPLoss()
    fn = tf.function(
        lambda y, x: loss(y, x),
        input_signature=[tf.TensorSpec((None,), tf.int64), tf.TensorSpec((None, 16), tf.float32)],
        jit_compile=True,
    )
    for classes in (4, 7):
        labels, emb = clustered_batch(num_classes=classes)
        np.testing.assert_allclose(fn(labels, emb).numpy(), loss(labels, emb).numpy(), rtol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_computes_in_float32(policy):
    labels, emb = clustered_batch()
    reference = float(ROADMAPLoss()(labels, emb))
    keras.mixed_precision.set_global_policy(policy)
    try:
        loss = ROADMAPLoss()
        assert loss.dtype == "float32"
        half = emb.astype("float16") if policy == "mixed_float16" else tf.cast(emb, tf.bfloat16)
        value = loss(labels, half)
        assert value.dtype == tf.float32 and np.isfinite(float(value))
        assert float(value) == pytest.approx(reference, abs=0.05)
        keras.utils.set_random_seed(0)
        model = small_embedder()  # outputs float16/bfloat16 under the policy
        model.compile(optimizer="adam", loss=loss, jit_compile=True)
        x, y = balanced_dataset(steps=4)
        history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_large_label_ids_stay_distinct():
    """float32 cannot tell 2**24 from 2**24 + 1; integer labels must keep them apart."""
    labels, emb = clustered_batch(num_classes=4, per_class=2)
    big = labels + 2**24  # consecutive large ids
    small = ROADMAPLoss()(labels, emb)
    np.testing.assert_allclose(float(ROADMAPLoss()(big, emb)), float(small), rtol=1e-6)
    np.testing.assert_allclose(float(ROADMAPLoss()(big.reshape(-1, 1), emb)), float(small), rtol=1e-6)


# --- bad input ---------------------------------------------------------------------------------


def bad_inputs():
    labels, emb = clustered_batch(num_classes=2, per_class=2, dim=4)
    return [
        ("1-D embeddings", labels, emb[:, 0], "shape \\(batch, dim\\)"),
        ("3-D embeddings", labels, emb[:, :, None], "shape \\(batch, dim\\)"),
        ("labels (B, 2)", np.stack([labels, labels], 1), emb, "shape \\(batch,\\) or \\(batch, 1\\)"),
        ("mismatched lengths", labels[:3], emb, "3 labels but the embeddings have 4 rows"),
        ("float labels", labels.astype("float32"), emb, "integer class ids"),
        ("integer embeddings", labels, (emb * 10).astype("int32"), "float embeddings"),
        ("empty batch", labels[:0], emb[:0], "empty batch"),
        ("NaN embeddings", labels, np.where(np.arange(4)[:, None] == 1, np.nan, emb).astype("float32"), "NaN or Inf"),
    ]


@pytest.mark.parametrize("case", bad_inputs(), ids=lambda c: c[0])
@pytest.mark.parametrize("cls", [SupAPLoss, ROADMAPLoss, CalibrationLoss])
def test_bad_input_raises_clear_value_error(case, cls):
    _, labels, emb, message = case
    with pytest.raises(ValueError, match=message):
        cls()(labels, emb)


def test_bad_input_is_caught_at_trace_time():
    loss = ROADMAPLoss()
    fn = tf.function(lambda y, x: loss(y, x))
    with pytest.raises(ValueError, match="3 labels but the embeddings have 4 rows"):
        fn(tf.zeros((3,), tf.int64), tf.zeros((4, 8)))
    with pytest.raises(ValueError, match="integer class ids"):
        fn(tf.zeros((4,)), tf.zeros((4, 8)))


def test_reference_errors_are_named():
    labels, emb = clustered_batch(dim=8)
    with pytest.raises(ValueError, match="ref_y_pred has dimension 4 but y_pred has dimension 8"):
        ROADMAPLoss().call_with_reference(labels, emb, labels[:5], emb[:5, :4])
    with pytest.raises(ValueError, match="ref_y_true has 3 labels"):
        ROADMAPLoss().call_with_reference(labels, emb, labels[:3], emb[:5])


def test_sample_weight_is_rejected_with_explanation():
    labels, emb = clustered_batch()
    with pytest.raises(ValueError, match="does not support sample_weight"):
        ROADMAPLoss()(labels, emb, sample_weight=np.ones(len(labels)))
    model = small_embedder()
    model.compile(optimizer="adam", loss=ROADMAPLoss())
    x, y = balanced_dataset(steps=1)
    with pytest.raises(ValueError, match="does not support sample_weight"):
        model.fit(x, y, sample_weight=np.ones(len(y)), batch_size=32, verbose=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"pairs_per_chunk": 0}, "`pairs_per_chunk` must be an integer >= 1"), ({"tau": 0.0}, "`tau` must be > 0")],
)
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ROADMAPLoss(**kwargs)


def test_reference_is_a_constant():
    labels, emb = clustered_batch()
    ref = tf.Variable(emb)
    with tf.GradientTape() as tape:
        value = ROADMAPLoss().call_with_reference(labels, tf.constant(emb), labels, ref)
    assert tape.gradient(value, ref) is None


def test_gradients_match_finite_differences():
    labels, emb = clustered_batch(num_classes=3, per_class=3, dim=5, noise=1.0, seed=4)
    emb = emb.astype("float64")
    loss = SmoothAPLoss(tau=0.1, dtype="float64")
    _, grad = value_and_grad(loss, labels, emb)
    eps = 1e-6
    for i, d in itertools.product(range(0, 9, 4), range(0, 5, 2)):
        plus, minus = emb.copy(), emb.copy()
        plus[i, d] += eps
        minus[i, d] -= eps
        numeric = (float(loss(labels, plus)) - float(loss(labels, minus))) / (2 * eps)
        assert grad[i, d] == pytest.approx(numeric, rel=1e-5, abs=1e-8)
