"""Cost of one optimiser update of keras_roadmap.optim vs Keras' own optimisers.

Applies random gradients to the trainable variables of an embedder (ResNet-50 by default, BN
frozen as in the paper) inside one `tf.function`, and prints the median time per update of
TorchAdam / TorchSGD next to keras.optimizers.Adam / AdamW / SGD measured in the same run.

    python benchmarks/optim_step.py --model resnet50 --repeats 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_roadmap.models import build_embedder  # noqa: E402
from keras_roadmap.optim import build_optimizer  # noqa: E402


def compiled_step(optimizer, variables, grads):
    optimizer.build(variables)
    step = tf.function(lambda: optimizer.apply(grads, variables))
    step()  # trace
    return step


def time_pair(ours, base, repeats):
    """Median seconds per call of two steps, alternated so machine load hits both alike."""
    times = ([], [])
    for _ in range(repeats):
        for step, bucket in zip((ours, base), times, strict=False):
            start = time.perf_counter()
            step()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    model = build_embedder(args.model, input_shape=(64, 64, 3) if "deit" not in args.model else (32, 32, 3))
    variables = model.trainable_variables
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(size=v.shape).astype("float32") * 1e-3) for v in variables]
    n_params = sum(int(np.prod(v.shape)) for v in variables)
    print(f"{args.model}: {len(variables)} trainable variables, {n_params / 1e6:.2f}M parameters")
    pairs = [
        (
            "Adam, coupled wd 1e-4, 2 lrs",
            lambda: build_optimizer(1e-5, 2e-5, weight_decay=1e-4),
            "keras Adam",
            lambda: keras.optimizers.Adam(1e-5),
        ),
        (
            "AdamW, wd 5e-4",
            lambda: build_optimizer(1e-5, optimizer="adamw", weight_decay=5e-4),
            "keras AdamW",
            lambda: keras.optimizers.AdamW(1e-5, weight_decay=5e-4),
        ),
        (
            "SGD momentum 0.9",
            lambda: build_optimizer(1e-2, optimizer="sgd"),
            "keras SGD momentum 0.9",
            lambda: keras.optimizers.SGD(1e-2, momentum=0.9),
        ),
    ]
    print("| keras_roadmap.optim | ms/update | baseline | ms/update | ratio |")
    print("|---|---|---|---|---|")
    for ours_name, ours, base_name, base in pairs:
        t_ours, t_base = time_pair(
            compiled_step(ours(), variables, grads), compiled_step(base(), variables, grads), args.repeats
        )
        print(f"| {ours_name} | {t_ours * 1e3:.1f} | {base_name} | {t_base * 1e3:.1f} | {t_ours / t_base:.2f} |")


if __name__ == "__main__":
    main()
