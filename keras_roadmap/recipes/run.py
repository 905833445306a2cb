"""One recipe run: train -> pick the best embedder -> test table -> retrieval grid -> ONNX.

`main(dataset, argv, default_config)` is what `recipes/<dataset>.py` calls and
`main_from_args` what `keras-roadmap train NAME` calls; `run(config, ...)` does the work for an
already resolved `RecipeConfig`. With `--print-config` they print the config instead (see
`print_config`).

Outputs in `--out DIR`:
    backup/                   crash-safe state (weights, optimiser, memory, epoch, config); a
                              rerun with the same DIR continues from the last completed epoch
    best_embedder.keras       the embedder with the best val_map@r (+ .best.json: value, epoch)
    history.csv, tensorboard/ per-epoch logs (loss, val_recall@K, val_map@r ...)
    run_log.jsonl             one line per start: the epoch it started from, the config
    test_metrics.json         the final table (R@K for the dataset's K, mAP@R ...) of the best
                              embedder; also printed
    retrieval_grid.png        queries with their top-k neighbours (green = same class)
    recall_curve.png          Recall@K against K
    embedder.onnx             the best embedder in ONNX with the profile's transform preset baked
                              in (uint8 images of any size in), checked against Keras with
                              onnxruntime: export/search.py serves it as is
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import warnings

from keras_roadmap import atomic
from keras_roadmap.errors import KerasRoadmapError
from keras_roadmap.recipes import assembly, catalog, checkpoints
from keras_roadmap.recipes.arguments import add_train_arguments
from keras_roadmap.recipes.checkpoints import BestEmbedderCheckpoint, HistoryCSV, RunBackup
from keras_roadmap.recipes.config import (
    ConfigError,
    RecipeConfig,
    load_yaml,
    resolve_config,
    transform_preset,
    with_overrides,
)
from keras_roadmap.recipes.pretrained import resolve_pretrained
from keras_roadmap.recipes.smoke_data import write_smoke_dataset

MONITOR = "val_map@r"


def build_parser(dataset: str) -> argparse.ArgumentParser:
    """The recipe command line (the same flags for every dataset: `keras_roadmap.recipes.arguments`)."""
    parser = argparse.ArgumentParser(
        prog=f"recipes/{dataset}.py",
        description=f"Train ROADMAP on {dataset} with the recipe's settings (`keras-roadmap train {dataset} "
        f"--print-config` prints them); the same as `keras-roadmap train {dataset}`.",
    )
    add_train_arguments(parser)
    return parser


def default_config(dataset: str) -> pathlib.Path:
    """The recipe's YAML config, ``keras_roadmap/recipes/configs/<dataset>.yaml`` (package data)."""
    return catalog.config_path(dataset)


def resolve_verbose(verbose) -> int:
    """``--verbose``: "auto" = 1 (per-step bar with ETA) on a terminal, 2 (a line per epoch) otherwise."""
    if verbose in (None, "auto"):
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)


def config_from_args(dataset: str, args, default_config) -> RecipeConfig:
    """Resolve the config file (or `--config`) with the flags."""
    path, raw = _read_config(dataset, args, default_config)
    config = resolve_config(raw, source=str(path), overrides=_overrides(args), smoke=args.smoke)
    config.glyphs = glyph_settings(raw, args.smoke) if dataset == "glyphs" else None
    if args.precision != "auto":
        config.mixed_precision = args.precision
        config.precision_forced = True
    if args.eval_every is not None:
        if args.eval_every < 1:
            raise ConfigError(f"--eval-every must be >= 1, got {args.eval_every}.")
        config.evaluation["every_n_epochs"] = args.eval_every
    return config


def _read_config(dataset: str, args, default_config):
    """`(path, mapping)` of `--config` (else `default_config`), checked to be `dataset`'s."""
    path = pathlib.Path(args.config or default_config)
    raw = load_yaml(path)
    if raw.get("dataset") != catalog.dataset_of(dataset):
        raise ConfigError(f"{path} is a config for {raw.get('dataset')!r}, not {catalog.dataset_of(dataset)!r}.")
    return path, raw


def _overrides(args) -> dict:
    """The flags that change config values (`resolve_config`'s overrides)."""
    return {
        "backbone": args.backbone,
        "weights": args.weights,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "memory": args.memory,
        "seed": args.seed,
        "loss": getattr(args, "loss", None),
        "chunk_size": getattr(args, "chunk_size", None),
    }


