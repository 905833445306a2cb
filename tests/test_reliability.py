"""One test per failure listed in issue 14 ("Why"): torn state, silent nonsense accepted by
constructors, NaN spreading under tf.function / XLA, config typos, and the error policy."""

import json
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest

from keras_roadmap.recipes.catalog import CONFIG_DIR

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = CONFIG_DIR


# --------------------------------------------------------------------- the one validation module


def test_validation_messages_name_argument_value_and_range():
    from keras_roadmap import validation

    with pytest.raises(ValueError, match=r"^Foo: `tau` must be > 0, got -1.0\.$"):
        validation.number("tau", -1, owner="Foo", minimum=0, min_open=True)
    with pytest.raises(TypeError, match=r"`size` must be an integer, got 2.0 \(float\)"):
        validation.integer("size", 2.0)
    with pytest.raises(TypeError, match="must be a real number"):
        validation.number("x", True)
    with pytest.raises(ValueError, match="must be a finite number"):
        validation.number("x", float("inf"))
    assert validation.number("x", None, allow_none=True) is None
    assert validation.integer("n", np.int64(3), minimum=1) == 3 and validation.number("x", np.float32(0.5)) == 0.5


# ------------------------------------------------------------- constructors reject nonsense


BAD_LOSS_ARGUMENTS = [
    ("CalibrationLoss", dict(pos_margin=-0.5), ValueError, r"`neg_margin` \(0.6\) must be <= `pos_margin` \(-0.5\)"),
    ("CalibrationLoss", dict(neg_margin=-1.0), ValueError, r"`neg_margin` must be > -1 and <= 1, got -1.0"),
    (
        "CalibrationLoss",
        dict(pos_margin=0.3, neg_margin=0.6),
        ValueError,
        r"`neg_margin` \(0.6\) must be <= `pos_margin` \(0.3\)",
    ),
    ("CalibrationLoss", dict(pos_margin=1.5), ValueError, r"`pos_margin` must be > -1 and <= 1, got 1.5"),
    ("SupAPLoss", dict(rho=-100), ValueError, r"SupAPLoss: `rho` must be >= 0, got -100.0"),
    ("SupAPLoss", dict(delta=-0.05), ValueError, r"`delta` must be >= 0, got -0.05"),
    ("SupAPLoss", dict(tau=float("nan")), ValueError, r"`tau` must be a finite number > 0, got nan"),
    ("SmoothAPLoss", dict(tau=0), ValueError, r"SmoothAPLoss: `tau` must be > 0, got 0.0"),
    ("ROADMAPLoss", dict(ap_weight=-1), ValueError, r"ROADMAPLoss: `ap_weight` must be >= 0, got -1.0"),
    ("ROADMAPLoss", dict(calibration_weight=-2), ValueError, r"`calibration_weight` must be >= 0, got -2.0"),
    ("ROADMAPLoss", dict(tau="big"), TypeError, r"`tau` must be a real number or None, got 'big' \(str\)"),
    ("SupAPLoss", dict(rho="100"), TypeError, r"`rho` must be a real number, got '100' \(str\)"),
    ("CalibrationLoss", dict(pos_margin=None), TypeError, r"`pos_margin` must be a real number, got None"),
    ("SupAPLoss", dict(pairs_per_chunk=0), ValueError, r"`pairs_per_chunk` must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("name,kwargs,error,message", BAD_LOSS_ARGUMENTS)
def test_loss_constructors_reject_nonsense(name, kwargs, error, message):
    import keras_roadmap

    with pytest.raises(error, match=message):
        getattr(keras_roadmap, name)(**kwargs)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(size="big"), TypeError, r"CrossBatchMemory: `size` must be an integer, got 'big' \(str\)"),
        (dict(size=0), ValueError, r"`size` must be an integer >= 1, got 0"),
        (dict(size=8, weight=-1.0), ValueError, r"`weight` must be >= 0"),
        (dict(size=8, activate_after=-1), ValueError, r"`activate_after` must be an integer >= 0"),
        (dict(size=8, embedding_dim=2.5), TypeError, r"`embedding_dim` must be an integer or None"),
    ],
)
def test_memory_constructor_rejects_nonsense(kwargs, error, message):
    from keras_roadmap import CrossBatchMemory

    with pytest.raises(error, match=message):
        CrossBatchMemory(**kwargs)


