"""The ``keras-roadmap`` command line.

Subcommands:

* ``train NAME``: one recipe run (sop, cub, inaturalist, inshop, glyphs), see
  :mod:`keras_roadmap.recipes.run`; ``train NAME --print-config`` prints its YAML config;
* ``recipes``: the recipe names with one line each (:mod:`keras_roadmap.recipes.catalog`);
* ``export``: a ``.keras`` embedder -> a verified ONNX file or SavedModel
  (:mod:`keras_roadmap.export`);
* ``index build|add|remove`` / ``search`` / ``serve``: embed a gallery with an exported ONNX
  embedder into an index folder, keep it up to date, query it, serve it over HTTP
  (:mod:`keras_roadmap.serving`; onnxruntime + faiss, no TensorFlow).
* ``convert-weights``: a torchvision / timm checkpoint (``.pth``, ``.safetensors``) -> a
  ``.weights.h5`` file of one of our embedders (:mod:`keras_roadmap.models.convert`).

Only the standard library is imported here, and ``import keras_roadmap`` is light, so
``--help`` and ``--version`` answer at once; each subcommand imports what it needs when it runs
(TensorFlow through :func:`keras_roadmap._quiet.import_tensorflow`, without its C++ start-up
lines). Every error the user can fix is one ``keras-roadmap: error: ...`` line on stderr
with exit code 2 (argument or input problems) or 1 (the export itself failed verification);
usage errors read ``keras-roadmap COMMAND: error: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence

# Standard library only, like this module: the recipe table and flags build the parser.
from keras_roadmap.recipes.arguments import OneLineErrorParser, add_train_arguments, output_path_problem
from keras_roadmap.recipes.catalog import RECIPES as RECIPE_TABLE
from keras_roadmap.recipes.catalog import listing as recipe_listing

PROG = "keras-roadmap"
EXPORT_FORMATS = ("onnx", "saved_model")
# Accepted spellings of each format (lower case, "-" read as "_").
FORMAT_ALIASES = {"onnx": "onnx", "saved_model": "saved_model", "savedmodel": "saved_model"}
RECIPES = tuple(RECIPE_TABLE)
# Modules that register keras-roadmap layers/losses as Keras serializables; importing them lets
# load_model resolve our classes without custom_objects.
_REGISTERING_MODULES = ("keras_roadmap.losses", "keras_roadmap.models", "keras_roadmap.memory")


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


_Parser = OneLineErrorParser  # defined in the library: recipes build their parsers with it too


def cli_spelling(message: str) -> str:
    """Rewrite a library message's keyword hints (``image_size=32``) as flags (``--image-size 32``)."""
    message = re.sub(r"\bwith_preprocessing=True\b", "--with-preprocessing", message)
    message = re.sub(r"\bl2_normalize=True\b", "--l2-normalize", message)
    message = re.sub(r"\bformat='(\w+)'", r"--format \1", message)
    message = re.sub(
        r"\b(image_size|opset|atol)=(\S+?)([,;:)]|\s|$)",
        lambda m: f"--{m.group(1).replace('_', '-')} {m.group(2)}{m.group(3)}",
        message,
    )
    message = re.sub(r"\bpass (image_size|opset|atol)\b", lambda m: f"pass --{m.group(1).replace('_', '-')}", message)
    return " ".join(message.split())


def check_output_path(path: str, flag: str = "--out") -> None:
    """Raise CLIError when ``path`` cannot be created because a parent is a regular file."""
    problem = output_path_problem(path, flag)
    if problem:
        raise CLIError(problem)


def version() -> str:
    from keras_roadmap import __version__  # the package __init__ imports no TensorFlow

    return __version__


# ---------------------------------------------------------------------------------------------
# Parsers


