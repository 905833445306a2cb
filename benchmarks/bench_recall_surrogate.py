"""RS@k at its paper's batch size on CPU: peak memory at B = 4,000, 128-d embeddings.

Cases, each in its own subprocess (peak RSS via ``resource.getrusage``, minus the process's
baseline before the first step, as ``benchmarks/large_batch.py`` measures it):

* ``rsk loss``: ``RecallAtKLoss()`` value and gradient on given ``(4000, 128)`` embeddings
  (1,000 classes x 4, the paper's ``samples_per_class``), in a ``tf.function``;
* ``roadmap loss``: ``ROADMAPLoss()`` on the same embeddings: the baseline of the same run;
* ``rsk trainer``: one ``RetrievalTrainer(encoder, chunk_size=200)`` step (the official
  ``bs_base`` = 200: embed 200 images at a time, cache the embedding gradient, re-embed) of a
  small CNN on random 32x32x3 images with ``RecallAtKLoss``.

    python benchmarks/bench_recall_surrogate.py                 # B = 4000, chunk 200, 1 step
    python benchmarks/bench_recall_surrogate.py --batch 1000 --steps 2
"""

import argparse
import json
import os
import subprocess
import sys

WORKER = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
import tensorflow as tf
from keras_roadmap import RecallAtKLoss, RetrievalTrainer
from keras_roadmap.losses import ROADMAPLoss

case, batch, chunk, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
y = np.repeat(np.arange(batch // 4), 4).astype("int64")
if case.endswith("loss"):
    emb = rng.normal(size=(batch, 128)).astype("float32")
    emb = tf.constant(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    loss = RecallAtKLoss() if case == "rsk loss" else ROADMAPLoss()

    @tf.function
    def run_step():
        with tf.GradientTape() as tape:
            tape.watch(emb)
            value = loss(y, emb)
        return value, tape.gradient(value, emb)
else:
    inputs = keras.Input((32, 32, 3))
    h = inputs
    for filters, stride in ((16, 2), (32, 2)):
        h = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(128)(h))
    trainer = RetrievalTrainer(keras.Model(inputs, outputs), chunk_size=chunk)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4), loss=RecallAtKLoss(), jit_compile=False)
    x = rng.normal(size=(batch, 32, 32, 3)).astype("float32")
    run_step = lambda: trainer.train_on_batch(x, y)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run_step()  # warm-up: tracing
start = time.perf_counter()
for _ in range(steps):
    out = run_step()
seconds = (time.perf_counter() - start) / steps
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
value = float(np.ravel(np.asarray(out[0] if isinstance(out, (tuple, list)) else out))[0])
print(json.dumps({"seconds": seconds, "peak_mb": (peak - baseline) / 1024.0, "loss": value}))
"""


def run(case, batch, chunk, steps):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, case, str(batch), str(chunk), str(steps)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    print(
        f"B={args.batch}, D=128, 4 per class, chunk_size={args.chunk}, {args.steps} timed step(s) after a warm-up, CPU"
    )
    results = {}
    for case in ("rsk loss", "roadmap loss", "rsk trainer"):
        r = results[case] = run(case, args.batch, args.chunk, args.steps)
        if "error" in r:
            print(f"{case:>13}: failed: {r['error']}")
        else:
            print(
                f"{case:>13}: {r['seconds']:8.2f} s/step  peak {r['peak_mb']:7.0f} MB  loss {r['loss']:.4f}", flush=True
            )
    if "error" not in results["rsk loss"] and "error" not in results["roadmap loss"]:
        ratio = results["rsk loss"]["peak_mb"] / max(results["roadmap loss"]["peak_mb"], 1.0)
        time_ratio = results["rsk loss"]["seconds"] / results["roadmap loss"]["seconds"]
        print(f"rsk / roadmap loss-only: memory x{ratio:.2f}, time x{time_ratio:.2f}")
    with open("/proc/loadavg") as f:
        print(f"/proc/loadavg at the end: {f.read().strip()}")


if __name__ == "__main__":
    main()
