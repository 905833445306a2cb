"""Losses, trainer and memory under tf.distribute.MirroredStrategy on 2 logical CPU devices.

The logical devices must be configured before TensorFlow initialises its devices, so the
distributed runs happen in one subprocess (this file run as a script, see ``worker_main``) that
prints its measurements as JSON; the tests below assert on them. The single-device references
are computed in the same subprocess from the same initial weights and data.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_roadmap import distributed

GLOBAL_BATCH = 8
# Replica 0 holds labels [0, 0, 1, 2] (two singletons), replica 1 [3, 3, 3, 3]: the replicas have
# different numbers of queries with a positive (without self) and of non-zero calibration terms,
# so averaging per-replica means would not give the global mean.
LABELS = np.array([0, 0, 1, 2, 3, 3, 3, 3], dtype="int64")
LOSS_CASES = ["roadmap", "roadmap_textbook", "supap_textbook", "smoothap", "calibration"]


def _make_loss(case, dtype="float32"):
    from keras_roadmap.losses import CalibrationLoss, ROADMAPLoss, SmoothAPLoss, SupAPLoss

    if case == "roadmap_per_replica":
        return ROADMAPLoss(include_self=False, gather_across_replicas=False, dtype=dtype)
    return {
        "roadmap": lambda: ROADMAPLoss(dtype=dtype),
        "roadmap_textbook": lambda: ROADMAPLoss(include_self=False, dtype=dtype),
        "supap_textbook": lambda: SupAPLoss(include_self=False, dtype=dtype),
        "smoothap": lambda: SmoothAPLoss(tau=0.1, dtype=dtype),
        "calibration": lambda: CalibrationLoss(dtype=dtype),
    }[case]()


# ----------------------------------------------------------------------------------------------
# Subprocess side.


def _encoder(seed, in_dim=6, dim=4):
    import keras

    rng = np.random.default_rng(seed)
    inputs = keras.Input((in_dim,))
    outputs = keras.layers.Dense(dim, use_bias=True)(inputs)
    model = keras.Model(inputs, outputs)
    model.set_weights(
        [rng.normal(size=(in_dim, dim)).astype("float32") * 0.5, rng.normal(size=(dim,)).astype("float32") * 0.1]
    )
    return model


def _loss_gradients(strategy, results):
    """Per-replica loss values sum to the global loss; gathered gradients equal the global ones."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(GLOBAL_BATCH, 5))
    half = GLOBAL_BATCH // 2
    for case in LOSS_CASES + ["roadmap_per_replica"]:
        loss = _make_loss(case, dtype="float64")
        single_emb = tf.constant(emb)
        with tf.GradientTape() as tape:
            tape.watch(single_emb)
            single = loss(LABELS, single_emb)
        single_grad = tape.gradient(single, single_emb).numpy()

        step = _value_and_grad_step(loss)

        def shard(ctx, array=None):
            start = ctx.replica_id_in_sync_group * half
            return array[start : start + half]

        per_emb = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(shard(ctx, emb)))
        per_lab = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(shard(ctx, LABELS)))
        values, grads = strategy.run(tf.function(step), args=(per_emb, per_lab))
        values = [float(v) for v in strategy.experimental_local_results(values)]
        grads = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads)])
        results[f"loss_{case}"] = {
            "single": float(single),
            "replica_sum": sum(values),
            "replica_values": values,
            "grad_diff": float(np.max(np.abs(grads - single_grad))),
            "grad_scale": float(np.max(np.abs(single_grad))),
        }


def _value_and_grad_step(loss):
    """A replica step: the loss of the local batch and its gradient w.r.t. the local embeddings."""
    import tensorflow as tf

    def step(local_emb, local_labels):
        with tf.GradientTape() as tape:
            tape.watch(local_emb)
            value = loss(local_labels, local_emb)
        return value, tape.gradient(value, local_emb)

    return step


def _fit_one_step(strategy, build, x, y):
    """Model, weights and logged loss after one SGD step, built under ``strategy`` (or not)."""
    import contextlib

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = build()
    history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    return model, [np.asarray(w) for w in model.get_weights()], float(history.history["loss"][-1])


