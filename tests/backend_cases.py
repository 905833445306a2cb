"""The same computations on any Keras backend; ``tests/test_backends.py`` compares them to TensorFlow.

Run as ``KERAS_BACKEND=<b> python tests/backend_cases.py OUT.npz`` (the JAX and torch runs use
virtualenvs without TensorFlow). Every result is a float64 numpy array in the npz, keyed by
case name. ``python tests/backend_cases.py --data-parallel OUT.npz`` runs the JAX
``keras.distribution.DataParallel`` checks instead (2 virtual CPU devices).
"""

import os
import sys

import numpy as np

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax":
    import jax

    # float64 cases need x64; float32 cases cast explicitly, so they are unaffected.
    jax.config.update("jax_enable_x64", True)

LOSSES = ["roadmap", "roadmap_textbook", "supap", "supap_inat", "smoothap", "calibration"]
TRAINER_CASES = ("plain", "memory", "memory_chunk", "chunk")
# jit_compile modes of the RetrievalTrainer cases per backend. On torch jit_compile=True is
# torch.compile, 30-70 s per trainer (fit and evaluate) on a 2-core machine: its compiled train
# step is checked on the gradient-chunking case, the others run eagerly there.
TRAINER_JIT = {
    "tensorflow": dict.fromkeys(TRAINER_CASES, (False, True)),
    "jax": dict.fromkeys(TRAINER_CASES, (False, True)),
    "torch": {**dict.fromkeys(TRAINER_CASES, (False,)), "chunk": (False, True)},
}
LABELS = np.array([0, 0, 1, 1, 2, 2, 0, 1, 3, 3, 3, 4], dtype="int64")
REF_LABELS = np.array([0, 1, 2, 3, 4, 0, 1, 2, 5, 5, 3, 0, 1, 2], dtype="int64")
IN_DIM, DIM = 6, 4


def make_loss(case, dtype):
    from keras_roadmap.losses import CalibrationLoss, ROADMAPLoss, SmoothAPLoss, SupAPLoss

    return {
        "roadmap": lambda: ROADMAPLoss(dtype=dtype),
        "roadmap_textbook": lambda: ROADMAPLoss(include_self=False, dtype=dtype),
        "supap": lambda: SupAPLoss(dtype=dtype),
        "supap_inat": lambda: ROADMAPLoss.inaturalist(dtype=dtype),
        "smoothap": lambda: SmoothAPLoss(tau=0.1, dtype=dtype),
        "calibration": lambda: CalibrationLoss(dtype=dtype),
    }[case]()


def value_and_grad(fn, x):
    """``(fn(x), dfn/dx)`` as numpy float64, with this backend's autodiff."""
    from keras import ops

    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        grad = tape.gradient(value, x)
    elif BACKEND == "jax":
        value, grad = jax.value_and_grad(lambda t: fn(t))(jax.numpy.asarray(x))
    else:
        import torch

        t = torch.tensor(x, requires_grad=True)
        value = fn(t)
        value.backward()
        grad = t.grad
    return np.asarray(ops.convert_to_numpy(value), "float64"), np.asarray(ops.convert_to_numpy(grad), "float64")


def loss_cases(out):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(LABELS), 5))
    ref = rng.normal(size=(len(REF_LABELS), 5))
    for dtype in ("float32", "float64"):
        x = emb.astype(dtype)
        for case in LOSSES:
            loss = make_loss(case, dtype)
            value, grad = value_and_grad(lambda e, loss=loss: loss(LABELS, e), x)
            out[f"loss/{case}/{dtype}/batch/value"], out[f"loss/{case}/{dtype}/batch/grad"] = value, grad
            mask = np.arange(len(REF_LABELS)) < len(REF_LABELS) - 2  # the last two rows are empty slots
            value, grad = value_and_grad(
                lambda e, loss=loss, dtype=dtype, mask=mask: loss.call_with_reference(
                    LABELS, e, REF_LABELS, ref.astype(dtype), self_index=np.arange(len(LABELS)) % 3 - 1, ref_mask=mask
                ),
                x,
            )
            out[f"loss/{case}/{dtype}/reference/value"], out[f"loss/{case}/{dtype}/reference/grad"] = value, grad
        from keras_roadmap.losses import heaviside_average_precision

        out[f"loss/heaviside_ap/{dtype}"] = np.asarray(
            __import__("keras").ops.convert_to_numpy(heaviside_average_precision(LABELS, x)), "float64"
        )


def encoder(seed=1):
    import keras

    rng = np.random.default_rng(seed)
    inputs = keras.Input((IN_DIM,))
    model = keras.Model(inputs, keras.layers.Dense(DIM)(inputs))
    model.set_weights(
        [rng.normal(size=(IN_DIM, DIM)).astype("float32") * 0.5, rng.normal(size=(DIM,)).astype("float32") * 0.1]
    )
    return model


def data(n=24):
    rng = np.random.default_rng(5)
    return rng.normal(size=(n, IN_DIM)).astype("float32"), np.tile(np.array([0, 0, 1, 1, 2, 2, 3, 3]), n // 8).astype(
        "int64"
    )


