"""Forward + backward time and peak memory of the rank losses against the official code.

    python benchmarks/rank_losses_speed.py MIRROR [--batch 384 4096] [--dim 128] [--repeats 3]
    python benchmarks/rank_losses_speed.py MIRROR --happier HAPPIER_MIRROR --recallatk RSK_MIRROR \
        --losses HAPLoss RS@k

``MIRROR``: a checkout or bare git directory of github.com/elias-ramzi/SupRank (imported at run
time, as by ``tests/data/official_suprank/make_fixtures.py``; its calibration module needs
``pytorch-metric-learning``); ``--happier`` / ``--recallatk``: github.com/elias-ramzi/HAPPIER and
github.com/yash0307/RecallatK_surrogate, imported as ``tests/data/official_happier/make_fixtures.py``
does (float32 here: its float64 redirections are left out). HAPLoss runs on two-level labels
``[class // 8, class]``; RS@k as its official training step does: one call per query, summed.
Batches of 4 images per class, L2-normalised float32 embeddings; each loss is timed in the same
run for ours (TensorFlow,
``tf.function(jit_compile=True)``) and the official (torch, CPU), and the ratio printed. Peak
memory is the process's resident-set high-water mark after each measurement (``ru_maxrss``),
so run one batch size per process for clean memory numbers. The official batch path holds
``B x B x B`` tensors: above ``--official-max`` (default 1024) it is not run (at B = 4096 one such
float32 tensor is 256 GiB) and reported as such. The official RS@k step (one call per query) grows
as ``B^2``: ``--losses RS@k --batch 4096 --official-max 4096`` runs it (about 8 s, 7.5 GiB).
"""

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
sys.path.insert(0, os.path.join(_DATA, "official_suprank"))

