"""Speed and memory of `retrieval_metrics` (exact, every metric, K up to 1000) against a bare
faiss `IndexFlatIP` search of the same vectors with k = 1001 (what Recall@1000 needs), same run.

Each case runs in a fresh subprocess so that its peak RSS (resource.getrusage ru_maxrss) is its
own; inside it, ours runs first (its added peak memory is measured), then the bare faiss search
(index build + search of every vector, in chunks of 4096 queries, results discarded). Data:
clustered unit vectors (class centre + noise whose scale varies per class), class sizes shaped
like the real test sets:

* sop: 60,502 x 512, 11,316 classes of 2-12 images (Stanford Online Products test split).
* inat: 40,000 x 512, 900 long-tailed classes up to ~1,900 images: positives lie far down the
  ranking, so the full mAP needs exact ranks far beyond any k-NN list.
* inat_full (--full, ~5-20 min): 136,093 x 512, the iNaturalist-2018 test size.

    python benchmarks/eval_speed.py            # sop + inat
    python benchmarks/eval_speed.py --full     # + inat_full
    python benchmarks/eval_speed.py --tfsim    # + tensorflow-similarity 0.17.1 at 10k x 128
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
    # name: (N, D, classes, min size, max size, log-normal sigma of the sizes, noise)
    "sop": (60_502, 512, 11_316, 2, 12, 1.0, 2.2),
    "inat": (40_000, 512, 900, 2, 1_900, 1.5, 2.6),
    "inat_full": (136_093, 512, 2_452, 2, 4_000, 1.5, 2.6),
    "tfsim10k": (10_000, 128, 1_000, 10, 10, 1.0, 1.6),
}


def class_sizes(n, n_classes, low, high, sigma, rng):
    """`n_classes` ints in [low, high] summing to n, long-tailed (log-normal) as in SOP / iNaturalist."""
    if low == high:
        return np.full(n_classes, low)
    raw = rng.lognormal(0.0, sigma, n_classes)
    sizes = np.clip(np.round(low + raw / raw.mean() * (n / n_classes - low)), low, high).astype(int)
    while sizes.sum() != n:
        step = 1 if sizes.sum() < n else -1
        movable = np.flatnonzero((sizes + step >= low) & (sizes + step <= high))
        pick = rng.choice(movable, size=min(len(movable), abs(n - sizes.sum())), replace=False)
        sizes[pick] += step
    return sizes


def clustered(n, dim, n_classes, low, high, sigma, noise, seed=0):
    """(embeddings (n, dim) float32 unit rows, labels (n,) int64), built in blocks to keep RSS low.

    Each class has its own spread (noise x log-normal(0, 0.25)): some classes are tight, some
    are spread far down the ranking, as with real embeddings."""
    rng = np.random.default_rng(seed)
    sizes = class_sizes(n, n_classes, low, high, sigma, rng)
    labels = rng.permutation(np.repeat(np.arange(n_classes), sizes))
    centres = rng.normal(size=(n_classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = (noise / np.sqrt(dim) * rng.lognormal(0.0, 0.25, n_classes)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 8192):
        lab = labels[start : start + 8192]
        block = centres[lab] + spread[lab, None] * rng.standard_normal((len(lab), dim), dtype=np.float32)
        x[start : start + len(lab)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, labels.astype(np.int64)


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_faiss(x, k=1001, chunk=4096):
    """Seconds of a bare exact faiss search of every vector against all (IndexFlatIP, k)."""
    import faiss

    began = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    for start in range(0, len(x), chunk):
        index.search(x[start : start + chunk], k)
    return time.perf_counter() - began


def run_case(name):
    """Child process: one case; prints a JSON line."""
    sys.path.insert(0, ROOT)
    from keras_roadmap.evaluation import retrieval_metrics

    n, dim, n_classes, low, high, sigma, noise = CASES[name]
    x, y = clustered(n, dim, n_classes, low, high, sigma, noise)
    out = {"case": name, "n": n, "dim": dim, "classes": n_classes, "max_class": int(np.bincount(y).max())}
    out["rss_before_mib"] = rss_mib()
    began = time.perf_counter()
    metrics = retrieval_metrics(x, y, progress=False)
    out["ours_s"] = time.perf_counter() - began
    out["peak_rss_mib"] = rss_mib()
    out.update({k: metrics[k] for k in ("recall@1", "recall@1000", "map@r", "map", "mrr", "num_lone_queries")})
    out["faiss_s"] = bare_faiss(x)
    if name.startswith("tfsim"):
        out.update(run_tfsim(x, y))
        began = time.perf_counter()
        retrieval_metrics(x, y, ks=(1,), progress=False)
        out["ours_r1_only_s"] = time.perf_counter() - began
    print(json.dumps(out))


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
    parser.add_argument("--full", action="store_true", help="also the 136,093-image iNaturalist-2018 test size")
    parser.add_argument("--tfsim", action="store_true", help="also tensorflow-similarity 0.17.1 at 10k x 128")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), help="run exactly these cases")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case)
        return
    cases = args.cases or (
        ["sop", "inat"] + (["inat_full"] if args.full else []) + (["tfsim10k"] if args.tfsim else [])
    )
    results = []
    for name in cases:
        proc = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"case {name} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    import faiss

    print(
        f"retrieval_metrics (exact, all metrics, ks up to 1000) vs bare faiss IndexFlatIP k=1001; "
        f"{os.cpu_count()} CPU cores, faiss {faiss.__version__}, numpy {np.__version__}"
    )
    with open("/proc/loadavg") as f:
        print(f"/proc/loadavg at the end: {f.read().strip()}")
    print(
        "| case | N x D | classes (max size) | ours | bare faiss k=1001 | ratio | added peak RSS "
        "| R@1 | R@1000 | MAP@R | mAP |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['case']} | {r['n']:,} x {r['dim']} | {r['classes']:,} ({r['max_class']}) | {r['ours_s']:.1f} s | "
            f"{r['faiss_s']:.1f} s | {r['ours_s'] / r['faiss_s']:.2f} | "
            f"{r['peak_rss_mib'] - r['rss_before_mib']:.0f} MiB | {r['recall@1']:.4f} | {r['recall@1000']:.4f} | "
            f"{r['map@r']:.4f} | {r['map']:.4f} |"
        )
    tfsim = [r for r in results if "tfsim_total_s" in r]
    if tfsim:
        print(
            "\nSame data, leave-one-out Recall@1: tensorflow-similarity 0.17.1 "
            "(NMSLib HNSW, approximate) vs ours (exact)"
        )
        print("| N x D | TF-Sim build + evaluate | ours, R@1 only | ours, all metrics | TF-Sim R@1 | our R@1 |")
        print("|---|---|---|---|---|---|")
        for r in tfsim:
            print(
                f"| {r['n']:,} x {r['dim']} | {r['tfsim_total_s']:.1f} s (build {r['tfsim_build_s']:.1f} s) | "
                f"{r['ours_r1_only_s']:.2f} s | {r['ours_s']:.2f} s | {r['tfsim_recall@1']:.4f} | {r['recall@1']:.4f} |"
            )


if __name__ == "__main__":
    main()