def _add_export(sub) -> None:
    exp = sub.add_parser(
        "export",
        help="export a .keras embedder to ONNX or a TensorFlow SavedModel, verified against Keras",
        description=(
            "Export a Keras embedder (one input -> (batch, D) embeddings) with a dynamic batch "
            "axis, optionally with ImageNet preprocessing and L2 normalisation baked in, then "
            "reload the artifact and check it against the Keras model on a seeded probe batch."
        ),
    )
    exp.add_argument("--model", required=True, help="path to a .keras (or .h5) model file")
    # Checked by hand rather than with choices= so that aliases and a bad value get our message.
    exp.add_argument("--format", required=True, help="onnx | saved_model (alias: savedmodel)")
    exp.add_argument("--out", required=True, help="output file (onnx, e.g. model.onnx) or directory (saved_model)")
    exp.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    exp.add_argument(
        "--with-preprocessing",
        action="store_true",
        help="bake in uint8 image input of any size -> the --preset's test transform "
        "(resize, centre crop, ImageNet mean/std), as evaluation applies it",
    )
    exp.add_argument(
        "--preset",
        default=None,
        help="transform preset baked in by --with-preprocessing (sop, sop_big, cub, cub_big, "
        "inaturalist, inshop, inshop_big; default: the one recorded in the .keras file "
        "by the recipe that trained it, else sop)",
    )
    exp.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="crop size for --with-preprocessing (default: the model's input size)",
    )
    exp.add_argument(
        "--l2-normalize", action="store_true", help="bake L2 normalisation of the embeddings into the artifact"
    )
    exp.add_argument(
        "--atol", type=float, default=1e-4, help="largest allowed |artifact - Keras| on the probe batch (default 1e-4)"
    )
    exp.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    exp.set_defaults(handler=_run_export)


def _add_index_type(parser) -> None:
    parser.add_argument(
        "--index-type",
        default="flat",
        metavar="{flat,ivf,hnsw}",
        help="flat: exact (default); ivf: faiss IndexIVFFlat, 2 sqrt(N) cells trained on a sample; "
        "hnsw: faiss IndexHNSWFlat (M 32, efSearch 128). See benchmarks/index_tradeoff.py",
    )


def _add_threads(parser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")


def _add_batch_size(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, help="images per onnxruntime call (default 32)")


def _add_serving(sub) -> None:
    idx = sub.add_parser(
        "index",
        help="build, add to and remove from an index folder of a gallery (ONNX embedder + faiss)",
        description="index build: embed a gallery (a folder of images, or a CSV) with an ONNX embedder exported "
        "by keras-roadmap (onnxruntime, no TensorFlow) into an index folder (faiss IndexIDMap2, "
        "ids, paths, labels, the embedder and its serving contract); index add / index remove keep it "
        "up to date, atomically. The old form `index --model M --images DIR --index X.faiss --ids "
        "X.json` still writes a single faiss file and id map.",
    )
    actions = idx.add_subparsers(dest="index_action", metavar="ACTION", parser_class=_Parser)
    old = idx.add_argument_group("old form (a .faiss file and an id map instead of an index folder)")
    old.add_argument("--model", help="ONNX embedder written by `keras-roadmap export` or a recipe")
    old.add_argument("--images", help="folder of images (searched recursively)")
    old.add_argument("--index", help="output faiss index file")
    old.add_argument("--ids", help="output id map (.json or .csv)")
    _add_index_type(old)
    _add_batch_size(old)
    _add_threads(old)
    idx.set_defaults(handler=_run_index)

    build = actions.add_parser(
        "build",
        help="embed a gallery into a new index folder",
        description="Embed every image of --images (a folder: the class is the parent "
        "folder's name; or an open-metric-learning CSV) with --model and write "
        "the index folder --out (an index already there is replaced atomically).",
    )
    build.add_argument("--model", required=True, help="ONNX embedder written by `keras-roadmap export` or a recipe")
    build.add_argument("--images", required=True, help="gallery: a folder of images or a CSV (label, path, ...)")
    build.add_argument("--out", required=True, help="index folder to write")
    _add_index_type(build)
    _add_batch_size(build)
    _add_threads(build)
    build.set_defaults(handler=_run_index_build)

    add = actions.add_parser(
        "add",
        help="add image files (or folders of them) to an index folder",
        description="Embed FILEs with the index's own embedder and add them under new ids. "
        "A file already there (same path or same bytes) is an error unless "
        "--skip-existing.",
    )
    add.add_argument("files", nargs="+", metavar="FILE", help="image files or folders")
    add.add_argument("--index", required=True, help="index folder from `keras-roadmap index build`")
    add.add_argument(
        "--label",
        default=None,
        help="class of the added images (default: the parent folder's name for files inside a folder "
        "gallery, else none)",
    )
    add.add_argument("--skip-existing", action="store_true", help="skip (and list) files already in the index")
    _add_batch_size(add)
    _add_threads(add)
    add.set_defaults(handler=_run_index_add)

    rem = actions.add_parser(
        "remove",
        help="remove images from an index folder by id or path",
        description="Remove images by id (see `search --format json`) or by path.",
    )
    rem.add_argument("entries", nargs="+", metavar="ID|PATH", help="ids or image paths")
    rem.add_argument("--index", required=True, help="index folder from `keras-roadmap index build`")
    _add_threads(rem)
    rem.set_defaults(handler=_run_index_remove)

    sea = sub.add_parser(
        "search",
        help="query an index folder (or a faiss file + id map) with images",
        description="Embed the query images and print their top-k neighbours (rank, cosine score, id, class, "
        "path). --index is an index folder from `index build` (its own embedder is used unless --model "
        "is given), or, with --ids and --model, a faiss file from the old `index` form.",
    )
    sea.add_argument("queries", nargs="+", help="query image files or folders")
    sea.add_argument("--index", required=True, help="index folder (or, with --ids, a .faiss file)")
    sea.add_argument("--model", default=None, help="ONNX embedder (default: the index folder's own; needed with --ids)")
    sea.add_argument("--ids", default=None, help="id map of the old `index` form")
    sea.add_argument("--k", type=int, default=5, help="neighbours per query (default 5)")
    sea.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    sea.add_argument("--json", default=None, help="also write the results to this JSON file")
    _add_threads(sea)
    sea.set_defaults(handler=_run_search)

    srv = sub.add_parser(
        "serve",
        help="serve an index folder over HTTP (POST /search, GET /healthz, a page at /)",
        description='Serve an index folder with FastAPI + uvicorn (pip install "keras-roadmap[serve]"): POST '
        "/search (multipart field `file`, query parameter k) answers the top-k neighbours as JSON; "
        "GET / is a page to drop an image on. Binds 127.0.0.1 unless --host says otherwise.",
    )
    srv.add_argument("--index", required=True, help="index folder from `keras-roadmap index build`")
    srv.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    srv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)",
    )
    srv.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB (default 10)")
    _add_threads(srv)
    srv.set_defaults(handler=_run_serve)


