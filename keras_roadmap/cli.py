"""The ``keras-roadmap`` command line.

Subcommands:

* ``export``: load a ``.keras`` embedder and write a verified SavedModel or ONNX artifact
  (see :mod:`keras_roadmap.export`).
* ``convert-weights``: convert a torchvision / timm checkpoint (``.pth``, ``.safetensors``) into
  a ``.weights.h5`` file of one of our embedders (see :mod:`keras_roadmap.models.convert`).

Only the standard library is imported at module level, so ``keras-roadmap --help`` answers
without paying TensorFlow's import time; each subcommand imports what it needs when it runs.
Errors the user can fix are printed as one ``keras-roadmap: error: ...`` line on stderr with exit
code 2 (argument or input problems) or 1 (the export itself failed verification); no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

PROG = "keras-roadmap"
EXPORT_FORMATS = ("onnx", "saved_model")
# Modules that register keras-roadmap layers/losses as Keras serializables; importing them lets
# load_model resolve our classes without custom_objects.
_REGISTERING_MODULES = ("keras_roadmap.losses", "keras_roadmap.models", "keras_roadmap.memory")


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="keras-roadmap: ROADMAP image retrieval tools for Keras 3."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    # Checked by hand rather than with choices= so that a bad value gives our one-line error.
    exp.add_argument("--format", required=True, help="onnx | saved_model")
    exp.add_argument("--out", required=True,
                     help="output file (onnx, e.g. model.onnx) or directory (saved_model)")
    exp.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    exp.add_argument("--with-preprocessing", action="store_true",
                     help="bake in uint8 image input of any size -> resize shorter side, centre "
                          "crop --image-size, ImageNet mean/std")
    exp.add_argument("--image-size", type=int, default=None,
                     help="crop size for --with-preprocessing (default: the model's input size)")
    exp.add_argument("--l2-normalize", action="store_true",
                     help="bake L2 normalisation of the embeddings into the artifact")
    exp.add_argument("--atol", type=float, default=1e-4,
                     help="largest allowed |artifact - Keras| on the probe batch (default 1e-4)")
    exp.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    exp.set_defaults(handler=_run_export)
    _add_convert_weights(sub)
    return parser


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
    conv.add_argument("--model", required=True,
                      help="embedder name: resnet50, resnet50_max_ln, deit_small, deit_small_distilled, deit_base")
    conv.add_argument("--embedding-dim", type=int, default=None,
                      help="projection size (default: the model's, 512 for ResNet-50, none for DeiT)")
    conv.add_argument("--image-size", type=int, default=224,
                      help="input side the embedder is built for (default 224; DeiT checkpoints fix it)")
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
        raise CLIError(f"--model {args.model!r} loads no torch/timm checkpoint; choose one of: {', '.join(sorted(ARCHITECTURES))}")
    if not is_checkpoint_path(args.src):
        raise CLIError(f"{args.src} is not a checkpoint file (.pth, .pt, .bin or .safetensors)")
    keras.utils.set_random_seed(args.seed)
    try:
        model = build_embedder(args.model, embedding_dim=args.embedding_dim, weights="random",
                               input_shape=(args.image_size, args.image_size, 3))
        summary = load_checkpoint(model, args.model, args.src)
    except (ValueError, ImportError) as exc:
        raise CLIError(str(exc).replace("\n", " ")) from exc
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    model.save_weights(args.dst)
    ignored = ", ".join(summary["ignored"][:6]) + (" ..." if len(summary["ignored"]) > 6 else "")
    print(f"{args.dst}: {args.model} with {summary['loaded']} backbone tensors from {args.src}"
          f" (not used: {ignored or 'none'}); head initialised with seed {args.seed}.")
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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    _import_registering_modules()
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one readable line
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"could not load a Keras model from {path}: {first_line}") from exc


def _run_export(args: argparse.Namespace) -> int:
    fmt = args.format.lower().replace("-", "_")
    if fmt not in EXPORT_FORMATS:
        raise CLIError(f"unknown format {args.format!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    if args.opset is not None and fmt != "onnx":
        raise CLIError("--opset only applies to --format onnx")
    if args.image_size is not None and args.image_size < 1:
        raise CLIError(f"--image-size must be a positive integer, got {args.image_size}")

    model = load_embedder(args.model)
    from keras_roadmap import export as export_lib

    kwargs = dict(
        with_preprocessing=args.with_preprocessing,
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
        raise CLIError(str(exc), exit_code=1) from exc
    except (export_lib.ExportError, ImportError) as exc:
        raise CLIError(str(exc).replace("\n", " ")) from exc
    print(report.summary())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Argument-syntax errors (missing required flags) exit through argparse with code 2.
    """
    parser = _build_parser()
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
