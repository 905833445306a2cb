"""ROADMAP memory terms: a batch ranked against a cross-batch memory, forward + backward.

Ours (``ROADMAPLoss.call_with_reference`` under XLA) against the official algorithm's shape of
work, re-implemented in TensorFlow for the same run: a Python loop over queries that builds a
(|P_q|, M) difference matrix per query (``loop`` baseline, graph mode, float32). Each
configuration runs in its own subprocess so that its peak resident memory is its own.

    python benchmarks/memory_speed.py                       # CUB-size and SOP-size memories
    python benchmarks/memory_speed.py --memories 5824 59551 --batch 128 --dim 512

Memory labels follow the dataset's class sizes (CUB: ~58 images per class, SOP: ~5.3).
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
import tensorflow as tf
from keras_roadmap import ROADMAPLoss

impl, batch, memory, dim, per_class, repeats = sys.argv[1], *map(int, sys.argv[2:7])
rng = np.random.default_rng(0)
num_classes = max(1, memory // per_class)
mem_labels = rng.integers(0, num_classes, memory).astype("int64")
labels = np.repeat(rng.choice(np.unique(mem_labels), batch // 4, replace=False), 4)
mem = rng.normal(size=(memory, dim)).astype("float32")
mem /= np.linalg.norm(mem, axis=1, keepdims=True)
emb = rng.normal(size=(batch, dim)).astype("float32")
emb /= np.linalg.norm(emb, axis=1, keepdims=True)
args = [tf.constant(a) for a in (labels, emb, mem_labels, mem)]
loss = ROADMAPLoss()


def supap_loop(y, e, ry, re):
    # One query at a time, a (|P_q|, M) matrix of differences each (the official memory path).
    scores = tf.matmul(e, re, transpose_b=True)
    aps = []
    for q in range(batch):
        pos = tf.equal(ry, y[q])
        pos_scores = tf.boolean_mask(scores[q], pos)
        t = scores[q][None, :] - pos_scores[:, None]
        sig = tf.sigmoid(tf.clip_by_value(t / 0.01, -50.0, 50.0))
        neg_h = tf.where(t > 0.05, 100.0 * (t - 0.05) + 1.44, tf.where(t > 0, 0.5 + sig, sig))
        pos_h = tf.stop_gradient(tf.cast(t >= 0, t.dtype))
        posf = tf.cast(pos, t.dtype)[None, :]
        rank_plus = tf.reduce_sum(pos_h * posf, axis=1)
        rank = rank_plus + tf.reduce_sum(neg_h * (1.0 - posf), axis=1)
        aps.append(tf.reduce_mean(rank_plus / rank))
    return 1.0 - tf.reduce_mean(tf.stack(aps))


def step(y, e, ry, re):
    with tf.GradientTape() as tape:
        tape.watch(e)
        value = loss.call_with_reference(y, e, ry, re) if impl == "ours" else supap_loop(y, e, ry, re)
    return value, tape.gradient(value, e)


step = tf.function(step, jit_compile=(impl == "ours"))
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
step(*args)[1].numpy()
first = time.perf_counter() - t0
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    step(*args)[1].numpy()
    times.append(time.perf_counter() - t0)
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024.0
positives = [(mem_labels == l).sum() for l in labels]
print(json.dumps({"ms": 1000 * float(np.median(times)), "first_s": first, "peak_mib": peak,
                  "mean_positives": float(np.mean(positives))}))
"""


def run(impl, batch, memory, dim, per_class, repeats):
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, impl, str(batch), str(memory), str(dim), str(per_class), str(repeats)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:100]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", type=int, nargs="+", default=[5824, 59551])
    parser.add_argument(
        "--per-class",
        type=float,
        nargs="+",
        default=None,
        help="images per class in the memory, one per memory size (default: CUB 58, SOP 5.3)",
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-loop", action="store_true", help="do not run the per-query loop baseline")
    args = parser.parse_args(argv)
    per_class = args.per_class or [58 if m < 20000 else 5.3 for m in args.memories]
    print(f"Memory terms of ROADMAP, B={args.batch}, D={args.dim}, forward+backward, median of {args.repeats}")
    print("| M | positives/query | ours XLA ms | ours peak MiB | per-query loop ms | loop peak MiB | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for memory, pc in zip(args.memories, per_class, strict=False):
        pc = max(1, int(round(pc)))
        ours = run("ours", args.batch, memory, args.dim, pc, args.repeats)
        loop = {} if args.skip_loop else run("loop", args.batch, memory, args.dim, pc, max(2, args.repeats // 2))
        ratio = f"{loop['ms'] / ours['ms']:.1f}x" if "ms" in loop and "ms" in ours else "-"

        def cell(r, key, spec):
            return spec.format(r[key]) if key in r else (r.get("error", "-"))

        print(
            f"| {memory} | {cell(ours, 'mean_positives', '{:.1f}')} | {cell(ours, 'ms', '{:.0f}')} | "
            f"{cell(ours, 'peak_mib', '{:.0f}')} | {cell(loop, 'ms', '{:.0f}')} | "
            f"{cell(loop, 'peak_mib', '{:.0f}')} | {ratio} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