def _keras_and_trainer_steps(strategy, results):
    import keras

    from keras_roadmap import CrossBatchMemory, RetrievalTrainer
    from keras_roadmap.losses import ROADMAPLoss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH, 6)).astype("float32")
    labels = LABELS.copy()

    def plain_model(include_self):
        def build():
            model = _encoder(1)
            model.compile(
                optimizer=keras.optimizers.SGD(0.05), loss=ROADMAPLoss(include_self=include_self), jit_compile=False
            )
            return model

        return build

    for include_self in (True, False):
        _, single, single_loss = _fit_one_step(None, plain_model(include_self), x, labels)
        _, mirrored, mirrored_loss = _fit_one_step(strategy, plain_model(include_self), x, labels)
        results[f"keras_fit_include_self_{include_self}"] = {
            "weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(single, mirrored, strict=False)),
            "update_size": max(
                float(np.max(np.abs(a - b))) for a, b in zip(single, _encoder(1).get_weights(), strict=False)
            ),
            "single_loss": single_loss,
            "mirrored_loss": mirrored_loss,
        }

    # 15 examples: the second step's batch of 7 is split 4 / 3 between the replicas.
    x15 = rng.normal(size=(15, 6)).astype("float32")
    labels15 = np.array([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 1, 2, 2, 3, 3], dtype="int64")
    single_model, _, _ = _fit_one_step(None, plain_model(False), x15, labels15)
    mirrored_model, _, _ = _fit_one_step(strategy, plain_model(False), x15, labels15)
    results["keras_fit_uneven_last_batch"] = {
        "weight_diff": max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(single_model.get_weights(), mirrored_model.get_weights(), strict=False)
        ),
    }

    # Trainer with a keyed memory, three steps (memory terms from the first step), plain and
    # with embedding-gradient caching, against a single-device plain run.
    xs = rng.normal(size=(3 * GLOBAL_BATCH, 6)).astype("float32")
    ys = {"label": np.tile(LABELS, 3), "sample_id": np.arange(3 * GLOBAL_BATCH, dtype="int64")}

    def trainer(chunk_size):
        def build():
            model = RetrievalTrainer(
                _encoder(2), memory=CrossBatchMemory(size=32, embedding_dim=4), chunk_size=chunk_size
            )
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=ROADMAPLoss(include_self=False), jit_compile=False)
            return model

        return build

    def fit(strategy, build):
        import contextlib

        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            model = build()
        history = model.fit(xs, ys, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        return model, history.history

    single_model, single_history = fit(None, trainer(None))
    single_eval = single_model.evaluate(xs, ys, batch_size=GLOBAL_BATCH, verbose=0, return_dict=True)["batch_loss"]
    single_weights = single_model.encoder.get_weights()
    single_memory = {
        k: np.asarray(getattr(single_model.memory, k)) for k in ("embeddings", "labels", "filled", "steps")
    }
    for chunk_size in (None, 3):
        model, history = fit(strategy, trainer(chunk_size))
        memory = model.memory
        copies = {
            k: [np.asarray(t) for t in strategy.experimental_local_results(getattr(memory, k).value)]
            for k in single_memory
        }
        results[f"trainer_memory_chunk_{chunk_size}"] = {
            "num_copies": len(copies["embeddings"]),
            "replica_copy_diff": max(float(np.max(np.abs(c[0].astype("float64") - c[1]))) for c in copies.values()),
            "memory_vs_single": max(
                float(np.max(np.abs(c[0].astype("float64") - single_memory[k]))) for k, c in copies.items()
            ),
            "filled": int(copies["filled"][0].sum()),
            "steps": int(copies["steps"][0]),
            "weight_diff": max(
                float(np.max(np.abs(a - b))) for a, b in zip(single_weights, model.encoder.get_weights(), strict=False)
            ),
            "loss_diff": abs(single_history["loss"][-1] - history["loss"][-1]),
            "memory_loss_diff": abs(single_history["memory_loss"][-1] - history["memory_loss"][-1]),
            "memory_loss": history["memory_loss"][-1],
            "eval_diff": abs(
                model.evaluate(xs, ys, batch_size=GLOBAL_BATCH, verbose=0, return_dict=True)["batch_loss"] - single_eval
            ),
        }


def _xla_under_mirrored(strategy, results):
    import keras

    from keras_roadmap.losses import ROADMAPLoss

    x = np.random.default_rng(0).normal(size=(GLOBAL_BATCH, 6)).astype("float32")
    with strategy.scope():
        model = _encoder(1)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=ROADMAPLoss(), jit_compile=True)
    try:
        model.fit(x, LABELS, batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
        results["xla"] = {"ok": True, "error": ""}
    except Exception as error:  # recorded: the tests document what happens
        lines = [line for line in str(error).splitlines() if "device" in line.lower() or "resource" in line.lower()]
        results["xla"] = {"ok": False, "error": f"{type(error).__name__}: " + " | ".join(lines)[:600]}


def worker_main():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {"num_replicas": strategy.num_replicas_in_sync}
    _loss_gradients(strategy, results)
    _keras_and_trainer_steps(strategy, results)
    _xla_under_mirrored(strategy, results)
    print("RESULTS " + json.dumps(results))


# ----------------------------------------------------------------------------------------------
# Test side.


@pytest.fixture(scope="module")
def mirrored():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], capture_output=True, text=True, env=env, cwd=root, timeout=1200
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"distributed worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULTS ") :])


