"""Crash safety of a recipe run: real `recipes/cub.py --smoke` subprocesses killed with SIGKILL
at chosen moments (inside the backup write, between writing the weights and committing them,
inside the ONNX export), each rerun resuming from the last complete state; the final outputs
are bitwise equal to those of an unbroken run."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
EPOCHS = 3
RUN_TIMEOUT = 480  # seconds; every subprocess below ends within it, killed otherwise


def _command(out, *extra):
    return [
        sys.executable,
        str(REPO / "recipes" / "cub.py"),
        "--smoke",
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        *extra,
    ]


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_ROADMAP_TEST_STALL_IN", None)
    env.update(extra)
    return env


def run_to_end(out, *extra):
    done = subprocess.run(_command(out, *extra), env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return done


def run_and_kill_at(out, point, tmp_path):
    """Start a run that stalls at `point` (see keras_roadmap.atomic), kill it there with
    SIGKILL; returns the process's stdout."""
    mark = tmp_path / f"stalled-{point.replace(':', '-')}"
    log = tmp_path / f"log-{point.replace(':', '-')}.txt"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            _command(out),
            env=_env(KERAS_ROADMAP_TEST_STALL_IN=point, KERAS_ROADMAP_TEST_STALL_MARK=str(mark)),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + RUN_TIMEOUT
            while not mark.exists():
                if process.poll() is not None:
                    raise AssertionError(
                        f"the run ended (status {process.returncode}) before {point}:\n{log.read_text()[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(f"the run did not reach {point} in {RUN_TIMEOUT} s")
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return log.read_text()


def metadata(out):
    return json.loads((out / "backup" / "training_metadata.json").read_text())


def h5_arrays(path):
    import h5py

    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return arrays


def final_state(out):
    """Everything a finished run leaves that must not depend on interruptions."""
    import keras
    from PIL import Image

    result = json.loads((out / "test_metrics.json").read_text())
    result["onnx"].pop("path")
    meta = metadata(out)
    state = {
        "test_metrics": result,
        "history": (out / "history.csv").read_text(),
        "best": json.loads((out / "best_embedder.keras.best.json").read_text()),
        "backup_epoch": meta["epoch"],
        "backup": h5_arrays(out / "backup" / meta["weights"]),
        "best_weights": keras.models.load_model(out / "best_embedder.keras").get_weights(),
        "onnx": _onnx_bytes_and_output(out / "embedder.onnx"),
    }
    for picture in ("retrieval_grid.png", "recall_curve.png"):
        with Image.open(out / picture) as image:
            state[picture] = np.asarray(image).copy()
    return state


def _onnx_bytes_and_output(path):
    """The ONNX file's bytes (names are canonical, so a resumed process exports the same file)
    and its output on a fixed uint8 probe."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probe = np.random.default_rng(0).integers(0, 256, size=(2, 40, 44, 3), dtype=np.uint8)
    return {"bytes": path.read_bytes(), "output": session.run(None, {session.get_inputs()[0].name: probe})[0]}


def assert_same_state(a, b):
    assert a["test_metrics"] == b["test_metrics"]
    assert a["history"] == b["history"]
    assert a["best"] == b["best"] and a["backup_epoch"] == b["backup_epoch"]
    assert sorted(a["backup"]) == sorted(b["backup"])
    for name in a["backup"]:
        np.testing.assert_array_equal(a["backup"][name], b["backup"][name], err_msg=name)
    for x, y in zip(a["best_weights"], b["best_weights"], strict=True):
        np.testing.assert_array_equal(x, y)
    assert a["onnx"]["bytes"] == b["onnx"]["bytes"]
    np.testing.assert_array_equal(a["onnx"]["output"], b["onnx"]["output"])
    for picture in ("retrieval_grid.png", "recall_curve.png"):
        np.testing.assert_array_equal(a[picture], b[picture])


@pytest.mark.slow
def test_kills_at_any_moment_resume_to_the_unbroken_result(tmp_path):
    reference = tmp_path / "unbroken"
    done = run_to_end(reference)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "killed"
    # 1. Inside the write of epoch 2's backup (a half-written temporary file on disk).
    run_and_kill_at(out, "backup_write:2", tmp_path)
    assert metadata(out)["epoch"] == 1
    assert list((out / "backup").glob(".partial-*"))  # the torn write is there...
    # 2. The rerun resumes at epoch 1 (ignoring the torn file); killed after writing epoch 2's
    #    weights but before committing them: the backup still says epoch 1.
    printed = run_and_kill_at(out, "backup_commit:1", tmp_path)
    assert "Resuming from epoch 1" in printed
    assert metadata(out)["epoch"] == 1 and (out / "backup" / "epoch-0002.weights.h5").is_file()
    assert not list((out / "backup").glob(".partial-*"))  # ...and cleaned up by the rerun
    # 3. Training done, killed inside the ONNX export: no embedder.onnx, no test_metrics.json.
    run_and_kill_at(out, "onnx_write", tmp_path)
    assert metadata(out)["epoch"] == EPOCHS
    assert not (out / "embedder.onnx").exists() and not (out / "test_metrics.json").exists()
    # 4. The last rerun finishes; everything equals the unbroken run, bit for bit.
    done = run_to_end(out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resuming from epoch {EPOCHS}" in done.stdout
    assert_same_state(final_state(out), final_state(reference))
    starts = [json.loads(line)["initial_epoch"] for line in (out / "run_log.jsonl").read_text().splitlines()]
    assert starts == [0, 1, 1, EPOCHS]
