"""``keras-roadmap train custom --data DIR|CSV --out RUN``: the recipe for a user's own images.

The config is built from flags (:func:`config_from_flags`) instead of a YAML file, then the run
goes through the recipe machinery every paper recipe uses (:func:`keras_roadmap.recipes.run.run`:
preflight, crash-safe backups and ``--resume``, best-model selection on held-out mAP@R, test
table, retrieval grid, ONNX export with the evaluation transform inside). Added here:

* the data: a folder is split by class exactly as ``keras-roadmap prepare`` splits it (same
  function, same defaults); a CSV keeps its split; both are checked (every image decoded once,
  unreadable files left out and listed) and written to ``RUN/split.csv`` + ``RUN/split.report.json``;
* ``RUN/config.yaml``: the resolved config;
* ``RUN/test_metrics.json``: ``{"trained": {...}, "untrained": {...}}`` (the
  ``retrieval_metrics`` keys: recall@1/2/4/8, map@r, r_precision, map, ...) on the held-out
  classes, the untrained one being the embedder at its initialisation (same seed);
* ``RUN/embedder.keras`` (the float32 best embedder) and ``RUN/report.html``.

Defaults, chosen to work on an ordinary folder without tuning (:data:`DEFAULTS`):
``tiny_cnn`` from random weights at 64 px (trains on a CPU in minutes; pass ``--backbone resnet50
--weights imagenet`` for photos when a GPU is at hand), Adam at 2e-3 for a network trained from
scratch (at 1e-3 ROADMAP stays below pytorch-metric-learning's ContrastiveLoss on the glyph
folder, 2e-3 beats it: docs/benchmarks.md "Against pytorch-metric-learning and
open-metric-learning"; 1e-5 from ImageNet weights, the paper's rate), ROADMAP with the calibration term ramped
in over the first epoch (``--calibration-warmup``; from scratch the full calibration term at step
0 can collapse every embedding onto one point, README "When ROADMAP helps"), 16 classes x 4
images per batch (fewer classes when the training side has fewer), 10 epochs of one pass over
the training images each.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from keras_roadmap.recipes.assembly import LOSS_NAMES

PROG = "keras-roadmap train custom"
DATASET = "custom"
NO_HUB_BACKBONES = ("tiny_cnn",)
BACKBONES = ("tiny_cnn", "resnet50", "resnet50_max_ln", "deit_small", "deit_small_distilled", "deit_base")
DEFAULTS = {
    "backbone": "tiny_cnn",
    "image_size": {"tiny_cnn": 64, "other": 224},
    "lr": {"random": 2e-3, "pretrained": 1e-5},
    "loss": "roadmap",
    "epochs": 10,
    "classes_per_batch": 16,
    "samples_per_class": 4,
    "test_classes": 0.5,
    "seed": 0,
}
# The SOP transform (Resize + RandomResizedCrop + flip / square resize + centre crop), rescaled to --image-size.
TRANSFORM = "sop"


def build_parser():
    from keras_roadmap.recipes.arguments import OneLineErrorParser

    parser = OneLineErrorParser(
        prog=PROG,
        description="Train an embedder on your own images (a folder ROOT/<class>/<image>, "
        "ROOT/<category>/<class>/<image>, or an OML-style CSV) with the recipe machinery, "
        "evaluate it on held-out classes against its untrained start, export it to ONNX "
        "and write report.html. Every setting is a flag; the resolved config goes to RUN/config.yaml.",
    )
    add = parser.add_argument
    add(
        "--data", required=True, help="image folder or split CSV (label, path, split, is_query, is_gallery[, category])"
    )
    add(
        "--out",
        required=True,
        help="run folder RUN (split.csv, config.yaml, checkpoints, test_metrics.json, "
        "embedder.keras, embedder.onnx, report.html)",
    )
    add("--backbone", default=DEFAULTS["backbone"], help=f"embedder: {', '.join(BACKBONES)} (default tiny_cnn)")
    add(
        "--weights",
        default=None,
        help="imagenet | none | PATH (.weights.h5, keras-hub preset folder, "
        "torchvision/timm checkpoint); default none for tiny_cnn, imagenet otherwise",
    )
    add("--random-init", action="store_true", help="the same as --weights none")
    add("--image-size", type=int, default=None, help="square input side (default 64 for tiny_cnn, 224 otherwise)")
    add(
        "--embedding-dim",
        type=int,
        default=None,
        help="embedding size (default: the backbone's, 64 for tiny_cnn, 512 for resnet50)",
    )
    add("--loss", default=DEFAULTS["loss"], help=f"training loss: {', '.join(LOSS_NAMES)} (default roadmap)")
    add(
        "--calibration-warmup",
        type=int,
        default=None,
        help="steps over which ROADMAP's calibration weight ramps in "
        "(default: one epoch from random weights, 0 from pretrained)",
    )
    add("--epochs", type=int, default=DEFAULTS["epochs"], help="epochs (default 10)")
    add(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="batches per epoch (default: one pass over the training images)",
    )
    add(
        "--batch-size",
        type=int,
        default=None,
        help="images per batch, a multiple of --samples-per-class "
        "(default 16 classes x samples per class, fewer classes if the data has fewer)",
    )
    add(
        "--samples-per-class",
        type=int,
        default=DEFAULTS["samples_per_class"],
        help="images per class in a batch (default 4)",
    )
    add(
        "--lr",
        type=float,
        default=None,
        help="Adam learning rate (default 2e-3 from random weights, 1e-5 from pretrained)",
    )
    add(
        "--seed",
        type=int,
        default=DEFAULTS["seed"],
        help="split, sampler, augmentation and initialisation seed (default 0)",
    )
    add(
        "--test-classes",
        type=float,
        default=None,
        help="fraction of classes held out when --data is a folder (default 0.5)",
    )
    add("--dedupe", action="store_true", help="drop exact duplicate files before the split (as prepare --dedupe)")
    add("--eval-every", type=int, default=1, help="evaluate (and select the best model) every N epochs (default 1)")
    add(
        "--precision",
        choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
        default="auto",
        help="Keras dtype policy; auto = mixed_float16 on a GPU for the hub backbones, float32 otherwise",
    )
    add(
        "--resume",
        action="store_true",
        help="require a backup in RUN to continue from (a rerun always continues from one)",
    )
    add("--allow-config-change", action="store_true", help="continue a backup made with other settings")
    add(
        "--verbose", choices=("auto", "0", "1", "2"), default="auto", help="progress: 1 bar, 2 a line per epoch, 0 none"
    )
    return parser


class _Fail(Exception):
    pass


def _positive(value, flag):
    if value is not None and value < 1:
        raise _Fail(f"{flag} must be >= 1, got {value}.")


def check_flags(args) -> None:
    """Flag values that need no data (one message naming the flag)."""
    if args.backbone not in BACKBONES:
        raise _Fail(f"--backbone {args.backbone!r} is not one of {', '.join(BACKBONES)}.")
    if args.loss not in LOSS_NAMES:
        raise _Fail(f"--loss {args.loss!r} is not one of {', '.join(LOSS_NAMES)}.")
    for flag in (
        "image_size",
        "embedding_dim",
        "epochs",
        "steps_per_epoch",
        "batch_size",
        "samples_per_class",
        "eval_every",
    ):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.calibration_warmup is not None and args.calibration_warmup < 0:
        raise _Fail(f"--calibration-warmup must be >= 0 (0 = off), got {args.calibration_warmup}.")
    if args.calibration_warmup and args.loss != "roadmap":
        raise _Fail(
            f"--calibration-warmup applies to --loss roadmap (it ramps the calibration term in), not {args.loss}."
        )
    if args.lr is not None and not (args.lr > 0 and args.lr < float("inf")):
        raise _Fail(f"--lr must be a positive number, got {args.lr}.")
    if args.batch_size is not None and args.batch_size % args.samples_per_class:
        raise _Fail(
            f"--batch-size {args.batch_size} is not a multiple of --samples-per-class {args.samples_per_class}."
        )
    if args.random_init and args.weights not in (None, "none"):
        raise _Fail(f"--random-init and --weights {args.weights} contradict each other: give one.")
    if args.image_size is not None and args.backbone.startswith("deit") and args.image_size != 224:
        raise _Fail(f"--image-size {args.image_size}: the DeiT backbones take 224 x 224 images.")


def weights_setting(args) -> str:
    """ "random", "pretrained" (ImageNet, resolved later) or a path."""
    weights = "none" if args.random_init else args.weights
    if weights is None:
        weights = "none" if args.backbone in NO_HUB_BACKBONES else "imagenet"
    if weights.lower() in ("none", "random"):
        return "random"
    if weights.lower() == "imagenet":
        if args.backbone in NO_HUB_BACKBONES:
            raise _Fail(
                f"--weights imagenet: {args.backbone} has no ImageNet weights (it is trained from scratch); "
                "use --weights none."
            )
        return "pretrained"
    if not pathlib.Path(weights).exists():
        raise _Fail(f"--weights {weights}: no such file or folder (give imagenet, none or a path).")
    return weights


def config_from_flags(args, train_classes: int):
    """The `RecipeConfig` of a custom run (see the module docstring for the defaults)."""
    from keras_roadmap.recipes.config import RecipeConfig

    weights = weights_setting(args)
    scratch = weights == "random"
    image_size = args.image_size or DEFAULTS["image_size"]["tiny_cnn" if args.backbone == "tiny_cnn" else "other"]
    spc = args.samples_per_class
    batch_size = args.batch_size or spc * min(DEFAULTS["classes_per_batch"], train_classes)
    if batch_size // spc > train_classes:
        raise _Fail(
            f"--batch-size {batch_size} / --samples-per-class {spc} needs {batch_size // spc} classes per batch, "
            f"but the training side has {train_classes}; lower --batch-size."
        )
    lr = args.lr if args.lr is not None else DEFAULTS["lr"]["random" if scratch else "pretrained"]
    loss = {"name": args.loss, "preset": "default"}
    if args.loss == "roadmap":
        loss["calibration_warmup_steps"] = (
            -1 if args.calibration_warmup is None and scratch else int(args.calibration_warmup or 0)
        )
    hub = args.backbone not in NO_HUB_BACKBONES
    return RecipeConfig(
        dataset=DATASET,
        backbone=args.backbone,
        model=args.backbone,
        model_kwargs={"width": 16, "pooling": "avg"} if args.backbone == "tiny_cnn" else {},
        embedding_dim=args.embedding_dim,
        weights=weights,
        freeze_batchnorm=not scratch,  # trained from scratch, BatchNorm must learn its statistics
        image_size=int(image_size),
        eval_resize=None,
        epochs=int(args.epochs),
        seed=int(args.seed),
        sampler={
            "name": "m_per_class",
            "batch_size": int(batch_size),
            "samples_per_class": int(spc),
            "steps_per_epoch": args.steps_per_epoch,
        },
        optimizer={
            "name": "adam",
            "backbone_lr": float(lr),
            "head_lr": None,
            "weight_decay": 0.0,
            "milestones": [],
            "gamma": 0.3,
        },
        loss=loss,
        memory={"size": 0, "unique": True, "weight": 1.0, "activate_after": 0},
        evaluation={
            "every_n_epochs": int(args.eval_every),
            "ks": [1, 2, 4, 8],
            "batch_size": 256,
            "grid_queries": 6,
            "grid_k": 5,
            "exclude_lone_from_recall": True,
        },
        mixed_precision="mixed_float16" if hub else "float32",
        transform=TRANSFORM,
        precision_forced=args.precision != "auto",
    )


def _settle_warmup(config, steps_per_epoch: int) -> None:
    if config.loss.get("calibration_warmup_steps") == -1:
        config.loss["calibration_warmup_steps"] = int(steps_per_epoch)


def _write_yaml(path, mapping) -> None:
    import yaml

    from keras_roadmap import atomic

    atomic.write_text(path, yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True))


def _data(args, out: pathlib.Path):
    """The run's split: RUN/split.csv when a backup continues, else prepared from --data."""
    from keras_roadmap.data.custom import read_images
    from keras_roadmap.data.prepare import Prepared, prepare_images

    csv_path = out / "split.csv"
    if (out / "backup").is_dir() and csv_path.is_file():
        print(f"Continuing with the split of the first start: {csv_path}.", flush=True)
        report_file = out / "split.report.json"
        report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else {}
        return Prepared(read_images(csv_path), report), False
    is_csv = pathlib.Path(args.data).suffix.lower() == ".csv"
    if is_csv and args.test_classes is not None:
        raise _Fail(f"--test-classes applies to a folder; {args.data} already holds its split (column `split`).")
    prepared = prepare_images(
        args.data,
        test_classes=None
        if is_csv
        else (args.test_classes if args.test_classes is not None else DEFAULTS["test_classes"]),
        seed=None if is_csv else args.seed,
        dedupe=args.dedupe,
    )
    return prepared, True