def test_memory_checks_the_embedding_width_at_enqueue_also_in_a_graph():
    import tensorflow as tf

    from keras_roadmap import CrossBatchMemory

    memory = CrossBatchMemory(size=16, embedding_dim=8, unique=False)
    batch, labels = np.ones((4, 4), "float32"), np.arange(4)
    with pytest.raises(ValueError, match=r"holds embeddings of dimension 8; got a batch of shape \(4, 4\)"):
        memory.enqueue(batch, labels)
    with pytest.raises(ValueError, match=r"dimension 8; got a batch of shape \(4, 4\)"):
        tf.function(memory.enqueue, jit_compile=True)(batch, labels)
    memory.enqueue(np.ones((4, 8), "float32"), labels)
    assert memory.num_filled() == 4


def test_trainer_and_samplers_check_their_arguments():
    import keras

    from keras_roadmap import MPerClassSampler, RetrievalTrainer

    encoder = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="`chunk_size` must be an integer or None, got 'big'"):
        RetrievalTrainer(encoder, chunk_size="big")
    with pytest.raises(TypeError, match="`memory` must be None or a CrossBatchMemory"):
        RetrievalTrainer(encoder, memory=5)
    with pytest.raises(TypeError, match="`encoder` must be a Keras model"):
        RetrievalTrainer("resnet50")
    with pytest.raises(TypeError, match=r"MPerClassSampler: `batch_size` must be an integer, got '8'"):
        MPerClassSampler(np.repeat(np.arange(4), 4), "8", 4)
    with pytest.raises(ValueError, match=r"`seed` must be an integer >= 0"):
        MPerClassSampler(np.repeat(np.arange(4), 4), 8, 4, seed=-1)


def test_export_checks_atol():
    import keras

    from keras_roadmap.export import to_saved_model

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="export: `atol` must be a real number, got 'small'"):
        to_saved_model(model, "unused", atol="small")


# ------------------------------------------------------------------------ one error policy


def test_every_package_error_derives_from_the_base_class():
    from keras_roadmap import errors
    from keras_roadmap.data import DatasetFormatError
    from keras_roadmap.export import ExportError, ExportVerificationError, NotAnEmbedderError
    from keras_roadmap.recipes.config import ConfigError

    for cls in (
        ConfigError,
        DatasetFormatError,
        ExportError,
        NotAnEmbedderError,
        ExportVerificationError,
        errors.CheckpointError,
        errors.NonFiniteError,
        errors.OutputDirError,
    ):
        assert issubclass(cls, errors.KerasRoadmapError), cls
    assert issubclass(ConfigError, ValueError) and issubclass(DatasetFormatError, ValueError)
    import keras_roadmap
    from keras_roadmap.guard import NonFiniteGuard

    assert keras_roadmap.KerasRoadmapError is errors.KerasRoadmapError and keras_roadmap.ConfigError is ConfigError
    assert keras_roadmap.NonFiniteGuard is NonFiniteGuard and keras_roadmap.NonFiniteError is errors.NonFiniteError


FLOAT_LABELS = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0])


def _float_label_calls():
    import keras_roadmap
    from keras_roadmap import diagnostics, samplers
    from keras_roadmap.data import make_eval_dataset

    emb = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    return {
        "loss": lambda: keras_roadmap.ROADMAPLoss()(FLOAT_LABELS, emb),
        "retrieval_metrics": lambda: keras_roadmap.retrieval_metrics(emb, FLOAT_LABELS),
        "sampler": lambda: samplers.MPerClassSampler(FLOAT_LABELS, 4, 2),
        "pipeline": lambda: make_eval_dataset((np.zeros((8, 4, 4, 3), "uint8"), FLOAT_LABELS), 4, image_size=4),
        "diagnostics": lambda: diagnostics.decomposability_gap(emb, FLOAT_LABELS, batch_size=4, samples_per_class=2),
    }


