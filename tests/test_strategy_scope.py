"""RetrievalTrainer refuses, with one clear line, an encoder built outside the strategy scope
(2 logical CPU devices, in a subprocess: they must be set before TensorFlow starts)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from keras_roadmap import RetrievalTrainer

def encoder():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.UnitNormalization()])

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
outside = encoder()
with strategy.scope():
    try:
        RetrievalTrainer(outside)
        print("NO_ERROR")
    except ValueError as error:
        print("ERROR:" + str(error))
    RetrievalTrainer(encoder())  # built inside: accepted
    print("INSIDE_OK")
RetrievalTrainer(outside)  # no strategy: accepted
print("NO_STRATEGY_OK")
"""


def test_encoder_built_outside_the_scope_is_refused():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    errors = [line for line in lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and "created outside the current tf.distribute strategy scope" in errors[0]
    assert "with strategy.scope():" in errors[0] and "NO_ERROR" not in lines
    assert "INSIDE_OK" in lines and "NO_STRATEGY_OK" in lines