def main(argv=None) -> int:
    """``keras-roadmap train custom`` (exit status: 0 done, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except _Fail as err:
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def _main(args) -> int:
    from keras_roadmap.errors import DatasetFormatError, KerasRoadmapError
    from keras_roadmap.recipes import preflight
    from keras_roadmap.recipes.arguments import output_path_problem

    check_flags(args)
    problem = output_path_problem(str(pathlib.Path(args.out) / "x"), "--out")
    if problem:
        raise _Fail(problem)
    if not preflight.importable("yaml"):
        raise _Fail(preflight.message(preflight.missing_packages(DATASET), DATASET))
    out = pathlib.Path(args.out)
    if args.resume and not (out / "backup").is_dir():
        raise _Fail(f"--resume: no backup to continue from in {out / 'backup'} (run without --resume to start).")
    try:
        prepared, fresh = _data(args, out)
        from keras_roadmap.data.custom import splits_of

        custom = splits_of(prepared.images)
    except (DatasetFormatError, ImportError) as err:
        raise _Fail(err) from None
    config = config_from_flags(args, custom.train.num_classes)
    missing = preflight.missing_packages(DATASET, config)
    if missing:
        raise _Fail(preflight.message(missing, DATASET))
    from keras_roadmap.recipes import assembly
    from keras_roadmap.recipes.config import ConfigError

    try:
        sampler = assembly.build_sampler(config, custom.train)
    except ConfigError as err:
        raise _Fail(err) from None
    _settle_warmup(config, len(sampler))
    if args.precision != "auto":
        config.mixed_precision = args.precision
    if config.weights == "pretrained":
        from keras_roadmap.recipes.pretrained import resolve_pretrained

        try:
            resolve_pretrained(config, recipe=PROG)
        except ConfigError as err:
            raise _Fail(
                str(err).replace(
                    ", or --random-init to train from random weights (not the paper's setting)",
                    ", or --weights none to train from random weights",
                )
            ) from None

    # Everything is checked: write the inputs of the run, then run it.
    from keras_roadmap.data.prepare import format_report, write_prepared

    if fresh:
        print(format_report(prepared.report), flush=True)
        write_prepared(prepared, out / "split.csv")
    _write_yaml(
        out / "config.yaml",
        {"data": str(pathlib.Path(args.data).absolute()), "split_csv": str(out / "split.csv"), **config.to_dict()},
    )

    from keras_roadmap._quiet import import_tensorflow

    import_tensorflow()
    import importlib

    recipe_run = importlib.import_module("keras_roadmap.recipes.run")  # the module (the package re-exports its `run`)

    started = time.perf_counter()
    verbose = recipe_run.resolve_verbose(args.verbose)
    try:
        result = recipe_run.run(
            config,
            out / "split.csv",
            out,
            require_backup=args.resume,
            verbose=verbose,
            allow_config_change=args.allow_config_change,
        )
        finish(config, out, result, custom)
    except (KerasRoadmapError, FileNotFoundError) as err:
        raise _Fail(err) from None
    print(f"Done in {time.perf_counter() - started:.1f} s; outputs in {out}.", flush=True)
    return 0


def finish(config, out: pathlib.Path, result: dict, custom) -> dict:
    """After `run`: the untrained baseline, RUN/embedder.keras, RUN/test_metrics.json
    (trained + untrained) and RUN/report.html; returns the metrics written."""
    import keras

    from keras_roadmap import atomic
    from keras_roadmap.data.presets import write_model_preset
    from keras_roadmap.recipes import assembly, checkpoints
    from keras_roadmap.recipes.run import float32_embedder, format_table, test_table, transform_preset

    splits = assembly.load_splits(DATASET, out / "split.csv")
    best_path = out / "best_embedder.keras"
    trained = float32_embedder(config, checkpoints.load_best_embedder(best_path))
    trained_metrics, embeddings = test_table(config, trained, splits)
    keras.utils.set_random_seed(config.seed)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        untrained = assembly.build_encoder(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    untrained_metrics, _ = test_table(config, untrained, splits)
    numbers = lambda m: {k: v for k, v in m.items() if isinstance(v, (int, float))}  # noqa: E731
    with atomic.atomic_path(out / "embedder.keras") as tmp:
        trained.save(tmp)
    write_model_preset(out / "embedder.keras", transform_preset(config))
    print(
        f"\nHeld-out classes, untrained (same initialisation):\n{format_table(config, untrained_metrics)}", flush=True
    )
    metrics = {
        **{k: v for k, v in result.items() if k != "metrics"},
        "trained": numbers(trained_metrics),
        "untrained": numbers(untrained_metrics),
        "table_untrained": format_table(config, untrained_metrics),
        "embedder": str(out / "embedder.keras"),
    }
    atomic.write_text(out / "test_metrics.json", json.dumps(metrics, indent=2), stall="metrics_write")
    write_html_report(out, config, metrics, splits, embeddings, custom)
    return metrics


def write_html_report(out: pathlib.Path, config, metrics: dict, splits, embeddings, custom) -> None:
    """RUN/report.html through `keras_roadmap.report.write_report` (the one call of it), or a
    line saying why it is not written."""
    try:
        from keras_roadmap.report import write_report
    except ImportError as err:
        print(f"report.html not written: {err}", flush=True)
        return

    def side(split, vectors):
        return {"embeddings": vectors, "labels": split.labels, "paths": list(split.paths)}

    if splits.query is None:
        # Leave-one-out on the held-out images: write_report reads gallery=None as retrieval_metrics does.
        query, gallery = side(splits.gallery, embeddings["gallery"]), None
    else:
        query, gallery = side(splits.query, embeddings["query"]), side(splits.gallery, embeddings["gallery"])
    categories = None if custom.categories is None else dict(enumerate(custom.categories))
    sizes: dict = {}  # every class of the data set (train and test), by name
    for label in custom.images.labels:
        sizes[label] = sizes.get(label, 0) + 1
    write_report(  # writes atomically itself
        out / "report.html",
        metrics={"trained": metrics["trained"], "untrained": metrics["untrained"]},
        history_csv=out / "history.csv",
        query=query,
        gallery=gallery,
        categories=categories,
        class_sizes=sizes,
        k=5,
        title=f"keras-roadmap: {config.backbone} on {custom.images.source}",
    )
