"""Unseen-class glyph retrieval: the ROADMAP ablation on a benchmark that runs on any CPU.

Trains the same small CNN (``tiny_cnn``: 3 conv blocks, 64-d L2-normalised embedding) with the
same budget and the same class-balanced batches (32 classes x 4 images, ``MPerClassSampler``) for
each loss, over several seeds, and evaluates retrieval among the *unseen* test characters
(same-source: every test image queries all the other test images). Baselines: the untrained
network and raw pixels. The decomposability gap (``keras_roadmap.diagnostics``) is measured on
the training set at the end of every run, and recorded during training for SupAP vs ROADMAP,
with and without a cross-batch memory, into a plot.

    python recipes/glyphs.py --compare                      # 3 seeds, 400 steps
    python recipes/glyphs.py --compare --seeds 1 --steps 200
    python recipes/glyphs.py --compare --smoke              # end-to-end check in well under a minute

The classic pair-loss baseline is tensorflow-similarity's MultiSimilarityLoss, made to run under
Keras 3 by ``keras_roadmap.tfsim.TFSimilarityLoss`` (three small fixes; see its docstring).
Without tensorflow-similarity installed that row is skipped.

Without ``--compare`` (or ``--replot``) this script is the glyph *recipe*: the same as
``keras-roadmap train glyphs ARGS`` (keras_roadmap/recipes/configs/glyphs.yaml: the images are written as
files and read by the same pipeline as SOP/CUB; ONNX export, retrieval grid, served search).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Methods of the ablation table, in print order. "memory": FIFO cross-batch memory.
METHODS = {
    "roadmap": {"title": "ROADMAP (SupAP + calibration)", "loss": "ROADMAPLoss"},
    "supap": {"title": "SupAP alone", "loss": "SupAPLoss"},
    "smoothap": {"title": "SmoothAP", "loss": "SmoothAPLoss"},
    "calibration": {"title": "Calibration alone", "loss": "CalibrationLoss"},
    "multisimilarity": {"title": "MultiSimilarity (tf-similarity)", "loss": None},
    "roadmap_memory": {"title": "ROADMAP + cross-batch memory", "loss": "ROADMAPLoss", "memory": True},
    "supap_memory": {"title": "SupAP + cross-batch memory", "loss": "SupAPLoss", "memory": True},
}
# Runs whose decomposability gap is recorded during training (seed 0) for the plot.
GAP_CURVES = ("supap", "roadmap", "supap_memory", "roadmap_memory")
# Characters of the --smoke dataset: 40 classes, enough for 2 x 8-class batches per split.
SMOKE_CHARACTERS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcd"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--compare", action="store_true", help="run the ablation")
    add("--replot", metavar="RESULTS_JSON", help="redraw --plot and reprint the table from a results file")
    add("--seeds", type=int, default=3, help="seeds per method (default 3)")
    add("--steps", type=int, default=400, help="training steps per run (default 400)")
    add("--epochs", type=int, default=10, help="the steps are cut into this many epochs (gap curve points)")
    add("--classes-per-batch", type=int, default=32)
    add("--samples-per-class", type=int, default=4)
    add("--learning-rate", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    add("--memory-size", type=int, default=2048, help="FIFO memory slots, a multiple of the batch (default 2048)")
    add("--memory-warmup", type=float, default=0.25, help="fraction of the steps before the memory joins the loss")
    add("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    add("--memory-seeds", type=int, default=1, help="seeds of the memory rows (default 1: seed 0, for the plot)")
    add("--gap-batches", type=int, default=20, help="batches the decomposability gap averages over (default 20)")
    add("--fonts-dir", default=None, help="folder of .ttf/.otf fonts (default: matplotlib's)")
    add("--cache-dir", default=None, help="dataset cache folder (default ~/.cache/keras_roadmap/glyphs)")
    add("--copies", type=int, default=2, help="augmented images per (character, font)")
    add("--out", default="glyphs_results.json", help="results JSON path")
    add("--plot", default="glyphs_gap.png", help="decomposability-gap plot (PNG) path; '' for none")
    add("--smoke", action="store_true", help="tiny dataset, 1 seed, a few steps: an end-to-end check")
    args = parser.parse_args(argv)
    if not (args.compare or args.replot):
        parser.error("nothing to do: pass --compare (or --replot RESULTS_JSON)")
    if args.smoke:
        args.seeds, args.steps, args.epochs, args.classes_per_batch, args.copies = 1, 4, 2, 8, 1
        args.memory_size, args.gap_batches = 64, 4
    positive = (
        "seeds",
        "steps",
        "epochs",
        "classes_per_batch",
        "samples_per_class",
        "memory_size",
        "copies",
        "memory_seeds",
        "gap_batches",
    )
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps % args.epochs:
        parser.error(f"--steps ({args.steps}) must be a multiple of --epochs ({args.epochs})")
    if args.memory_size % (args.classes_per_batch * args.samples_per_class):
        parser.error("--memory-size must be a multiple of the batch size (classes-per-batch x samples-per-class)")
    return args


def tfsim_multisimilarity_loss():
    """tensorflow-similarity's MultiSimilarityLoss through ``keras_roadmap.tfsim``, or None if
    tensorflow-similarity is not installed."""
    try:
        import tensorflow_similarity  # noqa: F401
    except ImportError:
        return None
    from keras_roadmap.tfsim import TFSimilarityLoss

    return TFSimilarityLoss("MultiSimilarityLoss")


def TFSimilarityLossAdapter(inner):  # noqa: N802 - the name this script used before keras_roadmap.tfsim
    """``keras_roadmap.tfsim.TFSimilarityLoss`` around a tf-similarity loss instance."""
    from keras_roadmap.tfsim import TFSimilarityLoss

    return TFSimilarityLoss(inner)


def load_data(args):
    from keras_roadmap.data.glyphs import build_glyph_dataset

    start = time.perf_counter()
    dataset = build_glyph_dataset(
        args.fonts_dir,
        args.cache_dir,
        copies=args.copies,
        characters=SMOKE_CHARACTERS if args.smoke else None,
        min_fonts=8,
    )
    seconds = time.perf_counter() - start
    train_x, train_y = dataset.split("train")
    test_x, test_y = dataset.split("test")
    as_float = lambda x: x.astype(np.float32) / 255.0  # noqa: E731
    return dataset, (as_float(train_x), train_y), (as_float(test_x), test_y), seconds


def train_batches(labels, args, seed):
    """``(steps, B)`` index batches: consecutive epochs of the class-balanced sampler."""
    from keras_roadmap.samplers import MPerClassSampler

    batch = args.classes_per_batch * args.samples_per_class
    sampler = MPerClassSampler(labels, batch, args.samples_per_class, seed=seed)
    epochs = -(-args.steps // len(sampler))
    return np.concatenate([sampler.batches(e) for e in range(epochs)])[: args.steps]


def make_dataset(images, labels, batches):
    import tensorflow as tf

    images, labels = tf.constant(images), tf.constant(labels)
    return (
        tf.data.Dataset.from_tensor_slices(batches)
        .map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(2)
    )


def build_model(input_shape, seed):
    import keras

    from keras_roadmap.models import build_embedder

    keras.utils.set_random_seed(seed)
    # Trained from scratch: BatchNorm must learn (the default freezes it as for pretrained nets).
    return build_embedder("tiny_cnn", input_shape=input_shape, freeze_batchnorm=False)


def make_loss(method):
    import keras_roadmap.losses as losses

    name = METHODS[method]["loss"]
    if name is None:
        return tfsim_multisimilarity_loss()
    return getattr(losses, name)()


def embed(encoder, images, chunk=1024):
    """Embeddings of ``images`` by eager calls: ``predict`` would compile (XLA, as the model was
    compiled with ``jit_compile=True``) a function per model, which costs more than it saves
    at this size."""
    chunks = [encoder(images[i : i + chunk], training=False) for i in range(0, len(images), chunk)]
    return np.concatenate([np.asarray(c) for c in chunks])


def evaluate(embeddings, labels):
    from keras_roadmap.evaluation import retrieval_metrics

    metrics = retrieval_metrics(np.asarray(embeddings, np.float32), labels, ks=(1,))
    return {"recall@1": metrics["recall@1"], "map@r": metrics["map@r"]}


def train_one(method, seed, train, test, args):
    """Train one (method, seed); returns the run record."""
    import keras

    from keras_roadmap import CrossBatchMemory, RetrievalTrainer
    from keras_roadmap.diagnostics import DecomposabilityGap, decomposability_gap

    loss = make_loss(method)
    encoder = build_model(train[0].shape[1:], seed)
    batch = args.classes_per_batch * args.samples_per_class
    if METHODS[method].get("memory"):
        warmup = int(args.steps * args.memory_warmup)
        memory = CrossBatchMemory(size=args.memory_size, unique=False, activate_after=warmup)
        model = RetrievalTrainer(encoder, memory=memory)
    else:
        model = encoder
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss, jit_compile=True)
    # The gap is measured on fixed batches (not the training ones) so that runs compare.
    gap_kwargs = dict(
        batch_size=batch, samples_per_class=args.samples_per_class, num_batches=args.gap_batches, seed=12345
    )
    callbacks = []
    if seed == 0 and method in GAP_CURVES and args.plot:
        callbacks.append(
            DecomposabilityGap(
                train,
                every_n_epochs=1,
                measure_before_training=True,
                embed_fn=lambda x: embed(encoder, x),
                **gap_kwargs,
            )
        )
    data = make_dataset(*train, train_batches(train[1], args, seed)).repeat()
    start = time.perf_counter()
    history = model.fit(
        data,
        epochs=args.epochs,
        steps_per_epoch=args.steps // args.epochs,
        callbacks=callbacks,
        shuffle=False,
        verbose=0,
    )
    train_seconds = time.perf_counter() - start
    record = {
        "method": method,
        "seed": seed,
        "train_seconds": train_seconds,
        "final_loss": float(history.history["loss"][-1]),
    }
    record.update(evaluate(embed(encoder, test[0]), test[1]))
    train_embeddings = embed(encoder, train[0])
    record["gap"] = decomposability_gap(train_embeddings, train[1], **gap_kwargs)
    if callbacks:
        steps_per_epoch = args.steps // args.epochs
        record["gap_curve"] = [{**r, "step": (r["epoch"] + 1) * steps_per_epoch} for r in callbacks[0].records]
    return record


def baselines(train, test, args):
    """Raw pixels (L2-normalised) and the untrained network, on the unseen test classes."""
    records = []
    pixels = test[0].reshape(len(test[0]), -1)
    pixels = pixels / np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1e-12)
    records.append({"method": "raw_pixels", "seed": 0, **evaluate(pixels, test[1])})
    for seed in range(args.seeds):
        encoder = build_model(train[0].shape[1:], seed)
        records.append({"method": "untrained", "seed": seed, **evaluate(embed(encoder, test[0]), test[1])})
    return records


def summarise(records):
    """``{method: {metric: (mean, std, n)}}`` over seeds (std: population, 0 for one seed)."""
    summary = {}
    for method in dict.fromkeys(r["method"] for r in records):
        runs = [r for r in records if r["method"] == method]
        summary[method] = {
            key: (float(np.mean([r[key] for r in runs])), float(np.std([r[key] for r in runs])), len(runs))
            for key in ("recall@1", "map@r", "gap", "train_seconds")
            if all(key in r for r in runs)
        }
    return summary


def markdown_table(summary):
    titles = {"raw_pixels": "Raw pixels", "untrained": "Untrained network"}
    titles.update({k: v["title"] for k, v in METHODS.items()})

    def cell(stats, key, digits=3):
        if key not in stats:
            return "-"
        mean, std, n = stats[key]
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"

    lines = [
        "| Method | R@1 | mAP@R | Decomposability gap (train) | Train s/run |",
        "|---|---|---|---|---|",
    ]
    for method, stats in summary.items():
        seconds = f"{stats['train_seconds'][0]:.0f}" if "train_seconds" in stats else "-"
        cells = [titles[method], cell(stats, "recall@1"), cell(stats, "map@r"), cell(stats, "gap"), seconds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_gap_curves(records, path):
    """The figure of the ablation: every method of the table with its seeds.

    Left: R@1 and mAP@R on the unseen test classes, one dot per seed and the mean ± std bar.
    Middle: the decomposability gap on the training set at the end of training, same layout.
    Right: the gap against the training step for the runs that recorded it (seed 0 of
    ``GAP_CURVES``; the other runs record the final gap only).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "The gap plot needs matplotlib: pip install keras-roadmap[viz] (or pass --plot '')"
        ) from error
    titles = {"raw_pixels": "Raw pixels", "untrained": "Untrained network"}
    titles.update({k: v["title"] for k, v in METHODS.items()})
    methods = list(dict.fromkeys(r["method"] for r in records))
    colours = {
        "roadmap": "tab:red",
        "supap": "tab:blue",
        "smoothap": "tab:green",
        "calibration": "tab:purple",
        "multisimilarity": "tab:orange",
        "roadmap_memory": "tab:red",
        "supap_memory": "tab:blue",
        "raw_pixels": "0.45",
        "untrained": "0.65",
    }
    fig, (ax_metrics, ax_gap, ax_curve) = plt.subplots(
        1, 3, figsize=(16, 5.6), dpi=100, gridspec_kw={"width_ratios": [1.25, 1.0, 1.1]}
    )
    rows = np.arange(len(methods))[::-1]  # first method on top

    def spread(ax, key, offset, marker, label):
        for row, method in zip(rows, methods, strict=False):
            values = [r[key] for r in records if r["method"] == method and key in r]
            if not values:
                continue
            colour = colours.get(method, "gray")
            y = row + offset
            ax.scatter(values, [y] * len(values), color=colour, marker=marker, s=22, alpha=0.8, zorder=3)
            mean, std = float(np.mean(values)), float(np.std(values))
            ax.errorbar(
                mean, y, xerr=std if len(values) > 1 else None, fmt="|", color="black", ms=12, capsize=3, zorder=4
            )
        ax.scatter([], [], color="gray", marker=marker, label=label)

    spread(ax_metrics, "recall@1", 0.17, "o", "R@1")
    spread(ax_metrics, "map@r", -0.17, "s", "mAP@R")
    ax_metrics.set(
        xlim=(0, 1),
        xlabel="unseen test classes (one dot per seed, | = mean ± std)",
        title="Retrieval on unseen characters",
    )
    # Between the mAP@R and the R@1 clusters (x ~ 0.6) the axes are empty.
    ax_metrics.legend(loc="center", bbox_to_anchor=(0.6, 0.5), fontsize=10)
    spread(ax_gap, "gap", 0.0, "D", "gap")
    ax_gap.set(xlabel="batch AP − full-set AP (train set, end of training)", title="Decomposability gap")
    for ax in (ax_metrics, ax_gap):
        ax.set_yticks(rows)
        n_seeds = {m: sum(r["method"] == m for r in records) for m in methods}
        ax.set_yticklabels([f"{titles.get(m, m)} (n={n_seeds[m]})" for m in methods] if ax is ax_metrics else [])
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=10)
    curves = {r["method"]: r["gap_curve"] for r in records if "gap_curve" in r}
    for method, curve in curves.items():
        line = "--" if METHODS.get(method, {}).get("memory") else "-"
        ax_curve.plot(
            [c["step"] for c in curve],
            [c["gap"] for c in curve],
            color=colours.get(method, "gray"),
            linestyle=line,
            marker=".",
            label=titles.get(method, method),
        )
    ax_curve.set(xlabel="training step", ylabel="decomposability gap (train set)", title="Gap during training (seed 0)")
    ax_curve.grid(alpha=0.3)
    if curves:
        ax_curve.legend(fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def replot(args):
    """Reprint the table and redraw the plot of a results file (no training)."""
    with open(args.replot) as f:
        result = json.load(f)
    print(markdown_table(summarise(result["runs"])))
    if args.plot:
        plot_gap_curves(result["runs"], args.plot)
        print(f"Gap plot: {args.plot}")
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        return replot(args)
    wall = time.perf_counter()
    dataset, train, test, data_seconds = load_data(args)
    print(f"{dataset}; data ready in {data_seconds:.1f} s", flush=True)
    methods = list(args.methods)
    if "multisimilarity" in methods and tfsim_multisimilarity_loss() is None:
        print("tensorflow-similarity is not installed: no MultiSimilarity row (pip install keras-roadmap[tfsim]).")
        methods.remove("multisimilarity")
    records = baselines(train, test, args)
    for seed in range(args.seeds):
        for method in methods:
            if METHODS[method].get("memory") and seed >= args.memory_seeds:
                continue
            record = train_one(method, seed, train, test, args)
            records.append(record)
            print(
                f"seed {seed} {method:16s} R@1 {record['recall@1']:.3f}  mAP@R {record['map@r']:.3f}  "
                f"gap {record['gap']:.3f}  ({record['train_seconds']:.0f} s)",
                flush=True,
            )
    summary = summarise(records)
    table = markdown_table(summary)
    total = time.perf_counter() - wall
    print()
    print(table)
    print(f"\nTotal wall time {total:.0f} s on {os.cpu_count()} CPU core(s).")
    if args.plot:
        plot_gap_curves(records, args.plot)
        print(f"Gap plot: {args.plot}")
    result = {
        "config": {k: v for k, v in vars(args).items()},
        "dataset": {
            "num_images": int(len(dataset.labels)),
            "num_classes": len(dataset.characters),
            "train_classes": int(len(dataset.train_classes)),
            "test_classes": int(len(dataset.test_classes)),
            "train_images": int(len(train[1])),
            "test_images": int(len(test[1])),
            "fonts": list(dataset.fonts),
        },
        "runs": records,
        "summary": {m: {k: {"mean": v[0], "std": v[1], "n": v[2]} for k, v in s.items()} for m, s in summary.items()},
        "table": table,
        "wall_seconds": total,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"Results: {args.out}")
    return result


def is_ablation(argv) -> bool:
    """Whether the command line asks for the ablation (``--compare``/``--replot``) rather than the recipe."""
    return any(a == "--compare" or a.startswith("--replot") for a in argv)


if __name__ == "__main__":
    if is_ablation(sys.argv[1:]):
        main()
    else:
        from keras_roadmap.cli import main as cli_main

        sys.exit(cli_main(["train", "glyphs", *sys.argv[1:]]))
