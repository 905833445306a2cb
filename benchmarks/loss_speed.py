"""Forward + backward time and peak memory of ROADMAPLoss vs a naive dense (B, B, B) version.

Each (implementation, mode, batch size) runs in its own subprocess so that its peak resident
memory can be read on its own (peak RSS minus the RSS right before the first loss call).

    python benchmarks/loss_speed.py                    # B in 128 256 384 512, D = 512
    python benchmarks/loss_speed.py --sizes 128 384 --dim 512 --repeats 20
    python benchmarks/loss_speed.py --backend tensorflow jax torch   # one table per backend
    python benchmarks/loss_speed.py --guard --sizes 384 --repeats 50   # NaN guard cost

`--guard` times the XLA step with the NaN guard (the loss made NaN in-graph when an
embedding is non-finite, then the host reading the loss and checking it, as
`keras_roadmap.guard.NonFiniteGuard` does) against the same step without it (`loss.call`,
no host check), interleaved in one process so that both see the same machine load.

Ratios are "naive dense XLA time / ours", measured in the same run; with several backends, each
backend's times are also divided by the TensorFlow run of the same invocation. A backend runs
with ``.venv-<backend>/bin/python`` when that venv exists (the test venvs, no TensorFlow), else
with this interpreter. "XLA" is ``tf.function(jit_compile=True)`` on TensorFlow, ``jax.jit`` on
JAX; torch has no XLA here (eager autograd only).
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
from keras import ops
from keras_roadmap import ROADMAPLoss

impl, mode, batch, dim, repeats, per_class, dtype = sys.argv[1:]
batch, dim, repeats, per_class = int(batch), int(dim), int(repeats), int(per_class)
if dtype != "float32":
    keras.mixed_precision.set_global_policy(dtype)


def naive_dense_roadmap(labels, emb):
    # The textbook formulation: every (query, positive k, item j) triple is materialised.
    emb = ops.cast(emb, "float32")
    scores = ops.matmul(emb, ops.transpose(emb))
    same = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32")
    t = scores[:, None, :] - scores[:, :, None]  # [q, k, j] = s_qj - s_qk
    sig = ops.sigmoid(ops.clip(t / 0.01, -50.0, 50.0))
    neg_h = ops.where(t > 0.05, 100.0 * (t - 0.05) + 1.44, ops.where(t > 0, 0.5 + sig, sig))
    pos_h = ops.cast(t >= 0, "float32")
    not_self = 1.0 - ops.eye(batch)[None, :, :]
    pos_j = same[:, None, :] * not_self
    rank_plus = 1.0 + ops.sum(ops.stop_gradient(pos_h) * pos_j, axis=2)
    rank = rank_plus + ops.sum(neg_h * (1.0 - same)[:, None, :], axis=2)
    ap = ops.sum(same * rank_plus / rank, axis=1) / ops.sum(same, axis=1)
    norm = emb / ops.norm(emb, axis=1, keepdims=True)
    cos = ops.matmul(norm, ops.transpose(norm))
    off = 1.0 - ops.eye(batch)
    pos_t = ops.relu(0.9 - cos) * same * off
    neg_t = ops.relu(cos - 0.6) * (1.0 - same)
    calib = ops.sum(pos_t) / ops.maximum(ops.sum(ops.cast(pos_t > 0, "float32")), 1.0) + ops.sum(neg_t) / ops.maximum(
        ops.sum(ops.cast(neg_t > 0, "float32")), 1.0
    )
    return 1.0 - ops.mean(ap) + calib


loss_obj = ROADMAPLoss()
loss_fn = naive_dense_roadmap if impl == "naive" else (lambda y, e: loss_obj(y, e))
if impl == "unguarded":  # Loss.call: no non-finite poisoning (what __call__ adds)
    loss_fn = lambda y, e: loss_obj.call(y, e)


backend = keras.backend.backend()
rng = np.random.default_rng(0)
labels_np = np.repeat(np.arange(batch // per_class), per_class).astype("int64")
emb_np = rng.normal(size=(batch, dim)).astype("float32")
emb_np = (emb_np / np.linalg.norm(emb_np, axis=1, keepdims=True)).astype("float16" if "16" in dtype else "float32")

if backend == "tensorflow":
    import tensorflow as tf

    def step(labels, emb):
        with tf.GradientTape() as tape:
            tape.watch(emb)
            value = loss_fn(labels, emb)
        return value, tape.gradient(value, emb)

    if mode == "xla":
        step = tf.function(step, jit_compile=True)
    elif mode == "graph":
        step = tf.function(step)
    labels, emb = tf.constant(labels_np), tf.constant(emb_np)
elif backend == "jax":
    import jax

    step = jax.value_and_grad(lambda e, labels: loss_fn(labels, e))
    step = (lambda f: (lambda labels, emb: f(emb, labels)))(jax.jit(step) if mode == "xla" else step)
    labels, emb = jax.numpy.asarray(labels_np), jax.numpy.asarray(emb_np)
else:
    import torch

    if mode == "xla":
        raise SystemExit("no XLA on torch")

    def step(labels, emb):
        emb = emb.detach().requires_grad_(True)
        value = loss_fn(labels, emb)
        value.backward()
        return value.detach(), emb.grad

    labels, emb = torch.tensor(labels_np), torch.tensor(emb_np)


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


if impl == "guardpair":
    import math

    def make(fn):
        def raw(labels, emb):
            with tf.GradientTape() as tape:
                tape.watch(emb)
                value = fn(labels, emb)
            return value, tape.gradient(value, emb)
        return tf.function(raw, jit_compile=True)

    guarded, unguarded = make(lambda y, e: loss_obj(y, e)), make(lambda y, e: loss_obj.call(y, e))
    for f in (guarded, unguarded):
        f(labels, emb)[1].numpy()
    times = {"guarded": [], "unguarded": [], "in_graph_only": []}
    order = [("unguarded", unguarded), ("in_graph_only", guarded), ("guarded", guarded)]
    for i in range(repeats):
        for name, f in (order if i % 2 == 0 else order[::-1]):  # alternate the order: no position bias
            t0 = time.perf_counter()
            value, grad = f(labels, emb)
            grad.numpy()
            if name == "guarded" and not math.isfinite(float(value)):  # the host-side check
                raise FloatingPointError("non-finite loss")
            times[name].append(time.perf_counter() - t0)
    print(json.dumps({k: 1000 * float(np.median(v)) for k, v in times.items()}))
    sys.exit(0)

rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
value, grad = step(labels, emb)
to_numpy(grad)
first = time.perf_counter() - t0
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    value, grad = step(labels, emb)
    to_numpy(grad)
    times.append(time.perf_counter() - t0)
rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "ms": 1000 * float(np.median(times)),
    "first_s": first,
    "peak_mib": (rss_after - rss_before) / 1024.0,
    "loss": float(to_numpy(value)),
    "finite_grad": bool(np.all(np.isfinite(to_numpy(grad)))),
}))
"""


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_for(backend):
    venv = os.path.join(ROOT, f".venv-{backend}", "bin", "python")
    return venv if backend != "tensorflow" and os.path.exists(venv) else sys.executable