def print_config(dataset: str, args, default_config, *, prog: str) -> None:
    """`--print-config`: print the config file with the flags applied (checked by resolving it
    first, so a bad flag fails as it would in training), for `--config FILE` after an edit.

    With no flag that changes a value, the file is printed as it is (comments included);
    otherwise the mapping of `config.with_overrides`, as YAML. Raises what `config_from_args`
    raises.
    """
    import yaml

    config_from_args(dataset, args, default_config)  # the same checks as a training run
    path, raw = _read_config(dataset, args, default_config)
    overrides = {k: v for k, v in {**_overrides(args), "eval_every": args.eval_every}.items() if v is not None}
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in overrides.items())
    smoke = " --smoke" if args.smoke else ""
    print(f"# {prog} --print-config: {path}" + (f", with {flags}{smoke} applied" if overrides else ""))
    print(f"# Save, edit, then train with: keras-roadmap train {dataset} --config FILE{smoke} --out DIR")
    if overrides:
        print(
            yaml.safe_dump(with_overrides(raw, overrides, smoke=args.smoke), sort_keys=False, default_flow_style=None),
            end="",
        )
    else:
        print(path.read_text(encoding="utf-8"), end="")


def _setup_precision(config: RecipeConfig) -> str:
    """Mixed precision on a GPU (the config's policy), float32 elsewhere unless `--precision`
    forced a policy; returns the policy."""
    import keras
    import tensorflow as tf

    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    policy = config.mixed_precision if on_gpu or config.precision_forced else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def _datasets(config: RecipeConfig, splits, sampler, first_epoch: int):
    from keras_roadmap.data import make_eval_dataset, make_train_dataset

    keyed = config.memory["size"] > 0 and config.memory["unique"]
    preset = transform_preset(config)
    train = make_train_dataset(
        splits.train,
        sampler,
        preset=preset,
        seed=config.seed,
        epochs=None,
        first_epoch=first_epoch,
        with_sample_ids=keyed,
    )

    def evaluation(split):
        if split is None:
            return None
        return make_eval_dataset(split, config.evaluation["batch_size"], preset=preset)

    if assembly.hierarchical_labels(config):
        train = _with_levels(train, splits.train)
    return train, evaluation(splits.gallery), evaluation(splits.query)


def super_of_class(split):
    """`(C,)` int: the super-category of each class of `split` (ConfigError when a split has no
    super-categories or a class sits in two)."""
    import numpy as np

    if split.super_labels is None:
        raise ConfigError(
            f"{split.name} has no super-categories, so a hierarchical loss (happier, or `loss.hierarchical`) has "
            "no second level: "
            "use a two-level folder ROOT/<category>/<class>/ or a `category` column, or another --loss."
        )
    table = np.full(int(split.labels.max()) + 1, -1, dtype=np.int64)
    table[split.labels] = split.super_labels
    if np.any(table[split.labels] != split.super_labels):
        raise ConfigError(f"{split.name}: a class has images in two super-categories; give each class one.")
    return table


def _with_levels(train, split):
    """The training stream with `(B, 2)` [super-category, class] labels (HAPLoss's `y_true`;
    the config refuses a memory with it, so the stream has no sample ids)."""
    import tensorflow as tf

    table = tf.constant(super_of_class(split))

    def levels(labels):
        labels = tf.cast(labels, tf.int64)
        return tf.stack([tf.gather(table, labels), labels], axis=-1)

    return train.map(lambda x, y: (x, levels(y)))


def _log_start(out: pathlib.Path, config: RecipeConfig, first_epoch: int, policy: str, data_dir) -> None:
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "initial_epoch": first_epoch,
        "epochs": config.epochs,
        "precision": policy,
        "data_dir": str(data_dir),
        "config": config.to_dict(),
    }
    path = out / "run_log.jsonl"
    previous = path.read_text(encoding="utf-8") if path.is_file() else ""
    atomic.write_text(path, previous + json.dumps(entry) + "\n")


def _tensorboard(log_dir: pathlib.Path) -> list:
    """A TensorBoard callback, or none (with a warning) when the tensorboard package is absent:
    the same numbers still go to history.csv, and a long run should not die for its logs."""
    import keras

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        warnings.warn(
            "tensorboard is not installed, so no TensorBoard logs are written (history.csv has the "
            "same values): pip install 'keras-roadmap[recipes]' (tested with tensorboard==2.21.0).",
            RuntimeWarning,
            stacklevel=2,
        )
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False)]


