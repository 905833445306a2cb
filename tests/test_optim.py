"""Optimisers against numpy re-implementations of PyTorch's update rules; schedule; saving."""

import keras
import numpy as np
import pytest

from keras_roadmap.models import build_embedder
from keras_roadmap.optim import MultiStepDecay, TorchAdam, TorchSGD, build_optimizer

SHAPES = {"conv/kernel": (4, 3), "head_projection/kernel": (3, 2)}


def torch_adam_reference(params, grads, lrs, factors, wd, decoupled, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam / AdamW (amsgrad=False, maximize=False) in float64 numpy.

    params: {name: array}; grads: list over steps of {name: array}; lrs: base lr per step;
    factors: {name: lr factor}. Returns the parameters after all steps.
    """
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (g_step, base_lr) in enumerate(zip(grads, lrs, strict=False), start=1):
        for k in p:
            lr = base_lr * factors[k]
            g = g_step[k].astype(np.float64)
            if decoupled:
                p[k] = p[k] * (1 - lr * wd)
            else:
                g = g + wd * p[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            denom = np.sqrt(v[k]) / np.sqrt(1 - b2**t) + eps
            p[k] = p[k] - lr / (1 - b1**t) * m[k] / denom
    return p


def torch_sgd_reference(params, grads, lr, wd, momentum, nesterov):
    """torch.optim.SGD (dampening=0) in float64 numpy."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    buf = {k: None for k in p}
    for g_step in grads:
        for k in p:
            g = g_step[k].astype(np.float64) + wd * p[k]
            buf[k] = g.copy() if buf[k] is None else momentum * buf[k] + g
            p[k] = p[k] - lr * (g + momentum * buf[k] if nesterov else buf[k])
    return p


class _Param(keras.layers.Layer):
    """A layer owning one weight, so the variable gets a chosen path (e.g. "head_projection")."""

    def __init__(self, shape, value, **kwargs):
        super().__init__(**kwargs)
        self.w = self.add_weight(shape=shape, initializer=keras.initializers.Constant(value), name="kernel")


def _problem(grad_scale, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype("float32") for k, s in SHAPES.items()}
    grads = [{k: (grad_scale * rng.normal(size=s)).astype("float32") for k, s in SHAPES.items()} for _ in range(steps)]
    layers = {k: _Param(SHAPES[k], params[k], name=k.split("/")[0]) for k in SHAPES}
    variables = [layers[k].w for k in SHAPES]
    assert [v.path for v in variables] == list(SHAPES)
    return params, grads, variables


def _run(optimizer, grads, variables):
    for g in grads:
        optimizer.apply([g[v.path] for v in variables], variables)
    return {v.path: v.numpy() for v in variables}


def _max_err(got, ref):
    return max(np.abs(got[k] - ref[k]).max() for k in ref)


def test_coupled_adam_matches_torch_adam_with_two_learning_rates_and_a_schedule():
    params, grads, variables = _problem(grad_scale=0.1)
    schedule = MultiStepDecay(1e-2, milestones=[1, 2], steps_per_epoch=2, gamma=0.3)
    opt = build_optimizer(1e-2, 2e-2, weight_decay=0.05, milestones=[1, 2], steps_per_epoch=2)
    got = _run(opt, grads, variables)
    lrs = [float(schedule(step)) for step in range(len(grads))]
    assert lrs == pytest.approx([1e-2, 1e-2, 3e-3, 3e-3, 9e-4])
    ref = torch_adam_reference(
        params, grads, lrs, {"conv/kernel": 1.0, "head_projection/kernel": 2.0}, wd=0.05, decoupled=False
    )
    assert _max_err(got, ref) < 1e-6
    # The test can tell coupled from decoupled decay: keras' Adam(weight_decay) is AdamW-style.
    _, _, fresh = _problem(grad_scale=0.1)
    keras_style = _run(keras.optimizers.Adam(1e-2, weight_decay=0.05), grads, fresh)
    assert _max_err(keras_style, ref) > 1e-4


def test_adam_epsilon_is_placed_as_in_pytorch():
    # Tiny gradients make sqrt(v_hat) comparable to eps, where Keras' placement differs.
    params, grads, variables = _problem(grad_scale=1e-8)
    got = _run(TorchAdam(1e-3), grads, variables)
    ref = torch_adam_reference(params, grads, [1e-3] * len(grads), dict.fromkeys(SHAPES, 1.0), wd=0.0, decoupled=False)
    assert _max_err(got, ref) < 1e-6
    _, _, fresh = _problem(grad_scale=1e-8)
    keras_adam = _run(keras.optimizers.Adam(1e-3, epsilon=1e-8), grads, fresh)
    assert _max_err(keras_adam, ref) > 1e-4


def test_decoupled_adam_matches_torch_adamw_and_keras_adamw():
    params, grads, variables = _problem(grad_scale=0.1)
    opt = build_optimizer(1e-2, optimizer="adamw", weight_decay=0.5)
    assert isinstance(opt, TorchAdam) and opt.decay_style == "decoupled"
    got = _run(opt, grads, variables)
    ref = torch_adam_reference(params, grads, [1e-2] * len(grads), dict.fromkeys(SHAPES, 1.0), wd=0.5, decoupled=True)
    assert _max_err(got, ref) < 1e-6
    # Same decay as keras AdamW; eps ~ 0 on both sides so that only the decay is compared
    # (Keras places eps differently, see test_adam_epsilon_is_placed_as_in_pytorch).
    _, _, ours = _problem(grad_scale=0.1)
    _, _, theirs = _problem(grad_scale=0.1)
    ours = _run(build_optimizer(1e-2, optimizer="adamw", weight_decay=0.5, epsilon=1e-12), grads, ours)
    theirs = _run(keras.optimizers.AdamW(1e-2, weight_decay=0.5, epsilon=1e-12), grads, theirs)
    assert _max_err(ours, theirs) < 1e-6


@pytest.mark.parametrize("decoupled", [False, True])
def test_float64_updates_equal_pytorch_to_rounding(decoupled):
    # Adam's first steps are sign-like (|update| ~ lr), so any float32 constant in the update
    # shows as a uniform relative error: beta_2 = 0.999 rounded to float32 once gave 6.7e-6.
    rng = np.random.default_rng(3)
    w0, grads = rng.normal(size=(40,)), [1e-3 * rng.normal(size=(40,)) for _ in range(3)]
    variable = keras.Variable(w0, dtype="float64")
    opt = TorchAdam(1e-5, weight_decay=1e-4, decay_style="decoupled" if decoupled else "coupled")
    before = w0
    for step in range(1, len(grads) + 1):
        opt.apply([keras.ops.convert_to_tensor(grads[step - 1], "float64")], [variable])
        ref_before = torch_adam_reference(
            {"w": w0}, [{"w": g} for g in grads[: step - 1]], [1e-5] * (step - 1), {"w": 1.0}, 1e-4, decoupled
        )["w"]
        ref_after = torch_adam_reference(
            {"w": w0}, [{"w": g} for g in grads[:step]], [1e-5] * step, {"w": 1.0}, 1e-4, decoupled
        )["w"]
        ours = variable.numpy() - before
        want = ref_after - ref_before
        # 1e-7: the learning-rate variable is float32 under the default floatx (2.5e-8 for 1e-5).
        assert np.abs(ours - want).max() / np.abs(want).max() < 1e-7, step
        before = variable.numpy()


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_torch_sgd(nesterov):
    params, grads, variables = _problem(grad_scale=0.1)
    opt = build_optimizer(0.1, optimizer="sgd", weight_decay=1e-2, momentum=0.9, nesterov=nesterov)
    assert isinstance(opt, TorchSGD)
    got = _run(opt, grads, variables)
    ref = torch_sgd_reference(params, grads, 0.1, 1e-2, 0.9, nesterov)
    assert _max_err(got, ref) < 1e-6


def test_excluded_variables_get_no_decay():
    params, grads, variables = _problem(grad_scale=0.0, steps=3)
    opt = TorchAdam(1e-2, weight_decay=0.1, decay_style="decoupled")
    opt.exclude_from_weight_decay(var_names=["head_projection"])
    got = _run(opt, grads, variables)
    np.testing.assert_array_equal(got["head_projection/kernel"], params["head_projection/kernel"])
    np.testing.assert_allclose(got["conv/kernel"], params["conv/kernel"] * (1 - 1e-3) ** 3, rtol=1e-6)


def test_multistep_decay_at_the_boundaries_and_config_round_trip():
    schedule = MultiStepDecay(1e-3, milestones=[30, 70], steps_per_epoch=10, gamma=0.3)
    values = {step: float(schedule(step)) for step in (0, 299, 300, 699, 700, 5000)}
    assert values == pytest.approx({0: 1e-3, 299: 1e-3, 300: 3e-4, 699: 3e-4, 700: 9e-5, 5000: 9e-5}, rel=1e-6)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, MultiStepDecay) and restored.get_config() == schedule.get_config()
    assert float(restored(700)) == pytest.approx(9e-5, rel=1e-6)


