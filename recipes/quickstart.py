"""Quickstart: the glyph recipe on a short schedule, from nothing to a served search.

Renders the glyph set from matplotlib's bundled fonts (no download; cached after the first
build), trains the small CNN with ROADMAPLoss on half of the characters, and evaluates retrieval
on the other half, characters never seen in training, before and after training. Then the
recipe's outputs: the retrieval grid, the exported ONNX file (preprocessing baked in), and one
served search (onnxruntime + faiss, no TensorFlow) of a held-out glyph among the unseen ones.

    python recipes/quickstart.py [--epochs 10] [--out runs/quickstart]

The same recipe system as `keras-roadmap train glyphs` (keras_roadmap/recipes/configs/glyphs.yaml), with one
image per (character, font) instead of two and fewer epochs.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def quickstart_config(args):
    """The glyph recipe's config with the quickstart schedule."""
    from keras_roadmap.recipes.catalog import config_path
    from keras_roadmap.recipes.config import load_yaml, resolve_config
    from keras_roadmap.recipes.run import glyph_settings

    raw = load_yaml(config_path("glyphs"))
    config = resolve_config(
        raw, source=str(config_path("glyphs")), overrides={"epochs": args.epochs, "seed": args.seed}
    )
    config.glyphs = {**glyph_settings(raw, False), "copies": 1}
    if args.characters:
        config.glyphs["characters"] = args.characters
    # Select on the last epoch only: an evaluation per epoch would double the run time here.
    config.evaluation["every_n_epochs"] = args.epochs
    return config


def held_out_query(tree: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """Move one image of an unseen (test) character out of the tree, so the index lacks it."""
    classes = sorted(p for p in (tree / "test").iterdir() if p.is_dir())
    first_class = classes[len(classes) // 3]
    image = sorted(first_class.glob("*.png"))[0]
    target = out / "held_out" / first_class.name / image.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(image), target)
    return target


def served_search(out: pathlib.Path, tree: pathlib.Path, query: pathlib.Path, k: int = 5):
    """`keras-roadmap index` the unseen glyphs, then search the held-out one; prints the top k."""
    from keras_roadmap.cli import main as cli
    from keras_roadmap.data.glyph_tree import character_of
    from keras_roadmap.serving import Collection

    model, index, ids = out / "embedder.onnx", out / "unseen.faiss", out / "unseen.json"
    if cli(["index", "--model", str(model), "--images", str(tree / "test"), "--index", str(index), "--ids", str(ids)]):
        raise SystemExit(2)
    print(f"  keras-roadmap search --model {model} --index {index} --ids {ids} {query} --k {k}")
    hits = Collection(str(model), str(index), str(ids)).search_files([str(query)], k=k)[0]["results"]
    truth = character_of(query.parent.name)
    print(f"\nheld-out glyph {truth!r} (U+{ord(truth):04X}, a character never seen in training); top {k}:")
    for hit in hits:
        char = character_of(hit["label"])
        mark = "same character" if char == truth else "other"
        print(f"  {hit['rank']}. {char!r} (U+{ord(char):04X})  score {hit['score']:.3f}  {mark}")
    return hits, truth


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10, ~30 steps each)")
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--characters", default=None, help="restrict the classes to these characters (tests); default: all of them"
    )
    parser.add_argument("--verbose", choices=("auto", "0", "1", "2"), default="auto")
    args = parser.parse_args(argv)

    from keras_roadmap._quiet import import_tensorflow

    import_tensorflow()
    import keras

    from keras_roadmap.recipes import assembly, preflight
    from keras_roadmap.recipes.run import prepare_glyphs, resolve_verbose, run, test_table

    started = time.perf_counter()
    config = quickstart_config(args)
    missing = preflight.missing_packages("glyphs", config)
    if missing:
        print(f"quickstart: error: {preflight.message(missing, 'glyphs')}", file=sys.stderr)
        raise SystemExit(2)
    out = pathlib.Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # a fresh run each time (the recipe would resume from a backup)
    tree = prepare_glyphs(config, out / "glyph_images")
    splits = assembly.load_splits("glyphs", tree)
    print(
        f"train: {len(splits.train)} images of {splits.train.num_classes} characters; "
        f"test: {len(splits.gallery)} images of {splits.gallery.num_classes} other characters"
    )

    keras.utils.set_random_seed(config.seed)
    before, _ = test_table(config, assembly.build_encoder(config), splits)
    result = run(config, tree, out, verbose=resolve_verbose(args.verbose))
    after = result["metrics"]

    print("\nunseen-class retrieval (exact, faiss)   before   after")
    for key, name in (("recall@1", "R@1"), ("map@r", "mAP@R")):
        print(f"  {name:<38}{before[key]:6.3f}  {after[key]:6.3f}")
    print(f"\nretrieval grid: {out / 'retrieval_grid.png'}\nONNX embedder:  {out / 'embedder.onnx'}\n")
    query = held_out_query(tree, out)
    hits, truth = served_search(out, tree, query)
    print(f"\ndone in {time.perf_counter() - started:.1f} s")
    return {"before": before, "after": after, "hits": hits, "query": truth}


if __name__ == "__main__":
    main()