def test_two_replicas_are_running(mirrored):
    assert mirrored["num_replicas"] == 2


@pytest.mark.parametrize("case", LOSS_CASES)
def test_replica_losses_sum_to_the_global_loss_with_its_gradient(mirrored, case):
    result = mirrored[f"loss_{case}"]
    assert result["replica_sum"] == pytest.approx(result["single"], abs=1e-10)
    assert min(result["replica_values"]) > 0.0  # each replica holds a share, not the whole
    assert result["grad_scale"] > 1e-3
    assert result["grad_diff"] <= 1e-9 * max(1.0, result["grad_scale"])


def test_opting_out_gives_per_replica_losses(mirrored):
    # Each replica ranks only its own 4 examples: neither the value nor the gradient is global.
    result = mirrored["loss_roadmap_per_replica"]
    assert abs(result["replica_sum"] - result["single"]) > 1e-3
    assert result["grad_diff"] > 1e-3


@pytest.mark.parametrize("include_self", [True, False])
def test_keras_fit_step_equals_single_device_step(mirrored, include_self):
    result = mirrored[f"keras_fit_include_self_{include_self}"]
    assert result["update_size"] > 1e-3  # the step moved the weights
    assert result["weight_diff"] < 1e-6
    assert result["mirrored_loss"] == pytest.approx(result["single_loss"], rel=1e-5)


def test_uneven_replica_batches_use_the_right_global_rows(mirrored):
    assert mirrored["keras_fit_uneven_last_batch"]["weight_diff"] < 1e-6


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_trainer_memory_is_identical_on_every_replica_and_equals_single_device(mirrored, chunk_size):
    result = mirrored[f"trainer_memory_chunk_{chunk_size}"]
    assert result["num_copies"] == 2
    assert result["replica_copy_diff"] == 0.0
    assert result["memory_vs_single"] < 1e-6
    assert result["filled"] == 3 * GLOBAL_BATCH and result["steps"] == 3
    assert result["memory_loss"] > 0.0
    assert result["weight_diff"] < 1e-6
    assert result["loss_diff"] < 1e-5 and result["memory_loss_diff"] < 1e-5
    assert result["eval_diff"] < 1e-5  # evaluate reports the global batch loss, not a share


def test_xla_under_mirrored_on_logical_cpus_outcome_is_known(mirrored):
    # TF cannot compile a replicated step on logical CPU devices (resource of replica 1 accessed
    # from CPU:0); if a TF release fixes it, this test says so and the README limit is stale.
    assert not mirrored["xla"]["ok"], "XLA under Mirrored on logical CPUs now works: update the docs."
    assert "device" in mirrored["xla"]["error"].lower() or "resource" in mirrored["xla"]["error"].lower()


def test_a_loss_without_ratio_decomposition_is_named():
    from keras_roadmap.losses import RetrievalLoss

    class CustomLoss(RetrievalLoss):
        def _loss_from_pairs(self, pairs):
            return pairs.scores[0, 0]

    loss = CustomLoss()
    with pytest.raises(TypeError, match="CustomLoss cannot be computed across replicas.*_ratio_terms"):
        distributed.ratio_terms(loss, loss._batch_pairs(LABELS, np.ones((GLOBAL_BATCH, 2), "float32")))


def test_no_replica_context_on_a_single_device():
    assert distributed.replica_context() is None
    assert distributed.num_replicas() == 1


if __name__ == "__main__":
    worker_main()