@pytest.mark.parametrize("where", ["loss", "retrieval_metrics", "sampler", "pipeline", "diagnostics"])
def test_float_labels_raise_value_error_everywhere(where):
    with pytest.raises(ValueError, match="integer"):
        _float_label_calls()[where]()


def test_a_missing_list_file_raises_dataset_format_error(tmp_path):
    from keras_roadmap.data import DatasetFormatError, load_cub, load_sop

    with pytest.raises(DatasetFormatError, match=r"Ebay_train.txt.*Expected layout"):
        load_sop(tmp_path, "train")
    with pytest.raises(DatasetFormatError, match="not found"):
        load_cub(tmp_path, "train")
    with pytest.raises(FileNotFoundError):  # still one, for code that caught that
        load_sop(tmp_path, "train")


def test_cli_error_for_out_under_a_regular_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "cub.py"), "--smoke", "--out", str(blocker / "run")],
        env={"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "error: --out" in lines[0] and f"{blocker} is a file, not a" in lines[0], lines
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------------- guarded numerics


def _embedder(seed=0, dim=4):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(dim), keras.layers.UnitNormalization()])


def _data(bad_batch=None, batches=4, batch=8):
    """Batches of 8 (4 classes x 2); rows of batch `bad_batch` hold NaN inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batches * batch, 3)).astype("float32")
    y = np.tile(np.repeat(np.arange(batch // 2), 2), batches).astype("int64")
    if bad_batch is not None:
        x[bad_batch * batch] = np.nan
    return x, y


@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf.function", "xla"])
def test_loss_is_nan_for_a_nonfinite_embedding_inside_a_compiled_step(jit_compile):
    import tensorflow as tf

    from keras_roadmap import ROADMAPLoss

    loss = ROADMAPLoss()
    emb = np.eye(8, 4, dtype="float32")
    emb[3, 1] = np.inf
    value = tf.function(lambda y, e: loss(y, e), jit_compile=jit_compile)(np.arange(8) // 2, emb)
    assert np.isnan(float(value))
    finite = tf.function(lambda y, e: loss(y, e), jit_compile=jit_compile)(
        np.arange(8) // 2, np.eye(8, 4, dtype="float32")
    )
    assert np.isfinite(float(finite))


@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf.function", "xla"])
def test_model_fit_with_our_loss_stops_at_the_first_nonfinite_step(jit_compile):
    from keras_roadmap import ROADMAPLoss
    from keras_roadmap.errors import NonFiniteError
    from keras_roadmap.guard import NonFiniteGuard

    model = _embedder()
    model.compile(optimizer="adam", loss=ROADMAPLoss(), jit_compile=jit_compile)
    x, y = _data(bad_batch=2)
    with pytest.raises(NonFiniteError, match=r"epoch 2, step 3: loss = nan"):
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[NonFiniteGuard()], initial_epoch=1)


def test_retrieval_trainer_stops_at_a_nan_embedding_under_xla():
    from keras_roadmap import CrossBatchMemory, RetrievalTrainer, ROADMAPLoss
    from keras_roadmap.errors import NonFiniteError

    trainer = RetrievalTrainer(_embedder(), memory=CrossBatchMemory(size=16, unique=False))
    trainer.compile(optimizer="adam", loss=ROADMAPLoss(), jit_compile=True)
    x, y = _data(bad_batch=1)
    with pytest.raises(NonFiniteError, match=r"epoch 1, step 2"):
        trainer.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)  # the guard is built in


def test_degenerate_batches_warn_once_per_run():
    from keras_roadmap import RetrievalTrainer, ROADMAPLoss

    trainer = RetrievalTrainer(_embedder())
    trainer.compile(optimizer="adam", loss=ROADMAPLoss(), jit_compile=True)
    x, _ = _data()
    y = np.arange(len(x)).astype("int64")  # every example its own class: no positive pair
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = trainer.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    messages = [str(w.message) for w in caught if "trains nothing" in str(w.message)]
    assert len(messages) == 1 and "without any positive pair" in messages[0]
    assert history.history["degenerate_batches"] == [4.0, 4.0]
    with warnings.catch_warnings(record=True) as caught:  # a good run: no warning
        warnings.simplefilter("always")
        trainer.fit(*_data(), batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert not [w for w in caught if "trains nothing" in str(w.message)]


def test_a_nan_epoch_keeps_the_last_good_backup(tmp_path):
    """The recipes' callback order (guard first, backup last): a NaN in epoch 3 stops fit
    before the backup of epoch 3 is written; epoch 2's stays, loadable."""
    from keras_roadmap import RetrievalTrainer, ROADMAPLoss
    from keras_roadmap.errors import NonFiniteError
    from keras_roadmap.recipes.checkpoints import RunBackup, read_backup

    x, y = _data()
    x_bad, _ = _data(bad_batch=1)
    trainer = RetrievalTrainer(_embedder())
    trainer.compile(optimizer="adam", loss=ROADMAPLoss(), jit_compile=True)
    trainer.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[RunBackup(tmp_path)])
    good = read_backup(tmp_path)
    assert good.epoch == 2
    weights_before = (tmp_path / good.weights.name).read_bytes()
    with pytest.raises(NonFiniteError, match="epoch 3, step 2"):
        trainer.fit(
            x_bad, y, batch_size=8, epochs=3, initial_epoch=2, shuffle=False, verbose=0, callbacks=[RunBackup(tmp_path)]
        )
    after = read_backup(tmp_path)
    assert after.epoch == 2 and after.weights.read_bytes() == weights_before


