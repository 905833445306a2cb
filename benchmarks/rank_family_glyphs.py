"""The rank-loss family side by side on the glyph benchmark, with a two-level hierarchy.

Same set-up as the ROADMAP ablation of ``recipes/glyphs.py --compare`` (its data, model and
batches are imported from it): ``tiny_cnn`` (64-d, L2-normalised) from scratch, Adam 1e-3,
class-balanced batches of 32 classes x 4 images (``MPerClassSampler``), the same steps for
every loss, several seeds. Unlike the ablation, the train step is not compiled with XLA by
default (``--xla``): on the loaded 2-core development CPU, XLA made a ROADMAP step about 3x and
a HAPLoss step 1.7x slower (0.56 against 0.19 s, 1.37 against 0.80 s). The hierarchy: the
coarse level of a character is its Unicode script (Latin / Greek / Cyrillic / Common,
``keras_roadmap.data.glyphs.script_of``), the fine level the character. Evaluated on the unseen
test characters (same-source: every test image queries the others): R@1 and mAP@R
(``retrieval_metrics``, the class), H-AP, ASI and NDCG (``hierarchical_retrieval_metrics``,
labels ``[script, class]``).

    python benchmarks/rank_family_glyphs.py                   # 3 seeds, 400 steps
    python benchmarks/rank_family_glyphs.py --seeds 1 --methods roadmap happier
    python benchmarks/rank_family_glyphs.py --smoke           # end to end in about a minute
    python benchmarks/rank_family_glyphs.py --replot docs/glyphs_family.json
    python benchmarks/rank_family_glyphs.py --resume          # keep --out's finished runs, add the rest

Losses at their defaults (the official configurations, see docs/rank-losses.md and
docs/hierarchical.md); only HAPPIER sees the script labels. ROADMAP++'s proxies train in the
same ``fit`` with their own learning rate (TorchAdam parameter group: 10.0, cosine to 0.1 per
epoch, the official ``ROADMAP_pp_SOP.yaml``); its network keeps Adam 1e-3 (PyTorch's Adam
update). HAPPIER is ``HAPLoss`` alone (the official configs add a 0.1 ClusterLoss) on the same
class-balanced batches (the official sampler draws 2 super-classes per batch).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

METHODS = {
    "roadmap": "ROADMAP",
    "roadmap_pp": "ROADMAP++",
    "suprecall": "SupRecall@k",
    "supndcg": "SupNDCG",
    "happier": "HAPPIER (H-AP loss)",
    "rsk": "RS@k",
    "smoothap": "SmoothAP",
}
TITLES = {"untrained": "Untrained network", **METHODS}
METRICS = ("recall@1", "map@r", "H-AP", "ASI", "NDCG")
METRIC_TITLES = {"recall@1": "R@1", "map@r": "mAP@R", "H-AP": "H-AP", "ASI": "ASI", "NDCG": "NDCG"}
# --smoke: 40 characters of the three scripts and digits, 2 x 8-class batches per split.
SMOKE_CHARACTERS = (
    "0123456789ABCDEFGHIJKLMNabcdef" + "\u03b1\u03b2\u03b3\u03b4\u03b6" + "\u0431\u0434\u0436\u0438\u043b"
)
COLOURS = {
    "roadmap": "tab:red",
    "roadmap_pp": "tab:brown",
    "suprecall": "tab:blue",
    "supndcg": "tab:cyan",
    "happier": "tab:purple",
    "rsk": "tab:orange",
    "smoothap": "tab:green",
    "untrained": "0.6",
}


def glyph_recipe():
    """``recipes/glyphs.py`` as a module (its data, sampler, model and evaluator)."""
    spec = importlib.util.spec_from_file_location("glyphs_recipe", ROOT / "recipes" / "glyphs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # autograph reads the module of the functions it converts
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--seeds", type=int, default=3, help="seeds per method (default 3)")
    add("--steps", type=int, default=400, help="training steps per run (default 400)")
    add("--epochs", type=int, default=10, help="the steps are cut into this many epochs (ROADMAP++'s proxy schedule)")
    add("--classes-per-batch", type=int, default=32)
    add("--samples-per-class", type=int, default=4)
    add("--learning-rate", type=float, default=1e-3, help="Adam learning rate of the network (default 1e-3)")
    add("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    add("--xla", action="store_true", help="compile the train step with XLA (slower on a 2-core CPU, see the docs)")
    add("--eager", action="store_true", help="run the training steps eagerly (no tracing: --smoke)")
    add("--fonts-dir", default=None, help="folder of .ttf/.otf fonts (default: matplotlib's)")
    add("--cache-dir", default=None, help="dataset cache folder (default ~/.cache/keras_roadmap/glyphs)")
    add("--copies", type=int, default=2, help="augmented images per (character, font)")
    add("--out", default="docs/glyphs_family.json", help="results JSON path")
    add("--plot", default="docs/glyphs_family.png", help="plot (PNG) path; '' for none")
    add("--replot", metavar="RESULTS_JSON", help="redraw --plot and reprint the table from a results file")
    add(
        "--resume",
        action="store_true",
        help="keep the (method, seed) runs already in --out (same settings) and train only the missing ones",
    )
    add("--smoke", action="store_true", help="40 characters, 1 seed, 4 eager steps: an end-to-end check")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.steps, args.epochs, args.classes_per_batch, args.copies = 1, 4, 2, 8, 1
        args.xla, args.eager = False, True
    for name in ("seeds", "steps", "epochs", "classes_per_batch", "samples_per_class", "copies"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps % args.epochs:
        parser.error(f"--steps ({args.steps}) must be a multiple of --epochs ({args.epochs})")
    return args


def load_data(recipe, args):
    """The glyph splits with float images, contiguous train class ids (ROADMAP++'s proxies)
    and ``(N, 2)`` ``[script, class]`` labels."""
    from keras_roadmap.data.glyphs import build_glyph_dataset

    dataset = build_glyph_dataset(
        args.fonts_dir,
        args.cache_dir,
        copies=args.copies,
        characters=SMOKE_CHARACTERS if args.smoke else None,
        min_fonts=8,
    )
    splits = {}
    for name in ("train", "test"):
        images, labels = dataset.split(name)
        hierarchy = dataset.hierarchical_labels(labels)
        classes = np.unique(labels)
        fine = np.searchsorted(classes, labels).astype(np.int64)  # 0..C-1 within the split
        splits[name] = {
            "images": images.astype(np.float32) / 255.0,
            "labels": fine,
            "hierarchy": np.stack([hierarchy[:, 0], fine], axis=1),
        }
    return dataset, splits["train"], splits["test"]


def classes_per_script(hierarchy):
    """``{script name: number of classes}`` of ``(N, 2)`` ``[script, class]`` labels."""
    from keras_roadmap.data.glyphs import SCRIPTS

    scripts, counts = np.unique(np.unique(hierarchy, axis=0)[:, 0], return_counts=True)
    return {SCRIPTS[s]: int(n) for s, n in zip(scripts, counts, strict=True)}


def make_loss_and_optimizer(method, num_classes, args):
    import keras

    import keras_roadmap as kr

    adam = keras.optimizers.Adam(args.learning_rate)
    if method == "roadmap":
        return kr.ROADMAPLoss(), adam
    if method == "roadmap_pp":
        loss = kr.ROADMAPPlusPlusLoss(num_classes=num_classes, embedding_dim=64)
        steps_per_epoch = args.steps // args.epochs
        optimizer = kr.TorchAdam(
            learning_rate=args.learning_rate,
            group_learning_rates={
                "cluster_proxies": kr.CosineAnnealingDecay(10.0, args.epochs, steps_per_epoch, eta_min=0.1)
            },
        )
        return loss, optimizer
    if method == "suprecall":
        return kr.SupRecallLoss(), adam
    if method == "supndcg":
        return kr.SupNDCGLoss(), adam
    if method == "happier":
        return kr.HAPLoss(), adam
    if method == "rsk":
        return kr.RecallAtKLoss(), adam
    if method == "smoothap":
        return kr.SmoothAPLoss(), adam
    raise ValueError(f"unknown method {method!r}")


def evaluate(recipe, encoder, test):
    from keras_roadmap import hierarchical_retrieval_metrics

    embeddings = recipe.embed(encoder, test["images"]).astype(np.float32)
    record = recipe.evaluate(embeddings, test["labels"])
    hierarchical = hierarchical_retrieval_metrics(embeddings, test["hierarchy"])
    record.update({key: float(hierarchical[key]) for key in ("H-AP", "ASI", "NDCG")})
    return record


def train_one(recipe, method, seed, train, test, args):
    """Train one (method, seed) from scratch; the run record."""
    import keras

    encoder = recipe.build_model(train["images"].shape[1:], seed)
    num_classes = int(train["labels"].max()) + 1
    loss, optimizer = make_loss_and_optimizer(method, num_classes, args)
    model = encoder
    if method == "roadmap_pp":  # identity layer holding the proxies: they become model weights
        model = keras.Sequential([encoder, loss.proxies])
    model.compile(optimizer=optimizer, loss=loss, jit_compile=args.xla, run_eagerly=args.eager)
    targets = train["hierarchy"] if method == "happier" else train["labels"]
    batches = recipe.train_batches(train["labels"], args, seed)
    data = recipe.make_dataset(train["images"], targets, batches).repeat()
    start = time.perf_counter()
    history = model.fit(data, epochs=args.epochs, steps_per_epoch=args.steps // args.epochs, shuffle=False, verbose=0)
    record = {
        "method": method,
        "seed": seed,
        "train_seconds": time.perf_counter() - start,
        "final_loss": float(history.history["loss"][-1]),
    }
    start = time.perf_counter()
    record.update(evaluate(recipe, encoder, test))
    record["eval_seconds"] = time.perf_counter() - start
    return record


def summarise(records):
    """``{method: {metric: (mean, std, n)}}`` over seeds (std: population, 0 for one seed)."""
    summary = {}
    for method in dict.fromkeys(r["method"] for r in records):
        runs = [r for r in records if r["method"] == method]
        summary[method] = {
            key: (float(np.mean([r[key] for r in runs])), float(np.std([r[key] for r in runs])), len(runs))
            for key in (*METRICS, "train_seconds")
            if all(key in r for r in runs)
        }
    return summary


def markdown_table(summary):
    """Mean ± std per metric; the best trained mean of each column in bold."""
    trained = [m for m in summary if m in METHODS]
    best = {key: max((summary[m][key][0] for m in trained), default=None) for key in METRICS}
    header = "| Method | " + " | ".join(METRIC_TITLES[k] for k in METRICS) + " | Train s/run |"
    lines = [header, "|---" * (len(METRICS) + 2) + "|"]
    for method, stats in summary.items():
        cells = [TITLES.get(method, method)]
        for key in METRICS:
            mean, std, n = stats[key]
            text = f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"
            cells.append(f"**{text}**" if method in METHODS and mean == best[key] else text)
        cells.append(f"{stats['train_seconds'][0]:.0f}" if "train_seconds" in stats else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(records, path):
    """One panel per metric: a row per method, a dot per seed, the mean ± std bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in records))
    rows = np.arange(len(methods))[::-1]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(18, 4.8), dpi=100, sharey=True)
    for ax, key in zip(axes, METRICS, strict=True):
        values_all = []
        for row, method in zip(rows, methods, strict=True):
            values = [r[key] for r in records if r["method"] == method]
            values_all.extend(values)
            colour = COLOURS.get(method, "gray")
            ax.scatter(values, [row] * len(values), color=colour, s=24, alpha=0.8, zorder=3)
            mean, std = float(np.mean(values)), float(np.std(values))
            ax.errorbar(mean, row, xerr=std if len(values) > 1 else None, fmt="|", color="black", ms=14, capsize=3)
        trained = [r[key] for r in records if r["method"] in METHODS]
        low, high = min(values_all), max(values_all)
        if trained:  # zoom on the trained losses; the untrained network may fall off the left edge
            low, high = min(trained), max(trained)
        pad = max(0.01, 0.15 * (high - low))
        ax.set_xlim(low - pad, high + pad)
        ax.set_title(METRIC_TITLES[key])
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=9)
    n_seeds = {m: sum(r["method"] == m for r in records) for m in methods}
    axes[0].set_yticks(rows)
    axes[0].set_yticklabels([f"{TITLES.get(m, m)} (n={n_seeds[m]})" for m in methods])
    fig.suptitle("Unseen glyph classes, hierarchy [script, character]: one dot per seed, | = mean ± std")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def replot(args):
    with open(args.replot) as f:
        result = json.load(f)
    print(markdown_table(summarise(result["runs"])))
    if args.plot:
        plot(result["runs"], args.plot)
        print(f"Plot: {args.plot}")
    return result