def resume_state(config: RecipeConfig, backup_dir, *, allow_config_change: bool = False):
    """The backup to continue from (None: start at epoch 0), after checking that it was made
    with the same resolved config; `ConfigError` listing the differences otherwise (unless
    `allow_config_change`, e.g. for a deliberately longer schedule)."""
    state = checkpoints.read_backup(backup_dir)
    if state is None:
        return None
    if state.fell_back:
        print(
            f"The newest backup in {backup_dir} is damaged; resuming from the previous one (epoch {state.epoch}).",
            flush=True,
        )
    if state.config is not None:
        changes = checkpoints.config_changes(state.config, config.to_dict())
        if changes and not allow_config_change:
            raise ConfigError(
                f"the backup in {backup_dir} was made with another configuration ({'; '.join(changes)}); "
                "rerun with the same settings, use another --out, "
                "or pass --allow-config-change to continue with the new ones."
            )
        if changes:
            print(f"Continuing with a changed configuration: {'; '.join(changes)}.", flush=True)
    return state


def train(
    config: RecipeConfig,
    data_dir,
    out,
    *,
    require_backup: bool = False,
    verbose: int = 2,
    allow_config_change: bool = False,
):
    """Train with crash-safe checkpoints every epoch; returns `(encoder, splits, history)`.

    Resumes from `out/backup` when it holds a backup (required with `require_backup`), made
    with the same config unless `allow_config_change`. The training stream restarts at the
    saved epoch (`first_epoch`), the optimiser step (hence the learning-rate schedule) and the
    memory come back with the weights. Training stops at the first non-finite loss or
    embedding (`NonFiniteError`), leaving the last good backup in place.
    """
    import keras

    from keras_roadmap.guard import NonFiniteGuard

    out = checkpoints.output_dir(out)
    # A run killed while writing an output (test_metrics.json, the grid, the ONNX file) left
    # its temporary file here; backup/ is cleaned by RunBackup.
    atomic.remove_partials(out)
    backup_dir = out / "backup"
    state = resume_state(config, backup_dir, allow_config_change=allow_config_change)
    if require_backup and state is None:
        raise FileNotFoundError(f"--resume: no backup to continue from in {backup_dir}.")
    first_epoch = 0 if state is None else state.epoch
    keras.utils.set_random_seed(config.seed)
    policy = _setup_precision(config)
    splits = assembly.load_splits(config.dataset, data_dir)
    sampler = assembly.build_sampler(config, splits.train)
    train_ds, gallery_ds, query_ds = _datasets(config, splits, sampler, first_epoch)
    encoder = assembly.build_encoder(config)
    trainer = assembly.build_trainer(
        config, encoder, len(sampler), jit_compile=True, num_classes=int(splits.train.labels.max()) + 1
    )
    _log_start(out, config, first_epoch, policy, data_dir)
    if first_epoch:
        print(f"Resuming from epoch {first_epoch} (backup in {backup_dir}).", flush=True)

    from keras_roadmap.collapse import CollapseMonitor
    from keras_roadmap.evaluation import RetrievalEvaluation

    callbacks = [
        # Order matters: the evaluation writes val_* into the logs the others read, and the
        # backup comes last so that it records the state after the best-model checkpoint.
        RetrievalEvaluation(
            gallery_ds,
            query_data=query_ds,
            every_n_epochs=config.evaluation["every_n_epochs"],
            ks=config.evaluation["ks"],
            model=encoder,
        ),
        BestEmbedderCheckpoint(encoder, str(out / "best_embedder.keras"), monitor=MONITOR),
        *_tensorboard(out / "tensorboard"),
        HistoryCSV(out / "history.csv", initial_epoch=first_epoch),
        CollapseMonitor(),  # warns once if a from-scratch start stays collapsed (see its docstring)
        RunBackup(backup_dir, config=config.to_dict(), state=state),
    ]
    # First: a non-finite step stops fit before any later callback saves its state.
    callbacks.insert(0, NonFiniteGuard())
    history = trainer.fit(
        train_ds,
        epochs=config.epochs,
        initial_epoch=first_epoch,
        steps_per_epoch=len(sampler),
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the sampler already shuffles; Keras cannot shuffle a tf.data stream
    )
    return encoder, splits, history


