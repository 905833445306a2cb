"""Large batches: plain ``RetrievalTrainer`` step vs embedding-gradient caching (``chunk_size``).

A small CNN (three 3x3 convolutions, 16/32/64 filters, the first at full 32x32 resolution, the
next two with stride 2; global average pooling, Dense 128, L2 normalisation) on random 32x32x3
images, ROADMAPLoss, SGD, graph mode (Keras' default on CPU). Each (batch size, mode) runs in its
own subprocess: it builds the model and the data,
records its peak resident memory (``resource.getrusage``), runs one warm-up step (tracing), then
times ``--steps`` steps. "peak MB" is the peak RSS of the whole process minus that pre-step
baseline: what the steps themselves (activations, loss, tracing) added. Ratios are cached /
plain, measured in the same run. "loss-only peak MB" is ROADMAPLoss's value and gradient on
given ``(batch, 128)`` embeddings: the O(batch^2) part that chunking the encoder cannot remove.

    python benchmarks/large_batch.py                                    # 256 .. 8192, chunk 128
    python benchmarks/large_batch.py --batches 256 1024 --chunk 128 --steps 3

The plain (uncached) step is skipped above ``--plain-max`` (4096): at 8192 its activations
alone are several GB. The last lines check the targets: loss-only peak at 4096 < 300 MB, a
cached 8192 step < 2 GB.
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
from keras_roadmap import RetrievalTrainer
from keras_roadmap.losses import ROADMAPLoss

batch, chunk, steps = map(int, sys.argv[1:4])
loss_only, chunk = chunk < 0, (chunk if chunk > 0 else None)
keras.utils.set_random_seed(0)
inputs = keras.Input((32, 32, 3))
h = inputs
for filters, stride in ((16, 1), (32, 2), (64, 2)):
    h = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu")(h)
h = keras.layers.GlobalAveragePooling2D()(h)
outputs = keras.layers.UnitNormalization()(keras.layers.Dense(128)(h))
trainer = RetrievalTrainer(keras.Model(inputs, outputs), chunk_size=chunk)
trainer.compile(optimizer=keras.optimizers.SGD(0.01), loss=ROADMAPLoss(), jit_compile=False)
rng = np.random.default_rng(0)
x = rng.normal(size=(batch, 32, 32, 3)).astype("float32")
y = np.repeat(np.arange(batch // 4), 4).astype("int64")  # 4 images per class, as in the paper
if loss_only:
    # The loss alone (value and gradient w.r.t. given embeddings): the part no chunking removes.
    import tensorflow as tf

    emb = tf.constant(trainer.encoder.predict(x[:256], verbose=0)[np.arange(batch) % 256])
    loss = ROADMAPLoss()

    @tf.function
    def one_step():
        with tf.GradientTape() as tape:
            tape.watch(emb)
            value = loss(y, emb)
        return tape.gradient(value, emb)

    run_step = one_step
else:
    run_step = lambda: trainer.train_on_batch(x, y)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run_step()  # warm-up: tracing
start = time.perf_counter()
for _ in range(steps):
    run_step()
seconds = (time.perf_counter() - start) / steps
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": (peak - baseline) / 1024.0}))
"""


def run(batch, chunk, steps):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(batch), str(chunk), str(steps)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    parser.add_argument("--plain-max", type=int, default=4096, help="largest batch run without caching")
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    print(f"chunk_size={args.chunk}, {args.steps} timed step(s) after one warm-up step, graph mode, CPU")
    header = (
        f"{'batch':>6} | {'plain s/step':>12} | {'cached s/step':>13} | {'time x':>6} | {'plain peak MB':>13} | "
        f"{'cached peak MB':>14} | {'memory x':>8} | {'loss-only peak MB':>17}"
    )
    print(header)
    print("-" * len(header))
    results = {}
    for batch in args.batches:
        plain = run(batch, 0, args.steps) if batch <= args.plain_max else None
        cached = run(batch, args.chunk, args.steps)
        loss_only = run(batch, -1, args.steps)
        results[batch] = (cached, loss_only)
        failed = [
            f"{name} {r['error']}"
            for name, r in (("plain", plain), ("cached", cached), ("loss", loss_only))
            if r and "error" in r
        ]
        if failed:
            print(f"{batch:>6} | failed: {'; '.join(failed)}")
            continue
        if plain is None:
            plain_s, ratio, plain_mb, mem_ratio = "-", "-", "-", "-"
        else:
            plain_s, plain_mb = f"{plain['seconds']:.3f}", f"{plain['peak_mb']:.0f}"
            ratio = f"{cached['seconds'] / plain['seconds']:.2f}"
            mem_ratio = f"{cached['peak_mb'] / max(plain['peak_mb'], 1.0):.2f}"
        print(
            f"{batch:>6} | {plain_s:>12} | {cached['seconds']:>13.3f} | {ratio:>6} | {plain_mb:>13} | "
            f"{cached['peak_mb']:>14.0f} | {mem_ratio:>8} | {loss_only['peak_mb']:>17.0f}",
            flush=True,
        )
    with open("/proc/loadavg") as f:
        print(f"/proc/loadavg at the end: {f.read().strip()}")
    if 4096 in results and "error" not in results[4096][1]:
        mb = results[4096][1]["peak_mb"]
        print(f"B=4096 loss-only peak: {mb:.0f} MB (target < 300 MB): {'OK' if mb < 300 else 'OVER'}")
    if 8192 in results and "error" not in results[8192][0]:
        mb = results[8192][0]["peak_mb"]
        print(f"B=8192 cached step peak: {mb:.0f} MB (target < 2048 MB): {'OK' if mb < 2048 else 'OVER'}")


if __name__ == "__main__":
    main()
