"""When ROADMAP helps: a from-scratch CNN on colour shapes, where the calibration term holds a
collapsed start, and the warm-ups that escape it.

    python benchmarks/collapse_study.py                      # the README table (3 seeds)
    python benchmarks/collapse_study.py --methods roadmap supap --seeds 1 --steps 100

Data: ``keras_roadmap.data.shapes.build_shapes_dataset`` (colour arrangements of rectangles on a
shared white background, ~7 images per class), half of the classes for training, the other half
unseen at test time. Model: ``tiny_cnn`` (trainable BatchNorm, 64-d, L2-normalised) from
scratch, trained by ``RetrievalTrainer`` with Adam, XLA, batches of classes x samples from
``MPerClassSampler``. Reported per (method, seed): test mAP@R and R@1 on the unseen classes, the
mean pairwise cosine of the test embeddings, the first and last training loss, and the step at
which the batch cosine first fell below ``CollapseMonitor``'s threshold (None: never) and whether
the monitor warned. The test ``tests/test_collapse_reproduction.py`` runs a shortened version of the same
function (``run_one``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

METHODS = {
    "untrained": "untrained network",
    "roadmap": "ROADMAP (defaults)",
    "calibration": "calibration alone",
    "supap": "SupAP alone",
    "smoothap": "SmoothAP",
    "roadmap_warmup": "ROADMAP + calibration warm-up",
    "roadmap_head_warmup": "ROADMAP + head warm-up (official code)",
}
DEFAULT_METHODS = list(METHODS)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    add("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    add("--steps", type=int, default=60, help="training steps (default 60)")
    add("--classes", type=int, default=400, help="classes in the dataset, half for training (default 400)")
    add("--per-class", type=int, default=7, help="images per class (default 7)")
    add("--size", type=int, default=16, help="image side (default 16)")
    add("--classes-per-batch", type=int, default=32)
    add("--samples-per-class", type=int, default=4)
    add("--learning-rate", type=float, default=1e-3)
    add("--width", type=int, default=8, help="tiny_cnn width (default 8)")
    add("--train-bn", action="store_true", help="BatchNorm trains (default: frozen at init, the recipes' default)")
    add("--warmup-steps", type=int, default=30, help="steps of both warm-ups (default 30)")
    add("--no-xla", action="store_true", help="compile without XLA (faster to start: short runs, tests)")
    add("--out", default="docs/collapse_results.json", help="results JSON ('' = none)")
    return parser.parse_args(argv)


def make_data(args, data_seed=0):
    """``(train, test)``: ``(images, labels)`` pairs, disjoint classes (first / second half)."""
    from keras_roadmap.data.shapes import build_shapes_dataset

    images, labels = build_shapes_dataset(args.classes, args.per_class, args.size, seed=data_seed)
    train = labels < args.classes // 2
    return (images[train], labels[train]), (images[~train], labels[~train])


def make_loss(method, warmup_steps):
    from keras_roadmap import losses

    return {
        "roadmap": lambda: losses.ROADMAPLoss(),
        "calibration": lambda: losses.CalibrationLoss(),
        "supap": lambda: losses.SupAPLoss(),
        "smoothap": lambda: losses.SmoothAPLoss(),
        "roadmap_warmup": lambda: losses.ROADMAPLoss(calibration_warmup_steps=warmup_steps),
        "roadmap_head_warmup": lambda: losses.ROADMAPLoss(),
    }[method]()


def _batches(labels, args, seed, steps):
    from keras_roadmap.samplers import MPerClassSampler

    sampler = MPerClassSampler(
        labels, args.classes_per_batch * args.samples_per_class, args.samples_per_class, seed=seed
    )
    epochs = -(-steps // len(sampler))
    return np.concatenate([sampler.batches(e) for e in range(epochs)])[:steps]


def _dataset(images, labels, batches):
    import tensorflow as tf

    images, labels = tf.constant(images), tf.constant(labels)
    return tf.data.Dataset.from_tensor_slices(batches).map(lambda i: (tf.gather(images, i), tf.gather(labels, i)))


def _embed(encoder, images, chunk=512):
    return np.concatenate(
        [np.asarray(encoder(images[i : i + chunk], training=False)) for i in range(0, len(images), chunk)]
    )


def evaluate(encoder, test):
    """mAP@R, R@1 and mean pairwise cosine of the test embeddings."""
    from keras_roadmap.collapse import mean_pairwise_cosine
    from keras_roadmap.evaluation import retrieval_metrics

    embeddings = _embed(encoder, test[0])
    metrics = retrieval_metrics(embeddings, test[1], ks=(1,))
    return {
        "map@r": float(metrics["map@r"]),
        "recall@1": float(metrics["recall@1"]),
        "test_cosine": float(mean_pairwise_cosine(embeddings)),
    }


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def run_one(method, seed, train, test, args, monitor_kwargs=None):
    """Train one (method, seed) from scratch; returns its record (see the module docstring)."""
    import keras

    from keras_roadmap import CollapseMonitor, RetrievalTrainer
    from keras_roadmap.models import build_embedder

    keras.utils.set_random_seed(seed)
    encoder = build_embedder(
        "tiny_cnn", input_shape=train[0].shape[1:], freeze_batchnorm=not args.train_bn, width=args.width
    )
    record = {"method": method, "seed": seed}
    if method == "untrained":
        return {**record, **evaluate(encoder, test)}
    monitor = CollapseMonitor(verbose=0, **(monitor_kwargs or {}))
    batches = _batches(train[1], args, seed, args.steps)
    phases = [(None, args.steps)]
    if method == "roadmap_head_warmup":
        # The official code's experience.warm_up with warm_up_key "fc": only the head (our
        # head_* layers) trains for the first steps, then everything (fresh optimizer state).
        phases = [("head", args.warmup_steps), (None, args.steps - args.warmup_steps)]
    trainer = RetrievalTrainer(encoder)
    losses, done = [], 0
    start = time.perf_counter()
    flags = [(layer, layer.trainable) for layer in _all_layers(encoder)]
    for only, steps in phases:
        if only == "head":
            for layer in encoder.layers:
                layer.trainable = layer.name.startswith("head_")
        else:
            # Back to the original flags: `backbone.trainable = True` alone would also turn the
            # frozen BatchNorm layers trainable (batch statistics in training).
            for layer, trainable in flags:
                layer.trainable = trainable
        trainer.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss=make_loss(method, args.warmup_steps),
            jit_compile=not args.no_xla,
        )
        history = trainer.fit(
            _dataset(*train, batches[done : done + steps]),
            epochs=1,
            steps_per_epoch=steps,
            callbacks=[monitor],
            verbose=0,
            shuffle=False,
        )
        losses += history.history["loss"]
        done += steps
    record["train_seconds"] = time.perf_counter() - start
    cosines = [c for _, c, _ in monitor.history]
    escaped = [s for s, c, _ in monitor.history if c <= monitor.threshold]
    record.update(
        first_batch_cosine=cosines[0],
        last_batch_cosine=cosines[-1],
        first_loss=monitor.history[0][2],
        last_loss=monitor.history[-1][2],
        final_epoch_loss=losses[-1],
        escape_step=escaped[0] if escaped else None,
        warned=monitor.alarm is not None,
        warned_at=None if monitor.alarm is None else monitor.alarm["step"],
    )
    return {**record, **evaluate(encoder, test)}


def table(records):
    """Markdown: one row per method, per-seed mAP@R and test cosine."""
    rows = ["| method | mAP@R per seed | mean pairwise cosine (test) per seed | monitor warned |", "|---|---|---|---|"]
    for method, title in METHODS.items():
        runs = [r for r in records if r["method"] == method]
        if not runs:
            continue
        maps = " / ".join(f"{r['map@r']:.3f}" for r in runs)
        cosines = " / ".join(f"{r['test_cosine']:.3f}" for r in runs)
        warned = " / ".join("-" if "warned" not in r else ("yes" if r["warned"] else "no") for r in runs)
        rows.append(f"| {title} | {maps} | {cosines} | {warned} |")
    return "\n".join(rows)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    train, test = make_data(args)
    records = []
    started = time.perf_counter()
    for method in args.methods:
        for seed in range(args.seeds):
            record = run_one(method, seed, train, test, args)
            records.append(record)
            print(json.dumps(record), flush=True)
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    result = {
        "config": vars(args),
        "records": records,
        "seconds": time.perf_counter() - started,
        "loadavg": load,
        "table": table(records),
    }
    print(result["table"])
    print(f"{result['seconds']:.0f} s, load average {' '.join(load)}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
