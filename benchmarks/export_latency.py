"""Latency of an exported ONNX embedder (onnxruntime) vs the Keras model's predict_on_batch.

    python benchmarks/export_latency.py            # MLP + ResNet-50 at 224x224
    python benchmarks/export_latency.py --quick    # ResNet-50 at 160x160, fewer repetitions

Models (random weights, L2-normalised outputs, exported with keras_roadmap.export.to_onnx and
verified against Keras before timing):

* ``mlp``: 64-d input -> Dense(128, relu) -> Dense(32) -> L2 (a quickstart-sized embedder);
* ``resnet50``: keras.applications.ResNet50(weights=None, include_top=False, pooling="avg") ->
  Dense(512) -> L2.

Each configuration is timed in interleaved rounds (one Keras call, one ORT call, ...) after
warm-up, so that load from other processes hits both sides alike; the table gives medians in ms
and the ratio Keras / ORT (> 1: ORT is faster). Both sides use ``--threads`` intra-op threads.

A second table gives the cold start of a serving process, measured in fresh interpreters
(median of ``--cold-reps``): import the runtime, load the artifact, embed one example, for
onnxruntime on the ONNX file vs TensorFlow on the SavedModel export of the same model.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_mlp():
    import keras

    x = keras.Input((64,), name="features")
    h = keras.layers.Dense(128, activation="relu")(x)
    y = keras.layers.UnitNormalization()(keras.layers.Dense(32)(h))
    return keras.Model(x, y, name="mlp_embedder"), (64,)


def build_resnet50(image_size):
    import keras

    x = keras.Input((image_size, image_size, 3), name="pixels")
    backbone = keras.applications.ResNet50(
        weights=None, include_top=False, pooling="avg", input_shape=(image_size, image_size, 3)
    )
    y = keras.layers.UnitNormalization()(keras.layers.Dense(512)(backbone(x)))
    return keras.Model(x, y, name="resnet50_embedder"), (image_size, image_size, 3)


def time_pair(keras_fn, ort_fn, reps, warmup):
    for _ in range(warmup):
        keras_fn()
        ort_fn()
    keras_ms, ort_ms = [], []
    for _ in range(reps):
        for fn, sink in ((keras_fn, keras_ms), (ort_fn, ort_ms)):
            start = time.perf_counter()
            fn()
            sink.append((time.perf_counter() - start) * 1e3)
    return statistics.median(keras_ms), statistics.median(ort_ms)


_COLD_ORT = """
import time; start = time.perf_counter()
import numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = {threads}
session = ort.InferenceSession({path!r}, options, providers=["CPUExecutionProvider"])
session.run(None, {{{name!r}: np.zeros({shape}, "float32")}})
print(time.perf_counter() - start)
"""
_COLD_TF = """
import os, time; start = time.perf_counter()
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads({threads})
served = tf.saved_model.load({path!r}).signatures["serving_default"]
served(**{{{name!r}: tf.zeros({shape}, tf.float32)}})
print(time.perf_counter() - start)
"""


def cold_start_seconds(template, reps, **fields):
    """Median wall time of `template` run in fresh interpreters (interpreter start excluded)."""
    times = []
    for _ in range(reps):
        out = subprocess.run(
            [sys.executable, "-c", template.format(**fields)], capture_output=True, text=True, check=True
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-50 at 160x160 and fewer repetitions")
    parser.add_argument(
        "--image-size", type=int, default=None, help="ResNet-50 input size (default 224, or 160 with --quick)"
    )
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, both runtimes")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds for the MLP (default 200)")
    parser.add_argument(
        "--resnet-reps", type=int, default=None, help="timed rounds for ResNet-50 (default 7, or 3 with --quick)"
    )
    parser.add_argument(
        "--cold-reps",
        type=int,
        default=None,
        help="fresh processes per cold-start measurement (default 3, 1 with --quick)",
    )
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args(argv)
    image_size = args.image_size or (160 if args.quick else 224)
    mlp_reps = args.reps or (50 if args.quick else 200)
    resnet_reps = args.resnet_reps or (3 if args.quick else 7)
    cold_reps = args.cold_reps or (1 if args.quick else 3)

    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import keras

    from keras_roadmap.export import to_onnx, to_saved_model

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads

    configs = [("mlp", build_mlp, mlp_reps, 10)]
    if not args.skip_resnet:
        configs.append(("resnet50", lambda: build_resnet50(image_size), resnet_reps, 1))

    print(
        f"# export latency: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"threads={args.threads}, tensorflow {tf.__version__}, keras {keras.__version__}, "
        f"onnxruntime {ort.__version__}, resnet50 input {image_size}x{image_size}, "
        f"{'quick' if args.quick else 'full'} mode"
    )
    rows, cold_rows = [], []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, reps, warmup in configs:
            keras.utils.set_random_seed(0)
            model, shape = build()
            path = os.path.join(tmp, f"{name}.onnx")
            report = to_onnx(model, path, opset=17)
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            print(
                f"# {name}: exported in {report.seconds:.1f} s, max |ONNX - Keras| = "
                f"{report.max_abs_diff:.1e}, {os.path.getsize(path) / 1e6:.1f} MB"
            )
            for batch in (1, 32):
                x = rng.standard_normal((batch, *shape)).astype("float32")
                keras_ms, ort_ms = time_pair(
                    lambda model=model, x=x: model.predict_on_batch(x),
                    lambda session=session, report=report, x=x: session.run(None, {report.input_name: x}),
                    reps,
                    warmup,
                )
                rows.append((name, batch, reps, keras_ms, ort_ms))

            saved_model = os.path.join(tmp, f"{name}_saved_model")
            to_saved_model(model, saved_model, verify=False)  # same graph; ONNX parity shown above
            fields = dict(threads=args.threads, shape=(1, *shape))
            ort_s = cold_start_seconds(_COLD_ORT, cold_reps, path=path, name=report.input_name, **fields)
            tf_s = cold_start_seconds(_COLD_TF, cold_reps, path=saved_model, name=report.input_name, **fields)
            cold_rows.append((name, cold_reps, tf_s, ort_s))

    print()
    print("| model | batch | rounds | Keras predict_on_batch (ms) | ONNX Runtime (ms) | Keras / ORT |")
    print("|---|---|---|---|---|---|")
    for name, batch, reps, keras_ms, ort_ms in rows:
        print(f"| {name} | {batch} | {reps} | {keras_ms:.2f} | {ort_ms:.2f} | {keras_ms / ort_ms:.1f}x |")
    print()
    print(
        "| model | processes | TF: import + load SavedModel + 1 call (s) "
        "| ORT: import + session + 1 call (s) | TF / ORT |"
    )
    print("|---|---|---|---|---|")
    for name, reps, tf_s, ort_s in cold_rows:
        print(f"| {name} | {reps} | {tf_s:.2f} | {ort_s:.2f} | {tf_s / ort_s:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
