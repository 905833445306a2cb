"""Own-images loader throughput (images/s) against `keras.utils.image_dataset_from_directory`
on the same folder (ROOT/<class>/<image>, JPEG + PNG), measured in the same run.

Both read every image once, decode it, bring it to S x S and batch it:

* ours: `load_custom(folder)` (listing + the class split) -> `make_eval_dataset(split,
  preset="sop", image_size=S)` for each side (parallel decode, PIL-exact antialiased resize,
  centre crop, ImageNet normalisation, transparency composited, per-image corrupt-file guard);
* baseline: `image_dataset_from_directory(folder, image_size=(S, S), shuffle=False)` (its
  bilinear resize without antialiasing), iterated as it comes (Keras' own pipeline).

Each is timed `--repeats` times, alternating, after one warm-up pass; the best time counts.

    python benchmarks/custom_loader.py                      # 2,000 images of 320x240, S = 64
    python benchmarks/custom_loader.py --images 500 --size 128
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def generate_folder(root: pathlib.Path, count: int, width: int, height: int, per_class: int = 5) -> None:
    """`count` images in `count / per_class` class folders; every 5th a PNG, the rest JPEGs."""
    from PIL import Image

    if root.is_dir() and sum(1 for _ in root.rglob("*.*")) == count:
        return
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class_{i // per_class:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        field = np.kron(base, np.ones((16, 16, 1), np.uint8))[:height, :width]
        pixels = np.clip(field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if i % 5 == 4:
            image.save(folder / f"{i:06d}.png")
        else:
            image.save(folder / f"{i:06d}.jpg", quality=90)


def time_pass(make) -> tuple:
    started = time.perf_counter()
    count = 0
    for images, _ in make():
        count += int(images.shape[0])
    return time.perf_counter() - started, count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--size", type=int, default=64, help="output side S")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", default=None, help="folder to write the images to (and reuse)")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from keras_roadmap.data import load_custom, make_eval_dataset

    root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="custom_loader_")) / "images"
    generate_folder(root, args.images, args.width, args.height)

    def ours():
        data = load_custom(root, test_classes=0.5, seed=0)
        for split in (data.train, data.gallery):
            yield from make_eval_dataset(split, args.batch_size, preset="sop", image_size=args.size)

    def baseline():
        return keras.utils.image_dataset_from_directory(
            str(root), image_size=(args.size, args.size), batch_size=args.batch_size, shuffle=False, verbose=False
        )

    for make in (ours, baseline):  # warm-up: file cache, tracing
        time_pass(make)
    times = {"ours": [], "baseline": []}
    for _ in range(args.repeats):
        for name, make in (("ours", ours), ("baseline", baseline)):
            seconds, count = time_pass(make)
            assert count == args.images, (name, count)
            times[name].append(seconds)
    best = {k: min(v) for k, v in times.items()}
    print(
        f"{args.images} images ({args.width}x{args.height}, 4/5 JPEG, 1/5 PNG) -> {args.size}x{args.size}, "
        f"batch {args.batch_size}, {os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}"
    )
    print(f"| loader | best of {args.repeats} (s) | images/s |")
    print("|---|---:|---:|")
    for name, label in (
        ("ours", "load_custom + make_eval_dataset"),
        ("baseline", "keras image_dataset_from_directory"),
    ):
        print(f"| {label} | {best[name]:.2f} | {args.images / best[name]:.0f} |")
    print(f"ratio (ours / baseline throughput): {best['baseline'] / best['ours']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
