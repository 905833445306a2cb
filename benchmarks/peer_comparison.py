"""Side by side on a real image folder: ``keras-roadmap train custom`` against
pytorch-metric-learning and open-metric-learning, with the same network, data, batch and steps.

    python benchmarks/peer_comparison.py --pml-python PML_VENV/bin/python --oml-python OML_VENV/bin/python

The folder: the bundled glyphs written as PNG files (``write_glyph_folder``: one folder per
character, ~500 classes x fonts x copies), split by class with ``keras-roadmap prepare`` (half of
the classes held out). Every method trains the same ``tiny_cnn`` (three conv blocks, 64-d, L2)
from random weights at ``--image-size`` with batches of 16 classes x 4 images, Adam at ``--lr`` (2e-3), for
``--steps`` steps, with the same transform; the peers run in their own venvs
(``benchmarks/peers/torch_peer.py``: torch + the peer library only). Every method's held-out
embeddings are evaluated by the same exact evaluator (``retrieval_metrics``, leave-one-out over
the held-out images, as ``train custom`` does); ours are recomputed from ``RUN/embedder.onnx``
with onnxruntime on the image files, and must equal ``RUN/test_metrics.json`` (printed as a
check). Wall time: the whole process (start-up, data, training, embedding); training alone
where the library reports it.

Peers' venvs (not our dependencies; OML 4.0 needs numpy < 2):
    python3 -m venv PML_VENV && PML_VENV/bin/pip install torch pytorch-metric-learning
    python3 -m venv OML_VENV && OML_VENV/bin/pip install torch open-metric-learning omegaconf
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
PEERS = {
    "pml_multisimilarity": ("pml", "multisimilarity", "pytorch-metric-learning MultiSimilarity + miner"),
    "pml_contrastive": ("pml", "contrastive", "pytorch-metric-learning Contrastive"),
    "oml_triplet": ("oml", "triplet", "open-metric-learning TripletLossWithMiner (defaults)"),
}
KEYS = ("recall@1", "map@r", "r_precision", "map")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/peers", help="folder for the images, the split and the runs")
    parser.add_argument(
        "--folder",
        help="an image folder to use instead of the glyphs (e.g. benchmarks/emoji_folder.py's); split by "
        "`keras-roadmap prepare --dedupe` into WORK/split.csv",
    )
    parser.add_argument(
        "--lr", type=float, default=2e-3, help="Adam learning rate of every method (2e-3: train custom's default)"
    )
    parser.add_argument(
        "--no-ours", action="store_true", help="leave out the train custom rows (e.g. a peers-only rerun)"
    )
    parser.add_argument("--copies", type=int, default=1, help="augmented images per (character, font)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument(
        "--losses", nargs="*", default=["roadmap"], help="our losses to run (train custom --loss; none: no row)"
    )
    parser.add_argument("--pml-python", help="python of a venv with pytorch-metric-learning")
    parser.add_argument("--oml-python", help="python of a venv with open-metric-learning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the table's rows as JSON here")
    parser.add_argument(
        "--no-script", action="store_true", help="leave out the hand-written RetrievalTrainer script's row"
    )
    parser.add_argument("--script-worker", help=argparse.SUPPRESS)  # internal: run the script, write this npz
    return parser.parse_args(argv)


def timed(command, env=None):
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(
            f"failed ({done.returncode}): {' '.join(map(str, command))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout, seconds


def held_out_metrics(embeddings, labels):
    from keras_roadmap import retrieval_metrics

    names = sorted(set(labels.tolist()))
    ids = np.array([names.index(x) for x in labels.tolist()])
    # As train custom evaluates: a held-out class with one image (left by --dedupe) is a
    # distractor, not a missed query, in the recall.
    found = retrieval_metrics(np.asarray(embeddings, "float32"), ids, exclude_lone_from_recall=True)
    return {k: float(found[k]) for k in KEYS}


def ours(args, work, split, loss):
    run = work / f"ours_{loss}"
    cli = [
        sys.executable,
        "-m",
        "keras_roadmap.cli",
        "train",
        "custom",
        "--data",
        str(split),
        "--out",
        str(run),
        "--backbone",
        "tiny_cnn",
        "--image-size",
        str(args.image_size),
        "--loss",
        loss,
        "--epochs",
        "1",
        "--steps-per-epoch",
        str(args.steps),
        "--seed",
        str(args.seed),
        "--lr",
        str(args.lr),
        "--verbose",
        "0",
    ]
    _, seconds = timed(cli)
    written = json.loads((run / "test_metrics.json").read_text())
    # Independent check: the exported ONNX file on the image files, the same evaluator.
    from keras_roadmap.data.custom import read_images
    from keras_roadmap.serving.embedder import OnnxEmbedder

    held = [r for r in read_images(split).records if r.split != "train"]
    embeddings = OnnxEmbedder(str(run / "embedder.onnx")).embed_files([r.path for r in held])
    onnx = held_out_metrics(embeddings, np.array([r.label for r in held]))
    check = max(abs(onnx[k] - float(written["trained"][k])) for k in KEYS)
    return {
        "method": f"keras-roadmap train custom --loss {loss}",
        "version": _our_version(),
        "seconds": seconds,
        "untrained": {k: float(written["untrained"][k]) for k in KEYS},
        **onnx,
        "onnx_vs_json": check,
    }


def _our_version():
    from keras_roadmap import __version__

    return __version__


def script_worker(args, split, out):
    """The hand-written script a user would write with our public API (no recipe): the same
    split, transform, sampler (16 classes x 4), ``tiny_cnn`` from random weights, Adam at
    ``--lr`` and steps, ``RetrievalTrainer`` + ``ROADMAPLoss()`` with its defaults, ``fit``, embed the
    held-out images. Run in its own process (``--script-worker``) so that its wall time counts
    start-up as the others' does."""
    import keras

    from keras_roadmap import (
        MPerClassSampler,
        RetrievalTrainer,
        ROADMAPLoss,
        build_embedder,
        load_custom,
        make_eval_dataset,
        make_train_dataset,
    )

    keras.utils.set_random_seed(args.seed)
    data = load_custom(str(split))
    sampler = MPerClassSampler(data.train.labels, batch_size=64, samples_per_class=4, seed=args.seed)
    train = make_train_dataset(data.train, sampler, image_size=args.image_size, seed=args.seed)
    size = args.image_size
    encoder = build_embedder("tiny_cnn", input_shape=(size, size, 3), freeze_batchnorm=False)
    trainer = RetrievalTrainer(encoder)
    trainer.compile(optimizer=keras.optimizers.Adam(args.lr), loss=ROADMAPLoss())
    start = time.perf_counter()
    trainer.fit(train, epochs=1, steps_per_epoch=args.steps, verbose=0)
    train_seconds = time.perf_counter() - start
    held = data.gallery  # leave-one-out over the held-out images (no separate query split here)
    embeddings = encoder.predict(make_eval_dataset(held, 256, image_size=size), verbose=0)
    np.savez(out, embeddings=np.asarray(embeddings, "float32"), labels=np.asarray(held.labels))
    print(json.dumps({"train_seconds": train_seconds}))


