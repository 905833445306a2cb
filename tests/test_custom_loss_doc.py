"""docs/custom_loss.md: its example loss, run exactly as written, does what the page says."""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "custom_loss.md"


def doc_code():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/custom_loss.md should hold exactly one python block"
    return blocks[0]


@pytest.fixture(scope="module")
def SmoothRecallAtK():
    namespace = {"__name__": "custom_loss_doc"}
    exec(compile(doc_code(), str(DOC), "exec"), namespace)  # registers my_project>SmoothRecallAtK once
    return namespace["SmoothRecallAtK"]


def clustered(num_classes=6, per_class=4, dim=8, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:num_classes]
    labels = np.repeat(np.arange(num_classes), per_class)
    emb = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    return labels.astype("int64"), (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype("float32")


def test_the_example_class_is_about_twenty_lines():
    assert 15 <= len(doc_code().strip().splitlines()) <= 35


def test_near_zero_on_separated_classes_and_large_on_random(SmoothRecallAtK):
    labels, emb = clustered()
    loss = SmoothRecallAtK(k=2)
    assert float(loss(labels, emb)) < 0.02
    random = np.random.default_rng(1).normal(size=emb.shape).astype("float32")
    assert float(loss(labels, random / np.linalg.norm(random, axis=1, keepdims=True))) > 0.2


def test_fit_lowers_it_and_it_serializes(SmoothRecallAtK):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16))
    y = np.tile(np.repeat(np.arange(8), 4), 20).astype("int64")
    x = (centres[y] + 1.5 * rng.normal(size=(len(y), 16))).astype("float32")
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), keras.layers.UnitNormalization()])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=SmoothRecallAtK(k=2, tau=0.05))
    history = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert history[-1] < history[0]
    loss = SmoothRecallAtK(k=3, sharpness=2.0)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is SmoothRecallAtK and again.get_config() == loss.get_config()


def test_reference_form_with_a_memory_like_set(SmoothRecallAtK):
    labels, emb = clustered()
    value = SmoothRecallAtK(k=2).call_with_reference(labels[:6], emb[:6], labels, emb)
    assert np.isfinite(float(value))


WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    namespace = {"__name__": "custom_loss_doc"}
    exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"), namespace)
    loss = namespace["SmoothRecallAtK"](k=2, tau=0.1, dtype="float64")
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 1, 2, 3, 3, 3, 3], dtype="int64")
    emb = rng.normal(size=(8, 5))
    single = float(loss(labels, tf.constant(emb)))
    def shard(ctx, array):
        return tf.constant(array[4 * ctx.replica_id_in_sync_group : 4 * ctx.replica_id_in_sync_group + 4])
    per_emb = strategy.experimental_distribute_values_from_function(lambda ctx: shard(ctx, emb))
    per_lab = strategy.experimental_distribute_values_from_function(lambda ctx: shard(ctx, labels))
    values = strategy.run(tf.function(lambda e, y: loss(y, e)), args=(per_emb, per_lab))
    values = [float(v) for v in strategy.experimental_local_results(values)]
    print("RESULTS " + json.dumps({"single": single, "replicas": values}))
    """
)


def test_replica_losses_sum_to_the_single_device_loss(tmp_path):
    code = tmp_path / "example.py"
    code.write_text(doc_code())
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(code)], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULTS ") :])
    assert len(result["replicas"]) == 2
    # Each replica alone would see a different mean: only the gathered, count-summed form sums up.
    assert abs(result["replicas"][0] - result["replicas"][1]) > 1e-3
    assert sum(result["replicas"]) == pytest.approx(result["single"], rel=1e-10, abs=1e-12)