def run(impl, mode, batch, dim, repeats, per_class, dtype="float32", backend="tensorflow"):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    env["KERAS_BACKEND"] = backend
    proc = subprocess.run(
        [python_for(backend), "-c", WORKER, impl, mode, str(batch), str(dim), str(repeats), str(per_class), dtype],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0][:80]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 384, 512])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--eager-max", type=int, default=256, help="largest B also timed in eager mode")
    parser.add_argument("--naive-max", type=int, default=512, help="largest B for the naive dense baseline")
    parser.add_argument("--mixed", action="store_true", help="also time XLA under mixed_float16 / mixed_bfloat16")
    parser.add_argument("--json", help="write all results to this file")
    parser.add_argument("--guard", action="store_true", help="only time the NaN guard: guarded vs unguarded XLA step")
    parser.add_argument("--backend", nargs="+", default=["tensorflow"], choices=["tensorflow", "jax", "torch"])
    args = parser.parse_args(argv)
    if args.guard:
        print(
            f"NaN guard cost, ROADMAPLoss XLA forward+backward, D={args.dim}, {args.per_class} per class, "
            f"median of {args.repeats} interleaved runs"
        )
        print("| B | unguarded ms | in-graph check only ms | guarded (+ host check) ms | overhead |")
        print("|---|---|---|---|---|")
        for b in args.sizes:
            r = run("guardpair", "xla", b, args.dim, args.repeats, args.per_class)
            if "error" in r:
                print(f"| {b} | failed: {r['error']} | | |")
                continue
            print(
                f"| {b} | {r['unguarded']:.2f} | {r['in_graph_only']:.2f} | {r['guarded']:.2f} | "
                f"{100 * (r['guarded'] / r['unguarded'] - 1):+.1f}% |",
                flush=True,
            )
        return
    if len(args.backend) > 1 or args.backend != ["tensorflow"]:
        return compare_backends(args)

    header = (
        "| B | ours eager ms | ours XLA ms | ours XLA peak MiB | naive dense XLA ms | naive peak MiB "
        "| speed-up (naive / ours XLA) |"
    )
    print(f"ROADMAPLoss forward+backward, D={args.dim}, {args.per_class} per class, median of {args.repeats}")
    print(header)
    print("|" + "---|" * 7)
    results = []
    for b in args.sizes:
        ours = run("ours", "xla", b, args.dim, args.repeats, args.per_class)
        eager = (
            run("ours", "eager", b, args.dim, max(3, args.repeats // 3), args.per_class) if b <= args.eager_max else {}
        )
        naive = run("naive", "xla", b, args.dim, args.repeats, args.per_class) if b <= args.naive_max else {}
        row = {"batch": b, "ours_xla": ours, "ours_eager": eager, "naive_xla": naive}
        if args.mixed:
            row["ours_xla_mixed_float16"] = run(
                "ours", "xla", b, args.dim, args.repeats, args.per_class, "mixed_float16"
            )
            row["ours_xla_mixed_bfloat16"] = run(
                "ours", "xla", b, args.dim, args.repeats, args.per_class, "mixed_bfloat16"
            )
        results.append(row)

        def fmt(r, key, spec="{:.1f}"):
            if not r:
                return "-"
            if "error" in r:
                return "failed: " + r["error"]
            return spec.format(r[key])

        ratio = "-"
        if naive and "ms" in naive and "ms" in ours:
            ratio = f"{naive['ms'] / ours['ms']:.1f}x"
        print(
            f"| {b} | {fmt(eager, 'ms')} | {fmt(ours, 'ms')} | {fmt(ours, 'peak_mib', '{:.0f}')} | "
            f"{fmt(naive, 'ms')} | {fmt(naive, 'peak_mib', '{:.0f}')} | {ratio} |",
            flush=True,
        )
    if args.mixed:
        print(
            "\nXLA under mixed precision (ms): "
            + ", ".join(
                f"B={r['batch']}: f16 {r['ours_xla_mixed_float16'].get('ms', float('nan')):.1f} "
                f"/ bf16 {r['ours_xla_mixed_bfloat16'].get('ms', float('nan')):.1f}"
                for r in results
            )
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def compare_backends(args):
    """One table per backend: ours (eager, XLA) and the naive dense XLA baseline, and ratios to TF."""
    backends = ["tensorflow"] + [b for b in args.backend if b != "tensorflow"]  # TF first: the reference
    results = {}
    for backend in backends:
        rows = []
        for b in args.sizes:
            row = {"batch": b}
            row["eager"] = (
                run("ours", "eager", b, args.dim, max(3, args.repeats // 3), args.per_class, backend=backend)
                if b <= args.eager_max
                else {}
            )
            row["xla"] = (
                run("ours", "xla", b, args.dim, args.repeats, args.per_class, backend=backend)
                if backend != "torch"
                else {}
            )
            row["naive"] = (
                run(
                    "naive",
                    "xla" if backend != "torch" else "eager",
                    b,
                    args.dim,
                    args.repeats,
                    args.per_class,
                    backend=backend,
                )
                if b <= args.naive_max
                else {}
            )
            rows.append(row)
        results[backend] = rows

    def ms(r):
        return r.get("ms") if r else None

    print(
        f"ROADMAPLoss forward+backward, D={args.dim}, {args.per_class} per class, median ms of {args.repeats}; "
        "x = this backend's time / TensorFlow's (same mode, same run)"
    )
    print(
        "| backend | B | ours eager ms | ours XLA ms | naive dense ms (XLA; torch eager) "
        "| ours eager / TF | ours XLA / TF |"
    )
    print("|" + "---|" * 7)
    for backend in backends:
        for row, ref in zip(results[backend], results["tensorflow"], strict=False):

            def cell(r):
                return "-" if not r else (f"{r['ms']:.1f}" if "ms" in r else "failed: " + r["error"])

            def ratio(a, b):
                return f"{ms(a) / ms(b):.2f}x" if ms(a) and ms(b) else "-"

            print(
                f"| {backend} | {row['batch']} | {cell(row['eager'])} | {cell(row['xla'])} | {cell(row['naive'])} | "
                f"{ratio(row['eager'], ref['eager'])} | {ratio(row['xla'], ref['xla'])} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