def test_multistep_decay_rejects_bad_arguments():
    with pytest.raises(ValueError, match="strictly increasing"):
        MultiStepDecay(1e-3, milestones=[70, 30], steps_per_epoch=10)
    with pytest.raises(ValueError, match="strictly increasing"):
        MultiStepDecay(1e-3, milestones=[0], steps_per_epoch=10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        MultiStepDecay(1e-3, milestones=[3], steps_per_epoch=0)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        MultiStepDecay(1e-3, milestones=[3], steps_per_epoch=5, gamma=0.0)


def test_build_optimizer_refuses_silent_changes_and_bad_values():
    with pytest.raises(ValueError, match="use optimizer='adamw'"):
        build_optimizer(1e-5, optimizer="adam", decay_style="decoupled")
    with pytest.raises(ValueError, match="use optimizer='adam'"):
        build_optimizer(1e-5, optimizer="adamw", decay_style="coupled")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(1e-5, optimizer="lamb")
    with pytest.raises(ValueError, match="pass steps_per_epoch"):
        build_optimizer(1e-5, milestones=[30])
    with pytest.raises(ValueError, match="backbone_lr must be > 0"):
        build_optimizer(0.0)
    with pytest.raises(ValueError, match="decay_style must be one of"):
        TorchAdam(decay_style="l2")
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        TorchAdam(weight_decay=-1.0)
    with pytest.raises(TypeError, match="lr_multipliers must be a dict"):
        TorchAdam(lr_multipliers=[("head_", 2.0)])
    assert build_optimizer(1e-5).decay_style == "coupled"
    assert build_optimizer(1e-5, 2e-5).lr_multipliers == {"head_": pytest.approx(2.0)}


def test_optimizer_config_round_trip():
    opt = build_optimizer(1e-5, 2e-5, weight_decay=1e-4, milestones=[30, 70], steps_per_epoch=7)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, TorchAdam)
    assert restored.get_config() == opt.get_config()
    assert isinstance(restored._learning_rate, MultiStepDecay)