import numpy as np  # noqa: E402


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeats):
    fn()  # warm-up (tracing / compilation)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def ours(name, labels, x):
    import tensorflow as tf

    from keras_roadmap import HAPLoss, RecallAtKLoss, ROADMAPPlusPlusLoss, SupNDCGLoss, SupRecallLoss

    loss = {
        "SupRecall": SupRecallLoss,
        "SupNDCG": SupNDCGLoss,
        "ROADMAP++": lambda: ROADMAPPlusPlusLoss(int(labels.max()) + 1, x.shape[1]),
        "HAPLoss": HAPLoss,
        "RS@k": RecallAtKLoss,
    }[name]()
    if name == "HAPLoss":
        labels = np.stack([labels // 8, labels], axis=1)

    @tf.function(jit_compile=True)
    def step(e):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = loss(labels, e)
        return value, tape.gradient(value, e)

    e = tf.constant(x)
    return lambda: [t.numpy() for t in step(e)]


def official_happier_rsk(modules, name, labels, x):
    import torch

    if name == "HAPLoss":
        hap, rel = modules["happier"]
        loss = hap.HAPLoss(return_type="HAP")
        lab = torch.tensor(np.stack([labels, labels // 8], axis=1))  # fine-to-coarse, as the official datasets

        def relevance_fn(target):
            return rel.compute_relevance_on_the_fly(target, alpha=1.0, check_for=range(3), type="pop")

        def step():
            e = torch.tensor(x, requires_grad=True)
            (1 - loss(e, lab, relevance_fn)).mean().backward()
            return e.grad

        return step
    criterion = modules["rsk"].RecallatK(0.01, len(x), int(labels.max()) + 1, x.shape[1], [1, 2, 4, 8, 16], [1] * 5, 0)

    def step():
        e = torch.tensor(x, requires_grad=True)
        total = 0.0
        for q in range(len(x)):  # the official step: one call per query
            total = total + criterion(e, q)
        total.backward()
        return e.grad

    return step


def official(modules, name, labels, x):
    import torch

    if name in ("HAPLoss", "RS@k"):
        return official_happier_rsk(modules, name, labels, x)
    ranking, cluster, _ = modules["suprank"]
    supap = {"tau": 0.01, "rho": 100.0, "delta": 0.05, "start": 0.5, "offset": 1.44}
    lab = torch.tensor(labels).view(-1, 1)
    if name == "SupRecall":
        crits = [(ranking.SupRecallLoss(at_k=[1, 2, 4, 8, 16], temp=1.0, hierarchy_level=0, **supap), 1.0)]
    elif name == "SupNDCG":
        crits = [(ranking.SupNDCGLoss(hierarchy_level="MULTI", **supap), 1.0)]
    else:
        proxy = cluster.ClusterLoss(embedding_size=x.shape[1], num_classes=int(labels.max()) + 1, temperature=0.05)
        crits = [(ranking.SupAPLoss(hierarchy_level=0, **supap), 0.9), (proxy, 0.1)]

    def step():
        e = torch.tensor(x, requires_grad=True)
        total = 0.0
        for crit, weight in crits:
            if isinstance(crit, cluster.ClusterLoss):
                total = total + weight * crit(e, lab.view(-1))
            else:
                total = total + weight * crit(e, lab, relevance_fn=lambda t: t).mean()
        total.backward()
        return e.grad

    return step


# The option naming the mirror each loss's official code comes from (None: MIRROR, SupRank).
OFFICIAL_NEEDS = {"SupRecall": None, "SupNDCG": None, "ROADMAP++": None, "HAPLoss": "happier", "RS@k": "recallatk"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mirror")
    parser.add_argument("--batch", type=int, nargs="+", default=[384, 4096])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--official-max", type=int, default=1024)
    parser.add_argument(
        "--losses", nargs="+", default=["SupRecall", "SupNDCG", "ROADMAP++"], choices=list(OFFICIAL_NEEDS)
    )
    parser.add_argument("--happier", help="HAPPIER mirror (for HAPLoss)")
    parser.add_argument("--recallatk", help="RecallatK_surrogate mirror (for RS@k)")
    args = parser.parse_args(argv)
    for name in args.losses:
        if OFFICIAL_NEEDS[name] and not getattr(args, OFFICIAL_NEEDS[name]):
            parser.error(f"--losses {name} needs --{OFFICIAL_NEEDS[name]} MIRROR")
    import make_fixtures

    root, commit = make_fixtures.source_tree(args.mirror)
    modules = {"suprank": make_fixtures.load_official(root)}
    print(f"official commit {commit}")
    if args.happier or args.recallatk:
        import importlib.util
        import tempfile

        spec = importlib.util.spec_from_file_location(
            "happier_fixtures", os.path.join(_DATA, "official_happier", "make_fixtures.py")
        )
        happier_fixtures = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(happier_fixtures)
        tmp = tempfile.mkdtemp(prefix="official_")
        if args.happier:
            src, commit = happier_fixtures.checkout(args.happier, tmp, "happier")
            hap, rel, _ = happier_fixtures.import_happier(src, float64=False)
            modules["happier"] = (hap, rel)
            print(f"HAPPIER commit {commit}")
        if args.recallatk:
            src, commit = happier_fixtures.checkout(args.recallatk, tmp, "rsk")
            modules["rsk"], _ = happier_fixtures.import_rsk(src)
            print(f"RecallatK_surrogate commit {commit}")
    print("| loss | B | ours fwd+bwd (s) | official (s) | official / ours | peak RSS after (MiB) |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch:
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(batch // 4), 4)
        x = rng.normal(size=(batch, args.dim)).astype("float32")
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for name in args.losses:
            mine = timed(ours(name, labels, x), args.repeats)
            if batch <= args.official_max:
                theirs = timed(official(modules, name, labels, x), args.repeats)
                ratio = f"{theirs / mine:.1f}"
                theirs = f"{theirs:.3f}"
            else:
                theirs, ratio = f"not run (B > --official-max {args.official_max})", "-"
            print(f"| {name} | {batch} | {mine:.3f} | {theirs} | {ratio} | {peak_mib():.0f} |", flush=True)


if __name__ == "__main__":
    main()