def fit_cases(out):
    import keras

    from keras_roadmap import CrossBatchMemory, RetrievalTrainer
    from keras_roadmap.losses import ROADMAPLoss

    x, y = data()
    for jit in ("auto", False, True):
        model = encoder()
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=ROADMAPLoss(), jit_compile=jit)
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        for k, w in enumerate(model.get_weights()):
            out[f"fit/jit_{jit}/w{k}"] = np.asarray(w, "float64")
        out[f"fit/jit_{jit}/loss"] = np.asarray(history.history["loss"], "float64")

    targets = {"label": y, "sample_id": np.arange(len(y), dtype="int64")}
    settings = {"plain": (False, None), "memory": (True, None), "memory_chunk": (True, 3), "chunk": (False, 3)}
    for name in TRAINER_CASES:
        memory, chunk = settings[name]
        for jit in TRAINER_JIT[BACKEND][name]:
            mem = CrossBatchMemory(size=32, embedding_dim=DIM) if memory else None
            trainer = RetrievalTrainer(encoder(), memory=mem, chunk_size=chunk)
            trainer.compile(optimizer=keras.optimizers.SGD(0.05), loss=ROADMAPLoss(include_self=False), jit_compile=jit)
            history = trainer.fit(x, targets if memory else y, batch_size=8, epochs=1, shuffle=False, verbose=0)
            key = f"trainer/{name}/jit_{jit}"
            for k, w in enumerate(trainer.encoder.get_weights()):
                out[f"{key}/w{k}"] = np.asarray(w, "float64")
            for metric in ("loss", "batch_loss") + (("memory_loss",) if memory else ()):
                out[f"{key}/{metric}"] = np.asarray(history.history[metric], "float64")
            if memory:
                for var in ("embeddings", "labels", "filled", "steps"):
                    out[f"{key}/memory_{var}"] = np.asarray(keras.ops.convert_to_numpy(getattr(mem, var)), "float64")
            out[f"{key}/eval"] = np.asarray(
                trainer.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)["batch_loss"], "float64"
            )


def evaluation_cases(out):
    import keras

    from keras_roadmap import HierarchicalSampler, MPerClassSampler, RetrievalEvaluation, retrieval_metrics
    from keras_roadmap.losses import ROADMAPLoss

    labels = np.repeat(np.arange(6), 4).astype("int64")
    out["sampler/mperclass"] = (
        MPerClassSampler(labels, batch_size=8, samples_per_class=2, seed=3).batches(epoch=1).astype("float64")
    )
    supers = labels // 3
    out["sampler/hierarchical"] = (
        HierarchicalSampler(labels, supers, batch_size=8, samples_per_class=2, seed=3)
        .batches(epoch=1)
        .astype("float64")
    )
    x, y = data()
    model = encoder()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=ROADMAPLoss(), jit_compile=False)
    callback = RetrievalEvaluation((x, y), verbose=0, ks=(1, 2))
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
    for key in ("val_recall@1", "val_recall@2", "val_map@r", "val_map"):
        out[f"callback/{key}"] = np.asarray(history.history[key], "float64")
    metrics = retrieval_metrics(np.asarray(model.predict(x, verbose=0)), y, ks=(1, 2))
    for key in ("recall@1", "map@r", "map"):
        out[f"metrics/{key}"] = np.asarray(metrics[key], "float64")


def data_parallel_cases(out):
    """JAX only: global-batch loss and one fit step under keras.distribution.DataParallel."""
    import keras

    from keras_roadmap.losses import ROADMAPLoss

    devices = keras.distribution.list_devices("cpu")
    out["dp/num_devices"] = np.asarray(len(devices), "float64")
    x, y = data(16)
    emb = np.random.default_rng(9).normal(size=(16, 5)).astype("float32")
    loss = ROADMAPLoss(include_self=False)
    single = float(loss(y, emb))
    distribution = keras.distribution.DataParallel(devices=devices)
    layout = distribution.get_data_layout(emb.shape)
    emb_sharded = jax.device_put(emb, layout.backend_layout)
    y_sharded = jax.device_put(y, distribution.get_data_layout(y.shape).backend_layout)
    out["dp/num_shards"] = np.asarray(len(emb_sharded.addressable_shards), "float64")
    out["dp/loss_single"] = np.asarray(single, "float64")
    out["dp/loss_sharded"] = np.asarray(
        float(jax.jit(lambda labels, e: loss(labels, e))(y_sharded, emb_sharded)), "float64"
    )

    def fitted(dist):
        if dist is not None:
            keras.distribution.set_distribution(dist)
        try:
            model = encoder()
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=ROADMAPLoss(include_self=False))
            model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
            return [np.asarray(w, "float64") for w in model.get_weights()]
        finally:
            keras.distribution.set_distribution(None)

    single_w, dp_w = fitted(None), fitted(distribution)
    out["dp/fit_weight_diff"] = np.asarray(
        max(float(np.max(np.abs(a - b))) for a, b in zip(single_w, dp_w, strict=False)), "float64"
    )
    out["dp/fit_update"] = np.asarray(
        max(float(np.max(np.abs(a - b))) for a, b in zip(single_w, encoder().get_weights(), strict=False)), "float64"
    )


def main(argv):
    import keras

    assert keras.backend.backend() == BACKEND
    out = {"tensorflow_imported": np.asarray(float("tensorflow" in sys.modules))}
    if argv[0] == "--data-parallel":
        data_parallel_cases(out)
        path = argv[1]
    else:
        import keras_roadmap  # noqa: F401  (the import itself must not need TensorFlow)

        out["tensorflow_imported"] = np.asarray(float("tensorflow" in sys.modules))
        loss_cases(out)
        fit_cases(out)
        evaluation_cases(out)
        out["tensorflow_imported_at_end"] = np.asarray(float("tensorflow" in sys.modules))
        path = argv[0]
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1:])
