"""Speed and memory of `retrieval_metrics` at benchmark-test sizes, and a same-run comparison
with tensorflow-similarity 0.17.1's `Indexer.evaluate_retrieval`.

Each case runs in a fresh subprocess so its peak RSS (resource.getrusage ru_maxrss) is its own.
Data: synthetic clustered unit vectors (class centre + noise, L2-normalised), class sizes shaped
like the real test sets.

    python benchmarks/eval_speed.py            # SOP test size + TF-Sim comparison at 10k x 128
    python benchmarks/eval_speed.py --full     # + iNaturalist-2018 test size, TF-Sim at 20k x 128
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CASES = {
    # name: (N, D, classes, min size, max size, noise)
    "sop": (60_502, 512, 11_316, 2, 12, 2.2),
    "inat": (136_093, 512, 8_142, 2, 400, 2.4),
    "tfsim10k": (10_000, 128, 1_000, 10, 10, 1.6),
    "tfsim20k": (20_000, 128, 2_000, 10, 10, 1.6),
}


def class_sizes(n, n_classes, low, high, rng):
    """`n_classes` ints in [low, high] summing to n, long-tailed (log-normal) as in SOP / iNaturalist."""
    if low == high:
        return np.full(n_classes, low)
    raw = rng.lognormal(0.0, 1.0, n_classes)
    sizes = np.clip(np.round(low + raw / raw.mean() * (n / n_classes - low)), low, high).astype(int)
    while sizes.sum() != n:
        step = 1 if sizes.sum() < n else -1
        movable = np.flatnonzero((sizes + step >= low) & (sizes + step <= high))
        pick = rng.choice(movable, size=min(len(movable), abs(n - sizes.sum())), replace=False)
        sizes[pick] += step
    return sizes


def clustered(n, dim, n_classes, low, high, noise, seed=0):
    """(embeddings (n, dim) float32 unit rows, labels (n,) int64), built in blocks to keep RSS low."""
    rng = np.random.default_rng(seed)
    sizes = class_sizes(n, n_classes, low, high, rng)
    labels = rng.permutation(np.repeat(np.arange(n_classes), sizes))
    centres = rng.normal(size=(n_classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 8192):
        lab = labels[start : start + 8192]
        block = centres[lab] + noise / np.sqrt(dim) * rng.standard_normal((len(lab), dim), dtype=np.float32)
        x[start : start + len(lab)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, labels.astype(np.int64)


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(name):
    """Child process: one case; prints a JSON line."""
    sys.path.insert(0, ROOT)
    from keras_roadmap.evaluation import retrieval_metrics

    n, dim, n_classes, low, high, noise = CASES[name]
    x, y = clustered(n, dim, n_classes, low, high, noise)
    out = {"case": name, "n": n, "dim": dim, "classes": n_classes, "max_class": int(np.bincount(y).max())}
    out["rss_before_mib"] = rss_mib()
    began = time.perf_counter()
    metrics = retrieval_metrics(x, y)
    out["ours_s"] = time.perf_counter() - began
    out["peak_rss_mib"] = rss_mib()
    out.update({k: metrics[k] for k in ("recall@1", "recall@10", "map@r", "map", "mrr", "num_lone_queries")})
    out["sgemm_s"] = time_sgemm(x)
    if name.startswith("tfsim"):
        out.update(run_tfsim(x, y))
        began = time.perf_counter()
        metrics = retrieval_metrics(x, y, ks=(1,))
        out["ours_r1_only_s"] = time.perf_counter() - began
    print(json.dumps(out))


def time_sgemm(x, chunk=2048):
    """Seconds of the bare float32 products x @ x.T in chunks: the arithmetic floor of any exact search."""
    began = time.perf_counter()
    for start in range(0, len(x), chunk):
        x[start : start + chunk] @ x.T
    return time.perf_counter() - began


def run_tfsim(x, y):
    """TF-Sim leave-one-out Recall@1: NMSLib HNSW (its only search), cosine (no inner_product in
    NMSLib), RecallAtK with drop_closest_lookup (its [1:1+k] slice is right, unlike P@K/MAP@K)
    and name="recall" (it appends "@k": name="recall@1" gives "recall@1@1")."""
    from tensorflow_similarity.indexer import Indexer
    from tensorflow_similarity.retrieval_metrics import RecallAtK

    began = time.perf_counter()
    indexer = Indexer(embedding_size=x.shape[1], distance="cosine", search="nmslib")
    indexer.batch_add(x, labels=y, verbose=0)
    built = time.perf_counter()
    result = indexer.evaluate_retrieval(x, y, [RecallAtK(k=1, name="recall", drop_closest_lookup=True)], verbose=0)
    done = time.perf_counter()
    return {"tfsim_build_s": built - began, "tfsim_total_s": done - began, "tfsim_recall@1": float(result["recall@1"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also the iNaturalist-2018 size and TF-Sim at 20k")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case)
        return
    cases = ["sop", "tfsim10k"] + (["inat", "tfsim20k"] if args.full else [])
    results = []
    for name in cases:
        proc = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"case {name} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    import faiss

    print(f"retrieval_metrics (exact faiss, all metrics, ks up to 1000); {os.cpu_count()} CPU cores, faiss {faiss.__version__}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print("| case | N x D | classes (max size) | ours | bare sgemm x @ x.T (same run) | ratio | peak RSS (before eval) | R@1 | MAP@R | mAP |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['case']} | {r['n']:,} x {r['dim']} | {r['classes']:,} ({r['max_class']}) | {r['ours_s']:.1f} s | "
            f"{r['sgemm_s']:.1f} s | {r['ours_s'] / r['sgemm_s']:.2f} | "
            f"{r['peak_rss_mib']:.0f} MiB ({r['rss_before_mib']:.0f}) | {r['recall@1']:.4f} | {r['map@r']:.4f} | {r['map']:.4f} |"
        )
    tfsim = [r for r in results if "tfsim_total_s" in r]
    if tfsim:
        print("\nSame data, leave-one-out Recall@1: tensorflow-similarity 0.17.1 (NMSLib HNSW, approximate) vs ours (exact)")
        print("| N x D | TF-Sim build + evaluate | ours, R@1 only | ours, all metrics | ratio (TF-Sim / ours R@1 only) | TF-Sim R@1 | our R@1 |")
        print("|---|---|---|---|---|---|---|")
        for r in tfsim:
            print(
                f"| {r['n']:,} x {r['dim']} | {r['tfsim_total_s']:.1f} s (build {r['tfsim_build_s']:.1f} s) | "
                f"{r['ours_r1_only_s']:.2f} s | {r['ours_s']:.2f} s | {r['tfsim_total_s'] / r['ours_r1_only_s']:.0f}x | "
                f"{r['tfsim_recall@1']:.4f} | {r['recall@1']:.4f} |"
            )


if __name__ == "__main__":
    main()
