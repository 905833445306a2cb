"""What an update of an index folder costs next to rebuilding it: `index add` / `index remove` of
a few images vs `index build` of the whole gallery, per index type, in one run (the library calls
behind the CLI, so interpreter start-up is left out).

Data: N small JPEGs (32 x 32, C classes) written to a temporary folder; the embedder is a tiny
conv net exported to ONNX here (needs TensorFlow) unless --model names one.

    python benchmarks/index_update.py               # N = 5,000
    python benchmarks/index_update.py --n 1000 --model embedder.onnx
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def tiny_embedder(path):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from keras_roadmap import export

    keras.utils.set_random_seed(0)
    x = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu")(x)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(16, 3, strides=2, activation="relu")(h))
    export.to_onnx(
        keras.Model(x, keras.layers.Dense(64)(h)), path, with_preprocessing=True, preset="sop", image_size=32
    )
    return path


def write_images(root, n, classes, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        folder = os.path.join(root, f"class_{i % classes}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    out = function(*args, **kwargs)
    return time.perf_counter() - started, out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="gallery size (default 5000)")
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--changed", type=int, default=10, help="images added, then removed (default 10)")
    parser.add_argument("--model", help="ONNX embedder exported with --with-preprocessing (default: a tiny one)")
    args = parser.parse_args()

    from keras_roadmap.serving import add_files, build_store, remove_entries

    with tempfile.TemporaryDirectory() as work:
        model = args.model or tiny_embedder(os.path.join(work, "embedder.onnx"))
        write_images(os.path.join(work, "photos"), args.n, args.classes)
        extra = write_images(os.path.join(work, "extra"), args.changed, args.changed, seed=1)
        print(f"gallery {args.n} images, {args.changed} added then removed; seconds (ratio to the build)")
        print(f"{'index':6} {'build':>8} {'add':>16} {'remove':>16} {'manifest MB':>12}")
        for index_type in ("flat", "ivf", "hnsw"):
            idx = os.path.join(work, f"{index_type}.idx")
            build_s, _ = timed(build_store, idx, model, os.path.join(work, "photos"), index_type=index_type)
            add_s, _ = timed(add_files, idx, extra)
            remove_s, _ = timed(remove_entries, idx, extra)
            size = os.path.getsize(os.path.join(idx, "manifest.json")) / 1e6
            print(
                f"{index_type:6} {build_s:8.2f} {add_s:8.2f} ({add_s / build_s:4.2f}x) "
                f"{remove_s:8.2f} ({remove_s / build_s:4.2f}x) {size:12.2f}"
            )


if __name__ == "__main__":
    main()