def float32_embedder(config: RecipeConfig, source):
    """A float32 copy of `source` (same architecture, random init then `source`'s weights),
    for evaluation and export whatever precision training used."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = assembly.build_encoder(config, weights=None)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(source.get_weights())
    return copy


def with_progress(batches, *, total=None, name="images", verbose: int = 0):
    """Yield the elements of `batches` (an evaluation dataset) while reporting progress:
    `verbose=1` a bar with ETA (`total` = number of batches), 2 one line at the start and one
    at the end (with the time), 0 nothing."""
    import keras

    started = time.perf_counter()
    bar = keras.utils.Progbar(total, unit_name="batch") if verbose == 1 else None
    if verbose == 2:
        print(f"Embedding {name} ({total or '?'} batches) ...", flush=True)
    count = 0
    for element in batches:
        yield element
        count += len(element[1])
        if bar is not None:
            bar.add(1)
    if verbose == 2:
        print(f"Embedded {name}: {count} images in {time.perf_counter() - started:.1f} s", flush=True)


def test_table(config: RecipeConfig, embedder, splits, verbose: int = 0):
    """Retrieval metrics of `embedder` on the test split(s).

    Returns:
        `(metrics, embeddings)`: the `retrieval_metrics` dict (recall@K for the config's K,
        map@r, ...) and `{"gallery": (N, D), "query": (Nq, D) or None}` float32 embeddings.
    """
    from keras_roadmap.data import make_eval_dataset
    from keras_roadmap.evaluation import embed, retrieval_metrics

    def embed_split(split):
        batch = config.evaluation["batch_size"]
        ds = make_eval_dataset(split, batch, preset=transform_preset(config))
        batches = with_progress(ds, total=-(-len(split) // batch), name=split.name, verbose=verbose)
        return embed(embedder, batches, name=split.name)[0]

    gallery = embed_split(splits.gallery)
    kwargs = {}
    if splits.query is not None:
        kwargs = {"query_embeddings": embed_split(splits.query), "query_labels": splits.query.labels}
    # Custom data: single-image classes are gallery-only distractors, not (missed) queries.
    kwargs["exclude_lone_from_recall"] = bool(config.evaluation.get("exclude_lone_from_recall", False))
    metrics = retrieval_metrics(gallery, splits.gallery.labels, ks=config.evaluation["ks"], **kwargs)
    if assembly.hierarchical_labels(config) and splits.query is None:
        # The official hierarchical runs also report the hierarchical metrics on [super, class].
        import numpy as np

        from keras_roadmap.evaluation.hierarchical import hierarchical_retrieval_metrics

        levels = np.stack([splits.gallery.super_labels, splits.gallery.labels], axis=1)
        metrics.update({k: float(v) for k, v in hierarchical_retrieval_metrics(gallery, levels).items()})
    embeddings = {"gallery": gallery, "query": kwargs.get("query_embeddings")}
    return metrics, embeddings


def format_table(config: RecipeConfig, metrics: dict) -> str:
    """A two-line markdown table: R@K for the dataset's K, then mAP@R (percent)."""
    names = [f"R@{k}" for k in config.evaluation["ks"]] + ["mAP@R"]
    values = [metrics[f"recall@{k}"] for k in config.evaluation["ks"]] + [metrics["map@r"]]
    head = "| " + " | ".join(names) + " |"
    rule = "|" + "|".join("---:" for _ in names) + "|"
    row = "| " + " | ".join(f"{100 * v:.2f}" for v in values) + " |"
    return "\n".join([head, rule, row])


def _thumbnail(path, size: int = 96):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        return np.asarray(image)


def retrieval_grid(config: RecipeConfig, splits, embeddings, path) -> None:
    """PNG of a few evenly spread queries and their top-k neighbours (the query's own image is
    left out in same-source evaluation). Only the images shown are read from disk."""
    import numpy as np

    from keras_roadmap.evaluation import exact_knn, save_retrieval_grid

    gallery = embeddings["gallery"]
    same_source = splits.query is None
    queries_split = splits.gallery if same_source else splits.query
    query_embeddings = gallery if same_source else embeddings["query"]
    k = min(config.evaluation["grid_k"], len(gallery) - int(same_source))
    rows = np.unique(np.linspace(0, len(queries_split) - 1, config.evaluation["grid_queries"]).astype(int))
    found, scores = exact_knn(query_embeddings[rows], gallery, k + int(same_source))
    if same_source:
        keep = np.stack(
            [[c for c, j in enumerate(row_found) if j != row][:k] for row, row_found in zip(rows, found, strict=False)]
        )
        found = np.take_along_axis(found, keep, axis=1)
        scores = np.take_along_axis(np.asarray(scores), keep, axis=1)
    shown = np.unique(found)
    position = {int(j): i for i, j in enumerate(shown)}
    save_retrieval_grid(
        path,
        [_thumbnail(queries_split.paths[r]) for r in rows],
        queries_split.labels[rows],
        [_thumbnail(splits.gallery.paths[j]) for j in shown],
        splits.gallery.labels[shown],
        neighbours=np.vectorize(position.get)(found).astype(np.int64),
        k=k,
        scores=scores,
        class_names=class_display_names(config.dataset, splits.gallery.class_names),
    )