# Settings a resumed run must share with the results file it extends.
_RUN_SETTINGS = ("steps", "epochs", "classes_per_batch", "samples_per_class", "learning_rate", "xla", "copies", "smoke")


def finished_runs(args):
    """The runs of ``--out`` that ``--resume`` keeps; a clear error when its settings differ."""
    if not os.path.exists(args.out):
        return []
    with open(args.out) as f:
        previous = json.load(f)
    config = previous.get("config", {})
    changed = [name for name in _RUN_SETTINGS if config.get(name, getattr(args, name)) != getattr(args, name)]
    if changed:
        raise SystemExit(
            f"--resume: {args.out} was made with other settings ({', '.join(f'--{n}' for n in changed)}); "
            "rerun with them or write to another --out."
        )
    return previous["runs"]


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        return replot(args)
    wall = time.perf_counter()
    recipe = glyph_recipe()
    dataset, train, test = load_data(recipe, args)
    script_counts = {"train": classes_per_script(train["hierarchy"]), "test": classes_per_script(test["hierarchy"])}
    print(f"{dataset}; classes per script {script_counts}", flush=True)
    records = finished_runs(args) if args.resume else []
    done = {(r["method"], r["seed"]) for r in records}
    if ("untrained", 0) not in done:
        untrained = recipe.build_model(train["images"].shape[1:], 0)
        records.insert(0, {"method": "untrained", "seed": 0, **evaluate(recipe, untrained, test)})
    dataset_info = {
        "num_images": int(len(dataset.labels)),
        "num_classes": len(dataset.characters),
        "train_images": int(len(train["labels"])),
        "test_images": int(len(test["labels"])),
        "classes_per_script": script_counts,
    }
    command = " ".join(["python", "benchmarks/rank_family_glyphs.py", *(sys.argv[1:] if argv is None else argv)])
    for seed in range(args.seeds):
        for method in args.methods:
            if (method, seed) in done:
                continue
            record = train_one(recipe, method, seed, train, test, args)
            records.append(record)
            metrics = "  ".join(f"{METRIC_TITLES[k]} {record[k]:.3f}" for k in METRICS)
            print(f"seed {seed} {method:11s} {metrics}  ({record['train_seconds']:.0f} s)", flush=True)
            # Written after every run, so an interrupted benchmark leaves its finished runs.
            result = write_result(args, command, dataset_info, records, time.perf_counter() - wall)
    result = write_result(args, command, dataset_info, records, time.perf_counter() - wall)
    print()
    print(result["table"])
    print(f"\nTotal wall time {result['wall_seconds']:.0f} s on {os.cpu_count()} CPU core(s).")
    if args.plot:
        plot(records, args.plot)
        print(f"Plot: {args.plot}")
    print(f"Results: {args.out}")
    return result


def write_result(args, command, dataset_info, records, wall_seconds):
    summary = summarise(records)
    result = {
        "config": dict(vars(args)),
        "command": command,
        "dataset": dataset_info,
        "runs": records,
        "summary": {m: {k: {"mean": v[0], "std": v[1], "n": v[2]} for k, v in s.items()} for m, s in summary.items()},
        "table": markdown_table(summary),
        "wall_seconds": wall_seconds,
        "cpu_count": os.cpu_count(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    return result


if __name__ == "__main__":
    main()