def _add_train(sub) -> None:
    tr = sub.add_parser(
        "train",
        help=f"train a recipe ({', '.join(RECIPES)}) end to end",
        description="Train ROADMAP with a recipe's settings (its YAML config: --print-config prints it), then "
        "evaluate the best embedder, draw the retrieval grid and recall curve, and export it to "
        "ONNX. Checks every needed package before it starts. `keras-roadmap recipes` lists the recipes.",
    )
    tr.add_argument(
        "name",
        metavar="NAME",
        help=f"recipe: {', '.join(RECIPES)}, or custom (your own images: `keras-roadmap train custom --help`)",
    )
    add_train_arguments(tr)
    tr.set_defaults(handler=_run_train)


def _add_recipes(sub) -> None:
    rec = sub.add_parser(
        "recipes",
        help="list the recipes of `keras-roadmap train NAME`, one line each",
        description="List the recipes of `keras-roadmap train NAME` with a one-line description.",
    )
    rec.set_defaults(handler=_run_recipes)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="keras-roadmap: ROADMAP image retrieval tools for Keras 3.")
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_train(sub)
    _add_recipes(sub)
    _add_export(sub)
    _add_serving(sub)
    _add_convert_weights(sub)
    importlib.import_module("keras_roadmap.prepare_cli").add_parser(sub)
    return parser


_build_parser = build_parser  # the name older callers used


# ---------------------------------------------------------------------------------------------
# Handlers (each imports what it needs)


def _add_convert_weights(sub) -> None:
    conv = sub.add_parser(
        "convert-weights",
        help="convert a torchvision/timm checkpoint (.pth, .safetensors) to an embedder .weights.h5",
        description=(
            "Build the embedder --model with the checkpoint's backbone (torchvision ResNet-50, e.g. "
            "resnet50-0676ba61.pth; timm/DeiT for deit_*; deit_small_distilled drops the "
            "distillation token as the official ROADMAP code does) and a freshly initialised head "
            "(seeded), and save its weights. Load them later with "
            "build_embedder(MODEL, weights=DST) or a recipe's --weights DST."
        ),
    )
    conv.add_argument("src", help="checkpoint: .pth/.pt/.bin state dict or .safetensors")
    conv.add_argument("dst", help="output file, ending in .weights.h5")
    conv.add_argument(
        "--model",
        required=True,
        help="embedder name: resnet50, resnet50_max_ln, deit_small, deit_small_distilled, deit_base",
    )
    conv.add_argument(
        "--embedding-dim",
        type=int,
        default=None,
        help="projection size (default: the model's, 512 for ResNet-50, none for DeiT)",
    )
    conv.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="input side the embedder is built for (default 224; DeiT checkpoints fix it)",
    )
    conv.add_argument("--seed", type=int, default=0, help="seed of the head's initialisation (default 0)")
    conv.set_defaults(handler=_run_convert_weights)