def script(args, work, split):
    out = work / "script_roadmap.npz"
    cli = [sys.executable, str(pathlib.Path(__file__).resolve()), "--work", str(work), "--script-worker", str(out)]
    cli += ["--steps", str(args.steps), "--image-size", str(args.image_size), "--seed", str(args.seed)]
    cli += ["--lr", str(args.lr)]
    stdout, seconds = timed(cli)
    saved = np.load(out)
    return {
        "method": "hand-written script: RetrievalTrainer + ROADMAPLoss() (no warm-up)",
        "version": _our_version(),
        "seconds": seconds,
        "train_seconds": json.loads(stdout.strip().splitlines()[-1])["train_seconds"],
        **held_out_metrics(saved["embeddings"], saved["labels"]),
    }


def peer(args, work, split, name, python):
    library, loss, label = PEERS[name]
    out = work / f"{name}.npz"
    stdout, seconds = timed(
        [
            python,
            str(HERE / "peers" / "torch_peer.py"),
            "--library",
            library,
            "--loss",
            loss,
            "--split",
            str(split),
            "--out",
            str(out),
            "--steps",
            str(args.steps),
            "--image-size",
            str(args.image_size),
            "--seed",
            str(args.seed),
            "--lr",
            str(args.lr),
        ]
    )
    info = json.loads(stdout.strip().splitlines()[-1])
    saved = np.load(out)
    return {
        "method": label,
        "version": f"{info['version']} (torch {info['torch']})",
        "seconds": seconds,
        "train_seconds": info["train_seconds"],
        **held_out_metrics(saved["embeddings"], saved["labels"]),
    }


def main(argv=None):
    args = parse_args(argv)
    work = pathlib.Path(args.work).resolve()
    folder, split = work / "glyph_images", work / "split.csv"
    if args.script_worker:
        script_worker(args, split, args.script_worker)
        return 0
    if not split.exists():
        if args.folder:
            folder = pathlib.Path(args.folder).resolve()
        else:
            from keras_roadmap.data.glyph_tree import write_glyph_folder

            write_glyph_folder(folder, copies=args.copies, image_size=args.image_size, seed=args.seed)
        prepare = [sys.executable, "-m", "keras_roadmap.cli", "prepare", str(folder), "--out", str(split)]
        timed([*prepare, "--seed", str(args.seed), "--dedupe"])
    rows = [] if args.no_ours else [ours(args, work, split, loss) for loss in args.losses]
    if not args.no_script:
        rows.append(script(args, work, split))
    for name, (library, _, _) in PEERS.items():
        python = args.pml_python if library == "pml" else args.oml_python
        if python:
            rows.append(peer(args, work, split, name, python))
    print(
        f"\n{args.steps} steps of 16 classes x 4 images, tiny_cnn at {args.image_size} px, Adam {args.lr:g}, "
        "held-out classes:"
    )
    print("| method | version | mAP@R | R@1 | R-precision | mAP | wall s |")
    print("|---|---|---|---|---|---|---|")
    if rows and "untrained" in rows[0]:
        u = rows[0]["untrained"]
        print(
            f"| untrained tiny_cnn | | {u['map@r']:.3f} | {u['recall@1']:.3f} | {u['r_precision']:.3f} | "
            f"{u['map']:.3f} | |"
        )
    for row in rows:
        print(
            f"| {row['method']} | {row['version']} | {row['map@r']:.3f} | {row['recall@1']:.3f} | "
            f"{row['r_precision']:.3f} | {row['map']:.3f} | {row['seconds']:.0f} |"
        )
    for row in rows:
        if "onnx_vs_json" in row:
            print(
                f"check: {row['method']}: ONNX-recomputed metrics vs test_metrics.json, "
                f"max |diff| = {row['onnx_vs_json']:.2e}"
            )
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