# -------------------------------------------------------------------------------- torn files


def _backup_two_epochs(tmp_path):
    from keras_roadmap import RetrievalTrainer, ROADMAPLoss
    from keras_roadmap.recipes.checkpoints import RunBackup

    trainer = RetrievalTrainer(_embedder())
    trainer.compile(optimizer="adam", loss=ROADMAPLoss())
    trainer.fit(
        *_data(), batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[RunBackup(tmp_path, config={"a": 1})]
    )
    return trainer


def test_a_torn_newest_backup_falls_back_to_the_previous_generation(tmp_path):
    from keras_roadmap.errors import CheckpointError
    from keras_roadmap.recipes.checkpoints import read_backup

    _backup_two_epochs(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.weights.h5")) == ["epoch-0001.weights.h5", "epoch-0002.weights.h5"]
    (tmp_path / "epoch-0002.weights.h5").write_bytes(b"")  # 0 bytes, as a kill mid-write once left it
    state = read_backup(tmp_path)
    assert (state.epoch, state.weights.name, state.fell_back, state.config) == (
        1,
        "epoch-0001.weights.h5",
        True,
        {"a": 1},
    )
    (tmp_path / "epoch-0001.weights.h5").write_bytes(b"\0" * 10)
    with pytest.raises(
        CheckpointError, match=r"epoch-0002.weights.h5 is missing or damaged .* delete .* to start over"
    ):
        read_backup(tmp_path)
    (tmp_path / "training_metadata.json").write_text('{"epoch": ')
    with pytest.raises(CheckpointError, match=r"Cannot read the resume point from .*training_metadata.json"):
        read_backup(tmp_path)


def test_a_torn_best_embedder_names_the_file(tmp_path):
    from keras_roadmap.errors import CheckpointError
    from keras_roadmap.recipes.checkpoints import BestEmbedderCheckpoint, load_best_embedder

    path = tmp_path / "best_embedder.keras"
    checkpoint = BestEmbedderCheckpoint(_embedder(), path, verbose=0)
    checkpoint.on_epoch_end(0, {"val_map@r": 0.5})
    assert load_best_embedder(path).output_shape == (None, 4)
    assert not list(tmp_path.glob(".partial-*"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"Cannot read the best embedder .*best_embedder.keras .*delete it"):
        load_best_embedder(path)


def test_an_interrupted_atomic_write_leaves_the_old_file(tmp_path):
    from keras_roadmap import atomic

    target = tmp_path / "test_metrics.json"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("new, half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and not list(tmp_path.glob(".partial-*"))


def test_a_backup_of_another_network_gives_one_line(tmp_path):
    from keras_roadmap import RetrievalTrainer, ROADMAPLoss
    from keras_roadmap.errors import CheckpointError
    from keras_roadmap.recipes.checkpoints import RunBackup, read_backup

    _backup_two_epochs(tmp_path)
    other = RetrievalTrainer(_embedder(dim=6))
    other.compile(optimizer="adam", loss=ROADMAPLoss())
    with pytest.raises(CheckpointError, match=r"Cannot load the backup .*epoch-0002.weights.h5 into this model"):
        other.fit(
            *_data(),
            batch_size=8,
            epochs=3,
            initial_epoch=2,
            verbose=0,
            callbacks=[RunBackup(tmp_path, state=read_backup(tmp_path))],
        )


# --------------------------------------------------------------------------- recipe configs


def _raw():
    from keras_roadmap.recipes.config import load_yaml

    return load_yaml(CONFIGS / "cub.yaml")


def _set(path, value):
    def mutate(raw):
        node = raw
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            _set("learning_rate", 1e-3),
            r"cub.yaml: unknown key `learning_rate`; did you mean `backbones.<profile>.optimizer.backbone_lr",
        ),
        (_set("sampler.batchsize", 64), r"cub.yaml: unknown key `sampler.batchsize`; did you mean `batch_size`\?"),
        (_set("memory.activate_afterr", 3), r"unknown key `memory.activate_afterr`; did you mean `activate_after`\?"),
        (
            _set("evaluation.every_n_epoch", 2),
            r"unknown key `evaluation.every_n_epoch`; did you mean `every_n_epochs`\?",
        ),
        (
            _set("backbones.resnet50_max_ln.epochs", "two"),
            r"cub.yaml: `backbones.resnet50_max_ln.epochs` must be an integer >= 1, got 'two'",
        ),
        (_set("loss.tua", 0.1), r"unknown key `loss.tua`; did you mean `tau`\?"),
        (_set("loss.rho", -5), r"cub.yaml: `loss` \(roadmap\): SupAPLoss: `rho` must be >= 0, got -5.0"),
        (_set("memory.weight", "heavy"), r"`memory.weight` must be a number >= 0, got 'heavy'"),
        (_set("sampler.name", "m_per_clas"), r"`sampler.name` must be one of .*did you mean 'm_per_class'"),
        (_set("evaluation.ks", [1, 0]), r"`evaluation.ks\[1\]` must be an integer >= 1, got 0"),
        (
            _set("mixed_precision", True),
            r"`mixed_precision` must be one of \[.float32., .mixed_float16., .mixed_bfloat16.\], got True",
        ),
    ],
    ids=[
        "top-level-lr",
        "batchsize",
        "activate_afterr",
        "every_n_epoch",
        "epochs-two",
        "loss-arg",
        "loss-range",
        "memory-weight",
        "sampler-name",
        "ks",
        "precision",
    ],
)
def test_config_mistakes_raise_config_error_naming_file_and_key(mutate, message):
    from keras_roadmap.recipes.config import ConfigError, resolve_config

    raw = _raw()
    mutate(raw)
    with pytest.raises(ConfigError, match=message):
        resolve_config(raw, source="cub.yaml")