def class_display_names(dataset: str, names) -> list:
    """The class names shown in the grid: the character for glyphs, the dataset's names otherwise."""
    if dataset == "glyphs":
        from keras_roadmap.data.glyph_tree import character_of

        return [f"{character_of(n)}  U+{ord(character_of(n)):04X}" for n in names]
    return [str(n) for n in names]


def run(
    config: RecipeConfig,
    data_dir,
    out,
    *,
    require_backup: bool = False,
    verbose: int = 2,
    allow_config_change: bool = False,
) -> dict:
    """Train, then evaluate the best embedder, draw the grid and export to ONNX.

    Returns the dict written to `out/test_metrics.json`.
    """
    import keras

    out = pathlib.Path(out)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        encoder, splits, _ = train(
            config,
            data_dir,
            out,
            require_backup=require_backup,
            verbose=verbose,
            allow_config_change=allow_config_change,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    best_path = out / "best_embedder.keras"
    best = checkpoints.load_best_embedder(best_path) if best_path.is_file() else encoder
    best_state = out / "best_embedder.keras.best.json"
    selected = json.loads(best_state.read_text()) if best_state.is_file() else None
    embedder = float32_embedder(config, best)

    metrics, embeddings = test_table(config, embedder, splits, verbose=verbose)
    table = format_table(config, metrics)
    print(
        f"\nTest retrieval of the best embedder ({config.dataset}, {config.backbone}; selected on {MONITOR}"
        f"{'' if selected is None else ' at epoch ' + str(selected['epoch'] + 1)}):\n{table}",
        flush=True,
    )

    with atomic.atomic_path(out / "retrieval_grid.png", stall="grid_write") as tmp:
        retrieval_grid(config, splits, embeddings, tmp)
    from keras_roadmap.evaluation import save_recall_curve

    with atomic.atomic_path(out / "recall_curve.png") as tmp:
        save_recall_curve(tmp, {f"{config.dataset} {config.backbone}": metrics})

    from keras_roadmap.data.presets import write_model_preset
    from keras_roadmap.export import to_onnx

    # The deployed artifact applies exactly the evaluation transform (and L2), so
    # `keras-roadmap index/search` serve it as is; the .keras file records the preset, so
    # `keras-roadmap export` defaults to it as well. Written under a temporary name, then renamed.
    preset = transform_preset(config)
    if best_path.is_file():
        write_model_preset(best_path, preset)
    with atomic.atomic_path(out / "embedder.onnx", stall="onnx_write") as tmp:
        report = to_onnx(embedder, tmp, with_preprocessing=True, preset=preset, l2_normalize=True, verify=True)
    print(report.summary().replace(str(tmp), str(out / "embedder.onnx")), flush=True)

    result = {
        "dataset": config.dataset,
        "backbone": config.backbone,
        "model": config.model,
        "smoke": config.smoke,
        "selected": selected,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "table": table,
        "onnx": {
            "path": str(out / "embedder.onnx"),
            "max_abs_diff": report.max_abs_diff,
            "atol": report.atol,
            "preset": report.preset,
        },
    }
    atomic.write_text(out / "test_metrics.json", json.dumps(result, indent=2), stall="metrics_write")
    atomic.remove_partials(out)
    return result


def main(dataset: str, argv=None, default_config=None) -> int:
    """Command-line entry point of `recipes/<dataset>.py`; returns the exit status."""
    args = build_parser(dataset).parse_args(argv)
    return main_from_args(dataset, args, prog=f"recipes/{dataset}.py", default_config=default_config)


def main_from_args(dataset: str, args, *, prog: str, default_config=None) -> int:
    """Run the recipe `dataset` with parsed flags (`keras-roadmap train` and `recipes/*.py`).

    Stops before any work, with one line and exit code 2, when a needed package is missing
    (see `keras_roadmap.recipes.preflight`), the config or a flag is invalid, or the dataset
    layout is wrong.
    """

    def fail(message) -> int:
        print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2

    from keras_roadmap.recipes import preflight

    if not preflight.importable("yaml"):
        return fail(preflight.message(preflight.missing_packages(dataset), dataset))
    default_config = default_config or default_config_path(dataset)
    if getattr(args, "print_config", False):
        try:
            print_config(dataset, args, default_config, prog=prog)
        except (ConfigError, FileNotFoundError) as err:
            return fail(err)
        return 0
    if not args.out:
        return fail(
            "--out DIR is required: the output directory of the run (or --print-config to only print the config)."
        )
    try:
        config = config_from_args(dataset, args, default_config)
    except (ConfigError, FileNotFoundError) as err:
        return fail(err)
    missing = preflight.missing_packages(dataset, config)
    if missing:
        return fail(preflight.message(missing, dataset))
    verbose = resolve_verbose(getattr(args, "verbose", "auto"))
    try:
        out = checkpoints.output_dir(args.out)
    except KerasRoadmapError as err:
        return fail(err)
    data_dir = args.data_dir
    try:
        if dataset == "glyphs":
            data_dir = prepare_glyphs(config, data_dir or out / "glyph_images")
        elif args.smoke:
            data_dir = out / "smoke_data"
            if not (data_dir / ".complete").is_file():
                write_smoke_dataset(catalog.dataset_of(dataset), data_dir, _smoke_shape(args, default_config))
                (data_dir / ".complete").write_text("")
        elif not data_dir:
            return fail("--data-dir is required (or --smoke for a generated tiny dataset).")
    except (OSError, ValueError) as err:
        return fail(err)
    if args.smoke:
        print(
            f"SMOKE MODE: {config.model} at {config.image_size}x{config.image_size}, {config.epochs} epoch(s), "
            f"on a generated {catalog.dataset_of(dataset)} tree in {data_dir}. Checks the pipeline end to end; "
            "the numbers mean nothing.",
            flush=True,
        )
    if args.resume and not checkpoints.has_backup(out / "backup"):
        return fail(f"--resume: no backup to continue from in {out / 'backup'} (run without --resume to start).")
    try:
        # After the cheaper flag checks: the paper's checkpoint, or an explicit --random-init.
        resolve_pretrained(config, random_init=args.random_init, recipe=prog)
    except ConfigError as err:
        return fail(err)
    started = time.perf_counter()
    try:
        run(
            config,
            data_dir,
            out,
            require_backup=args.resume,
            verbose=verbose,
            allow_config_change=getattr(args, "allow_config_change", False),
        )
    except (KerasRoadmapError, FileNotFoundError) as err:
        # Dataset layout, config, checkpoint and NaN problems: the message says what and where.
        return fail(err)
    print(f"Done in {time.perf_counter() - started:.1f} s; outputs in {out}.", flush=True)
    return 0


default_config_path = default_config


def glyph_settings(raw: dict, smoke: bool) -> dict:
    """The `glyphs:` section (rendering parameters), updated by `smoke.glyphs` in a smoke run."""
    settings = dict(raw.get("glyphs") or {})
    if smoke:
        settings.update((raw.get("smoke") or {}).get("glyphs") or {})
    allowed = {"copies", "fonts_dir", "min_fonts", "characters", "seed", "cache_dir"}
    unknown = set(settings) - allowed
    if unknown:
        raise ConfigError(f"glyphs: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}.")
    return settings


def prepare_glyphs(config: RecipeConfig, root) -> pathlib.Path:
    """Render the glyph set (cached) and write it as PNG files under `root` (once); returns `root`."""
    from keras_roadmap.data.glyph_tree import write_glyph_tree
    from keras_roadmap.data.glyphs import build_glyph_dataset

    root = pathlib.Path(root)
    if (root / ".complete").is_file():
        return root
    settings = dict(config.glyphs or {})
    started = time.perf_counter()
    dataset = build_glyph_dataset(
        settings.pop("fonts_dir", None),
        settings.pop("cache_dir", None),
        image_size=config.image_size,
        copies=settings.pop("copies", 2),
        min_fonts=settings.pop("min_fonts", 8),
        characters=settings.pop("characters", None),
        seed=settings.pop("seed", 0),
    )
    write_glyph_tree(dataset, root)
    print(f"{dataset}; written to {root} in {time.perf_counter() - started:.1f} s", flush=True)
    return root


def _smoke_shape(args, default_config):
    """The `smoke.data` section (tiny-tree shape) of the config file in use."""
    raw = load_yaml(pathlib.Path(args.config or default_config))
    return (raw.get("smoke") or {}).get("data")
