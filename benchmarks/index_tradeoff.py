"""Exact vs approximate search for big galleries: build time, queries per second, Recall@1/@10
relative to the exact search, per index type (keras_roadmap.indexing), in one run.

Data: clustered unit vectors (eval_speed.clustered), 10,000 held-out queries from the same classes.

    python benchmarks/index_tradeoff.py            # 1,000,000 x 128
    python benchmarks/index_tradeoff.py --quick    # 200,000 x 128
    python benchmarks/index_tradeoff.py --n 50000  # any size
"""

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from eval_speed import clustered  # noqa: E402

from keras_roadmap.indexing import build_index, default_nlist, index_params  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200,000 vectors instead of 1,000,000")
    parser.add_argument("--n", type=int, help="gallery size (overrides --quick)")
    parser.add_argument("--queries", type=int, default=10_000)
    args = parser.parse_args()
    n = args.n or (200_000 if args.quick else 1_000_000)
    x, _ = clustered(n + args.queries, 128, max(n // 50, 10), 2, 400, 1.0, 1.2)
    gallery, queries = x[:n], x[n:]
    nlist = default_nlist(n)
    settings = [
        ("flat", {}, {}),
        ("ivf", {"nlist": nlist}, [{"nprobe": p} for p in (8, 32, 128)]),
        ("hnsw", {"hnsw_m": 32, "ef_construction": 80}, [{"ef_search": e} for e in (32, 128, 512)]),
    ]
    exact = None
    rows = []
    for kind, build_kw, search_list in settings:
        began = time.perf_counter()
        index = build_index(gallery, kind, **build_kw)
        build_s = time.perf_counter() - began
        for search_kw in search_list or [{}]:
            if "nprobe" in search_kw:
                index.nprobe = search_kw["nprobe"]
            if "ef_search" in search_kw:
                index.hnsw.efSearch = search_kw["ef_search"]
            began = time.perf_counter()
            _, found = index.search(queries, 10)
            qps = len(queries) / (time.perf_counter() - began)
            if exact is None:
                exact = found
            r1 = float(np.mean(found[:, 0] == exact[:, 0]))
            r10 = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=False)]))
            p = index_params(index)
            shown = ", ".join(
                f"{k}={p[k]}" for k in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search") if k in p
            )
            rows.append((kind, shown or "-", build_s, qps, r1, r10))
            print(rows[-1], file=sys.stderr, flush=True)
    import faiss

    print(f"{n:,} x 128 gallery, {len(queries):,} queries, k=10; faiss {faiss.__version__}, {os.cpu_count()} cores")
    with open("/proc/loadavg") as f:
        print(f"/proc/loadavg at the end: {f.read().strip()}")
    print("| index | settings | build (incl. training) | queries / s | Recall@1 vs exact | Recall@10 vs exact |")
    print("|---|---|---|---|---|---|")
    for kind, shown, build_s, qps, r1, r10 in rows:
        print(f"| {kind} | {shown} | {build_s:.1f} s | {qps:,.0f} | {r1:.4f} | {r10:.4f} |")


if __name__ == "__main__":
    main()