def test_yaml_string_numbers_are_still_read():
    from keras_roadmap.recipes.config import resolve_config

    raw = _raw()
    raw["backbones"]["resnet50_max_ln"]["optimizer"]["backbone_lr"] = "1e-5"  # YAML 1.1 reads 1e-5 as a string
    assert resolve_config(raw, source="cub.yaml").optimizer["backbone_lr"] == 1e-5


def _fake_backup(out, config):
    """A committed backup whose stored config is `config` (content of the weights irrelevant:
    the config check happens before anything is loaded)."""
    import hashlib

    backup = out / "backup"
    backup.mkdir(parents=True)
    (backup / "epoch-0001.weights.h5").write_bytes(b"w")
    meta = {
        "epoch": 1,
        "weights": "epoch-0001.weights.h5",
        "sha256": hashlib.sha256(b"w").hexdigest(),
        "config": config,
    }
    (backup / "training_metadata.json").write_text(json.dumps(meta))


def test_resume_with_another_config_refuses_and_lists_the_differences(tmp_path, capsys):
    from keras_roadmap.recipes.config import ConfigError, resolve_config
    from keras_roadmap.recipes.pretrained import resolve_pretrained
    from keras_roadmap.recipes.run import main, resume_state

    stored = resolve_config(_raw(), source="cub.yaml", smoke=True)
    resolve_pretrained(stored)  # as a run does before it stores its config (smoke: random weights)
    _fake_backup(tmp_path / "run", stored.to_dict())
    argv = ["--smoke", "--out", str(tmp_path / "run"), "--epochs", "5", "--batch-size", "12"]
    assert main("cub", argv, CONFIGS / "cub.yaml") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another configuration (epochs: 2 -> 5; sampler.batch_size: 8 -> 12)" in err[0]
    assert "--allow-config-change" in err[0]

    longer = resolve_config(_raw(), source="cub.yaml", smoke=True, overrides={"epochs": 5})
    resolve_pretrained(longer)
    with pytest.raises(ConfigError, match=r"epochs: 2 -> 5"):
        resume_state(longer, tmp_path / "run" / "backup")
    state = resume_state(longer, tmp_path / "run" / "backup", allow_config_change=True)
    assert state.epoch == 1 and "Continuing with a changed configuration: epochs: 2 -> 5" in capsys.readouterr().out
    assert resume_state(stored, tmp_path / "run" / "backup").epoch == 1  # same config: no question asked
    # A backup from before a setting existed (its key absent, now None by default) still resumes.
    older = {k: v for k, v in stored.to_dict().items() if k not in ("chunk_size", "checkpoint")}
    _fake_backup(tmp_path / "old", older)
    assert resume_state(stored, tmp_path / "old" / "backup").epoch == 1
    chunked = resolve_config(_raw(), source="cub.yaml", smoke=True, overrides={"chunk_size": 4})
    resolve_pretrained(chunked)
    with pytest.raises(ConfigError, match=r"chunk_size: '\(absent\)' -> 4"):
        resume_state(chunked, tmp_path / "old" / "backup")


def test_a_recipe_rerun_on_a_damaged_backup_says_what_to_do(tmp_path, capsys):
    from keras_roadmap.recipes.config import resolve_config
    from keras_roadmap.recipes.pretrained import resolve_pretrained
    from keras_roadmap.recipes.run import main

    stored = resolve_config(_raw(), source="cub.yaml", smoke=True)
    resolve_pretrained(stored)  # as a run does before it stores its config (smoke: random weights)
    _fake_backup(tmp_path / "run", stored.to_dict())
    (tmp_path / "run" / "backup" / "epoch-0001.weights.h5").write_bytes(b"")  # torn, no older generation
    assert main("cub", ["--smoke", "--out", str(tmp_path / "run")], CONFIGS / "cub.yaml") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epoch-0001.weights.h5 is missing or damaged" in err[0] and "to start over" in err[0]