def _run_convert_weights(args: argparse.Namespace) -> int:
    if not args.dst.endswith(".weights.h5"):
        raise CLIError(f"the output must end in .weights.h5 (what Keras' save_weights writes), got {args.dst}")
    if not os.path.isfile(args.src):
        raise CLIError(f"checkpoint not found: {args.src}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from keras_roadmap.models import build_embedder
    from keras_roadmap.models.convert import ARCHITECTURES, is_checkpoint_path, load_checkpoint

    if args.model not in ARCHITECTURES:
        raise CLIError(
            f"--model {args.model!r} loads no torch/timm checkpoint; choose one of: {', '.join(sorted(ARCHITECTURES))}"
        )
    if not is_checkpoint_path(args.src):
        raise CLIError(f"{args.src} is not a checkpoint file (.pth, .pt, .bin or .safetensors)")
    keras.utils.set_random_seed(args.seed)
    try:
        model = build_embedder(
            args.model,
            embedding_dim=args.embedding_dim,
            weights="random",
            input_shape=(args.image_size, args.image_size, 3),
        )
        summary = load_checkpoint(model, args.model, args.src)
    except (ValueError, ImportError) as exc:
        raise CLIError(str(exc).replace("\n", " ")) from exc
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    model.save_weights(args.dst)
    ignored = ", ".join(summary["ignored"][:6]) + (" ..." if len(summary["ignored"]) > 6 else "")
    print(
        f"{args.dst}: {args.model} with {summary['loaded']} backbone tensors from {args.src}"
        f" (not used: {ignored or 'none'}); head initialised with seed {args.seed}."
    )
    return 0


def _import_registering_modules() -> None:
    for name in _REGISTERING_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only tolerate the module itself being absent, not a broken import inside it.
            if exc.name != name:
                raise


def load_embedder(path: str):
    """Load a Keras model file for export, without its training configuration.

    ``compile=False`` skips deserialising the loss, optimizer and metrics: export needs none of
    them, and a model compiled with a custom loss then loads without ``custom_objects``.

    Raises:
        CLIError: the file does not exist, is not a Keras model file, or cannot be loaded.
    """
    if not os.path.exists(path):
        raise CLIError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(
            f"{path} is a directory; --model needs a .keras file (Keras 3 cannot load a "
            "SavedModel directory as a model)"
        )
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise CLIError(f"{path} is not a Keras model file; expected a .keras (or .h5) file")
    from keras_roadmap._quiet import import_tensorflow

    import_tensorflow()
    import keras

    _import_registering_modules()
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one readable line
        from keras_roadmap.model_files import keras_file_damage

        damage = keras_file_damage(path)
        if damage:
            raise CLIError(
                f"could not load a Keras model from {path}: the file is damaged ({damage}); save the model "
                "again (model.save) or point --model at an intact copy"
            ) from exc
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"could not load a Keras model from {path}: {first_line}") from exc