def _tiny_model():
    return build_embedder("tiny_cnn", input_shape=(16, 16, 3), embedding_dim=8, width=4, freeze_batchnorm=False)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 16, 16, 3)).astype("float32")
    y = rng.normal(size=(4, 8)).astype("float32")
    return x, y / np.linalg.norm(y, axis=1, keepdims=True)


def test_compiled_model_save_and_load_keeps_optimizer_state(tmp_path):
    model = _tiny_model()
    model.compile(
        optimizer=build_optimizer(1e-2, 2e-2, weight_decay=1e-3, milestones=[1], steps_per_epoch=2), loss="mse"
    )
    x, y = _data()
    for _ in range(3):
        model.train_on_batch(x, y)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, TorchAdam)
    assert int(loaded.optimizer.iterations) == 3
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=False):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Continuing from the reloaded state gives the same weights as continuing in memory.
    model.train_on_batch(x, y)
    loaded.train_on_batch(x, y)
    for a, b in zip(model.weights, loaded.weights, strict=False):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_head_and_backbone_get_their_own_learning_rates_in_fit():
    # Same gradients, head lr = 0 vs backbone lr > 0: only the backbone may move.
    model = _tiny_model()
    model.compile(optimizer=build_optimizer(1e-2, 0.0), loss="mse")
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    model.train_on_batch(*_data())
    for v in model.trainable_variables:
        moved = not np.array_equal(before[v.path], v.numpy())
        assert moved == (not v.path.startswith("head_")), v.path


