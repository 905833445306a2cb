"""One recipe run: train -> pick the best embedder -> test table -> retrieval grid -> ONNX.

`main(dataset, argv, default_config)` is what `recipes/<dataset>.py` calls; `run(config, ...)`
does the work for an already resolved `RecipeConfig`.

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
    embedder.onnx             the best embedder in ONNX, checked against Keras with onnxruntime
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
from keras_roadmap.recipes import assembly, checkpoints
from keras_roadmap.recipes.checkpoints import BestEmbedderCheckpoint, HistoryCSV, RunBackup
from keras_roadmap.recipes.config import ConfigError, RecipeConfig, load_yaml, resolve_config
from keras_roadmap.recipes.smoke_data import write_smoke_dataset

MONITOR = "val_map@r"


def build_parser(dataset: str) -> argparse.ArgumentParser:
    """The recipe command line (the same flags for every dataset)."""
    parser = argparse.ArgumentParser(
        prog=f"recipes/{dataset}.py",
        description=f"Train ROADMAP on {dataset} with the paper's settings (recipes/configs/{dataset}.yaml).",
    )
    parser.add_argument("--data-dir", help="dataset root, in the layout the keras_roadmap.data reader documents")
    parser.add_argument("--out", required=True, help="output directory (checkpoints, logs, metrics, ONNX)")
    parser.add_argument("--config", help="YAML config replacing the recipe's default one")
    parser.add_argument("--backbone", help="backbone profile of the config (e.g. resnet50, deit_small)")
    parser.add_argument("--weights", help="keras-hub preset name/dir, .weights.h5 file, or 'none' (random init)")
    parser.add_argument("--epochs", type=int, help="total number of epochs")
    parser.add_argument("--batch-size", type=int, help="images per batch (a multiple of samples_per_class)")
    parser.add_argument("--memory", help="cross-batch memory slots: an int, 0 (off) or 'official'")
    parser.add_argument("--eval-every", type=int, help="evaluate (and select the best model) every N epochs")
    parser.add_argument(
        "--precision",
        choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
        default="auto",
        help="Keras dtype policy; auto (default) = the config's mixed_precision on a GPU, float32 otherwise",
    )
    parser.add_argument("--seed", type=int, help="sampler/augmentation/initialisation seed")
    parser.add_argument("--resume", action="store_true", help="require a backup in --out to continue from (a run always continues from one when present)")
    parser.add_argument("--smoke", action="store_true", help="generate a tiny dataset in --out and run 1-2 epochs end to end")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="continue a backup made with another configuration (e.g. a longer schedule); without it such a rerun stops and lists the differences",
    )
    return parser


def config_from_args(dataset: str, args, default_config) -> RecipeConfig:
    """Resolve the config file (or `--config`) with the flags."""
    path = pathlib.Path(args.config or default_config)
    raw = load_yaml(path)
    if raw.get("dataset") != dataset:
        raise ConfigError(f"{path} is a config for {raw.get('dataset')!r}, not {dataset!r}.")
    overrides = {
        "backbone": args.backbone,
        "weights": args.weights,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "memory": args.memory,
        "seed": args.seed,
    }
    config = resolve_config(raw, source=str(path), overrides=overrides, smoke=args.smoke)
    if args.precision != "auto":
        config.mixed_precision = args.precision
        config.precision_forced = True
    if args.eval_every is not None:
        if args.eval_every < 1:
            raise ConfigError(f"--eval-every must be >= 1, got {args.eval_every}.")
        config.evaluation["every_n_epochs"] = args.eval_every
    return config


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
    train = make_train_dataset(
        splits.train,
        sampler,
        image_size=config.image_size,
        seed=config.seed,
        epochs=None,
        first_epoch=first_epoch,
        with_sample_ids=keyed,
    )

    def evaluation(split):
        if split is None:
            return None
        return make_eval_dataset(
            split, config.evaluation["batch_size"], image_size=config.image_size, resize_size=config.eval_resize
        )

    return train, evaluation(splits.gallery), evaluation(splits.query)


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
        print(f"The newest backup in {backup_dir} is damaged; resuming from the previous one (epoch {state.epoch}).", flush=True)
    if state.config is not None:
        changes = checkpoints.config_changes(state.config, config.to_dict())
        if changes and not allow_config_change:
            raise ConfigError(
                f"the backup in {backup_dir} was made with another configuration ({'; '.join(changes)}); "
                "rerun with the same settings, use another --out, or pass --allow-config-change to continue with the new ones."
            )
        if changes:
            print(f"Continuing with a changed configuration: {'; '.join(changes)}.", flush=True)
    return state


def train(config: RecipeConfig, data_dir, out, *, require_backup: bool = False, verbose: int = 2, allow_config_change: bool = False):
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
    trainer = assembly.build_trainer(config, encoder, len(sampler), jit_compile=True)
    _log_start(out, config, first_epoch, policy, data_dir)
    if first_epoch:
        print(f"Resuming from epoch {first_epoch} (backup in {backup_dir}).", flush=True)

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
        RunBackup(backup_dir, config=config.to_dict(), state=state),
    ]
    # First: a non-finite step stops fit before any later callback saves its state.
    callbacks.insert(0, NonFiniteGuard())
    history = trainer.fit(
        train_ds, epochs=config.epochs, initial_epoch=first_epoch, steps_per_epoch=len(sampler), callbacks=callbacks, verbose=verbose,
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


def test_table(config: RecipeConfig, embedder, splits):
    """Retrieval metrics of `embedder` on the test split(s).

    Returns:
        `(metrics, embeddings)`: the `retrieval_metrics` dict (recall@K for the config's K,
        map@r, ...) and `{"gallery": (N, D), "query": (Nq, D) or None}` float32 embeddings.
    """
    from keras_roadmap.data import make_eval_dataset
    from keras_roadmap.evaluation import embed, retrieval_metrics

    def embed_split(split):
        ds = make_eval_dataset(split, config.evaluation["batch_size"], image_size=config.image_size, resize_size=config.eval_resize)
        return embed(embedder, ds, name=split.name)[0]

    gallery = embed_split(splits.gallery)
    kwargs = {}
    if splits.query is not None:
        kwargs = {"query_embeddings": embed_split(splits.query), "query_labels": splits.query.labels}
    metrics = retrieval_metrics(gallery, splits.gallery.labels, ks=config.evaluation["ks"], **kwargs)
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
    found, _ = exact_knn(query_embeddings[rows], gallery, k + int(same_source))
    if same_source:
        found = np.stack([[j for j in row_found if j != row][:k] for row, row_found in zip(rows, found)])
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
    )


def run(config: RecipeConfig, data_dir, out, *, require_backup: bool = False, verbose: int = 2, allow_config_change: bool = False) -> dict:
    """Train, then evaluate the best embedder, draw the grid and export to ONNX.

    Returns the dict written to `out/test_metrics.json`.
    """
    import keras

    out = pathlib.Path(out)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        encoder, splits, _ = train(
            config, data_dir, out, require_backup=require_backup, verbose=verbose, allow_config_change=allow_config_change
        )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    best_path = out / "best_embedder.keras"
    best = checkpoints.load_best_embedder(best_path) if best_path.is_file() else encoder
    best_state = out / "best_embedder.keras.best.json"
    selected = json.loads(best_state.read_text()) if best_state.is_file() else None
    embedder = float32_embedder(config, best)

    metrics, embeddings = test_table(config, embedder, splits)
    table = format_table(config, metrics)
    print(f"\nTest retrieval of the best embedder ({config.dataset}, {config.backbone}; selected on {MONITOR}"
          f"{'' if selected is None else ' at epoch ' + str(selected['epoch'] + 1)}):\n{table}", flush=True)

    with atomic.atomic_path(out / "retrieval_grid.png", stall="grid_write") as tmp:
        retrieval_grid(config, splits, embeddings, tmp)
    from keras_roadmap.evaluation import save_recall_curve

    with atomic.atomic_path(out / "recall_curve.png") as tmp:
        save_recall_curve(tmp, {f"{config.dataset} {config.backbone}": metrics})

    from keras_roadmap.export import to_onnx

    with atomic.atomic_path(out / "embedder.onnx", stall="onnx_write") as tmp:
        report = to_onnx(embedder, tmp, verify=True)
    print(report.summary().replace(str(tmp), str(out / "embedder.onnx")), flush=True)

    result = {
        "dataset": config.dataset,
        "backbone": config.backbone,
        "model": config.model,
        "smoke": config.smoke,
        "selected": selected,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "table": table,
        "onnx": {"path": str(out / "embedder.onnx"), "max_abs_diff": report.max_abs_diff, "atol": report.atol},
    }
    atomic.write_text(out / "test_metrics.json", json.dumps(result, indent=2), stall="metrics_write")
    return result


def main(dataset: str, argv=None, default_config=None) -> int:
    """Command-line entry point of `recipes/<dataset>.py`; returns the exit status."""
    parser = build_parser(dataset)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(dataset, args, default_config)
    except (ConfigError, FileNotFoundError) as err:
        parser.error(str(err))
    try:
        out = checkpoints.output_dir(args.out)
    except KerasRoadmapError as err:
        parser.error(str(err))
    data_dir = args.data_dir
    if args.smoke:
        data_dir = out / "smoke_data"
        if not (data_dir / ".complete").is_file():
            write_smoke_dataset(dataset, data_dir, _smoke_shape(args, default_config))
            (data_dir / ".complete").write_text("")
        print(
            f"SMOKE MODE: {config.model} at {config.image_size}x{config.image_size}, {config.epochs} epoch(s), "
            f"on a generated {dataset} tree in {data_dir}. Checks the pipeline end to end; "
            "the numbers mean nothing.",
            flush=True,
        )
    elif not data_dir:
        parser.error("--data-dir is required (or --smoke for a generated tiny dataset).")
    if args.resume and not checkpoints.has_backup(out / "backup"):
        parser.error(f"--resume: no backup to continue from in {out / 'backup'} (run without --resume to start).")
    started = time.perf_counter()
    try:
        run(config, data_dir, out, require_backup=args.resume, allow_config_change=args.allow_config_change)
    except (KerasRoadmapError, FileNotFoundError) as err:
        # Dataset layout, config, checkpoint and NaN problems: the message says what and where.
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"Done in {time.perf_counter() - started:.1f} s; outputs in {out}.", flush=True)
    return 0


def _smoke_shape(args, default_config):
    """The `smoke.data` section (tiny-tree shape) of the config file in use."""
    raw = load_yaml(pathlib.Path(args.config or default_config))
    return (raw.get("smoke") or {}).get("data")