def _run_export(args: argparse.Namespace) -> int:
    fmt = FORMAT_ALIASES.get(args.format.lower().replace("-", "_"))
    if fmt is None:
        raise CLIError(
            f"unknown format {args.format!r}; choose one of: {', '.join(EXPORT_FORMATS)} (alias: savedmodel)"
        )
    if args.opset is not None and fmt != "onnx":
        raise CLIError("--opset only applies to --format onnx")
    if args.image_size is not None and args.image_size < 1:
        raise CLIError(f"--image-size must be a positive integer, got {args.image_size}")
    check_output_path(args.out)
    if fmt == "onnx" and os.path.isdir(args.out):
        raise CLIError(f"--out {args.out} is a directory; --format onnx writes one file (e.g. model.onnx)")
    if fmt == "saved_model" and os.path.isfile(args.out):
        raise CLIError(f"--out {args.out} is a file; --format saved_model writes a directory")

    model = load_embedder(args.model)
    from keras_roadmap import export as export_lib
    from keras_roadmap.data.presets import read_model_preset

    # --preset, else the preset the recipe recorded in the .keras file (None: export's default).
    preset = args.preset or (read_model_preset(args.model) if args.with_preprocessing else None)
    kwargs = dict(
        with_preprocessing=args.with_preprocessing,
        preset=preset,
        image_size=args.image_size,
        l2_normalize=args.l2_normalize,
        verify=not args.no_verify,
        atol=args.atol,
    )
    try:
        if fmt == "onnx":
            report = export_lib.to_onnx(model, args.out, opset=args.opset or 17, **kwargs)
        else:
            report = export_lib.to_saved_model(model, args.out, **kwargs)
    except export_lib.ExportVerificationError as exc:
        raise CLIError(cli_spelling(str(exc)), exit_code=1) from exc
    except (export_lib.ExportError, ImportError, OSError) as exc:
        raise CLIError(cli_spelling(str(exc))) from exc
    print(report.summary())
    return 0


def _serving_call(function, args) -> int:
    from keras_roadmap.serving import ServingError

    try:
        return function(args)
    except ServingError as exc:
        raise CLIError(" ".join(str(exc).split())) from exc


def _run_index(args: argparse.Namespace) -> int:
    missing = [f"--{flag}" for flag in ("model", "images", "index", "ids") if getattr(args, flag) is None]
    if missing:
        raise CLIError(
            "give an action: `index build --model M --images GALLERY --out IDX` (or `index add`, "
            "`index remove`), or the old form with --model, --images, --index and --ids "
            f"(missing: {', '.join(missing)})"
        )
    for flag in ("index", "ids"):
        check_output_path(getattr(args, flag), f"--{flag}")
    from keras_roadmap.serving import cli as serving_cli

    return _serving_call(serving_cli.run_index, args)


def _run_index_build(args: argparse.Namespace) -> int:
    if os.path.isfile(args.out):
        raise CLIError(f"--out {args.out} is a file; give a folder for the index")
    check_output_path(args.out)
    from keras_roadmap.serving import cli as serving_cli

    return _serving_call(serving_cli.run_index_build, args)


def _run_index_add(args: argparse.Namespace) -> int:
    from keras_roadmap.serving import cli as serving_cli

    return _serving_call(serving_cli.run_index_add, args)


def _run_index_remove(args: argparse.Namespace) -> int:
    from keras_roadmap.serving import cli as serving_cli

    return _serving_call(serving_cli.run_index_remove, args)


def _run_search(args: argparse.Namespace) -> int:
    if args.json:
        check_output_path(args.json, "--json")
    from keras_roadmap.serving import cli as serving_cli

    if args.ids is None:
        return _serving_call(serving_cli.run_search_index, args)
    if args.model is None:
        raise CLIError("--ids (a faiss file + id map from the old `index` form) needs --model too")
    return _serving_call(serving_cli.run_search, args)


def _run_recipes(args: argparse.Namespace) -> int:
    print(recipe_listing())
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in 0..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise CLIError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    from keras_roadmap.serving import cli as serving_cli

    return _serving_call(serving_cli.run_serve, args)


def _run_train(args: argparse.Namespace) -> int:
    if args.name not in RECIPES:
        raise CLIError(f"unknown recipe {args.name!r}; choose one of: {', '.join(RECIPES)} (see {PROG} recipes)")
    if args.out:
        check_output_path(os.path.join(args.out, "x"), "--out")
    from keras_roadmap._quiet import import_tensorflow

    # Without TensorFlow's start-up lines (resolving a config checks the loss keywords with
    # the loss class, so --print-config imports Keras too).
    import_tensorflow()
    from keras_roadmap.recipes import run as recipe_run

    return recipe_run.main_from_args(args.name, args, prog=f"{PROG} train {args.name}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Argument-syntax errors (missing required flags) exit through argparse with code 2, as one line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["train", "custom"]:
        # Its own flags (--data, --loss, --lr ...): keras_roadmap.recipes.custom.
        return importlib.import_module("keras_roadmap.recipes.custom").main(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