def test_training_under_mixed_precision():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _tiny_model()
        model.compile(optimizer=build_optimizer(1e-2, 2e-2, weight_decay=1e-4), loss="mse")
        before = [v.numpy().copy() for v in model.trainable_variables]
        loss = model.train_on_batch(*_data())
        assert np.isfinite(loss)
        assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables, strict=False))
        assert all(v.dtype == "float32" for v in model.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _two_steps(model, **compile_kwargs):
    # epsilon 1e-3: Adam turns a near-zero gradient into a +-lr step whose sign follows float
    # rounding, so XLA's and eager's last-bit differences could otherwise move one weight by lr.
    model.compile(
        optimizer=build_optimizer(1e-2, 2e-2, weight_decay=1e-3, milestones=[1], steps_per_epoch=1, epsilon=1e-3),
        loss="mse",
        **compile_kwargs,
    )
    x, y = _data()
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    return [w.numpy() for w in model.weights]


def test_xla_and_tf_distribute_give_the_eager_result():
    import tensorflow as tf

    reference_model = _tiny_model()
    initial = reference_model.get_weights()
    expected = _two_steps(reference_model, run_eagerly=True)
    xla_model = _tiny_model()
    xla_model.set_weights(initial)
    for got, want in zip(_two_steps(xla_model, jit_compile=True), expected, strict=False):
        np.testing.assert_allclose(got, want, atol=1e-5)
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        mirrored_model = _tiny_model()
        mirrored_model.set_weights(initial)
        mirrored = _two_steps(mirrored_model)
    for got, want in zip(mirrored, expected, strict=False):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_warmup_freezes_the_backbone_and_delays_the_cosine_as_suprank_does():
    """SupRank's loop (engine/train.py, base_training_loop.py) with `warmup_step=W`: in epochs
    1..W the backbone optimiser does not step (no moments, its step count waits) and no
    scheduler steps; the head trains. The reference is that loop over two torch.optim.Adam
    (coupled decay, per-parameter step count) and CosineAnnealingLR, in float64 numpy."""
    steps_per_epoch, epochs, warmup, wd, eta_min = 2, 5, 2, 0.05, 1e-3
    base = {"conv/kernel": 1e-2, "head_projection/kernel": 2e-2}
    params, grads, variables = _problem(grad_scale=0.1, steps=steps_per_epoch * epochs)
    opt = build_optimizer(
        1e-2,
        2e-2,
        weight_decay=wd,
        cosine_epochs=epochs,
        eta_min=eta_min,
        warmup_epochs=warmup,
        steps_per_epoch=steps_per_epoch,
    )
    got = _run(opt, grads, variables)

    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    t = dict.fromkeys(p, 0)
    scheduler_steps, step = 0, 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            for k in p:
                if k == "conv/kernel" and epoch <= warmup:
                    continue
                lr = eta_min + (base[k] - eta_min) * (1 + np.cos(np.pi * scheduler_steps / epochs)) / 2
                t[k] += 1
                g = grads[step][k].astype(np.float64) + wd * p[k]
                m[k] = 0.9 * m[k] + 0.1 * g
                v[k] = 0.999 * v[k] + 0.001 * g * g
                p[k] = p[k] - lr / (1 - 0.9 ** t[k]) * m[k] / (np.sqrt(v[k]) / np.sqrt(1 - 0.999 ** t[k]) + 1e-8)
            step += 1
        if epoch > warmup:
            scheduler_steps += 1
    assert _max_err(got, p) < 3e-6  # float32 variables, 10 steps
    # It can fail: without the freeze the backbone moves in the first epochs.
    _, _, fresh = _problem(grad_scale=0.1, steps=steps_per_epoch * epochs)
    plain = build_optimizer(
        1e-2, 2e-2, weight_decay=wd, cosine_epochs=epochs, eta_min=eta_min, steps_per_epoch=steps_per_epoch
    )
    assert _max_err(_run(plain, grads, fresh), p) > 1e-4
    config = opt.get_config()
    assert config["frozen_steps"] == warmup * steps_per_epoch
    assert TorchAdam.from_config(config).frozen_steps == warmup * steps_per_epoch
