"""Quickstart: train a small embedder with ROADMAPLoss on scikit-learn's bundled digits.

No download: the 1,797 8x8 digit images ship with scikit-learn. They are split 50/50, stratified
(every digit in both halves); the model trains on one half with class-balanced batches (10
classes x 4 images) and is evaluated by exact retrieval on the held-out half, before and after
training.

    python recipes/quickstart.py [--steps 300] [--seed 0]

Held-out *images*, not held-out *classes*: with only 10 classes (5 for training), unseen-class
retrieval does not improve with any loss; the glyph benchmark (`recipes/glyphs.py`) shows it.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_roadmap import MPerClassSampler, ROADMAPLoss  # noqa: E402
from keras_roadmap.evaluation import retrieval_metrics  # noqa: E402


def load_digits_split(seed):
    """Stratified 50/50 split of scikit-learn's digits: ``(x_train, y_train, x_test, y_test)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.5, stratify=y, random_state=seed)
    return x_train, y_train, x_test, y_test


def build_embedder(input_dim, embedding_dim=32):
    """A 2-layer MLP ending in L2 normalisation: (B, input_dim) -> (B, embedding_dim)."""
    return keras.Sequential(
        [
            keras.Input((input_dim,), name="pixels"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(embedding_dim),
            keras.layers.UnitNormalization(name="embedding"),
        ],
        name="digits_embedder",
    )


def balanced_batches(x, y, steps, batch_size, seed):
    """tf.data of ``steps`` class-balanced batches (batch_size / 4 classes x 4 images)."""
    sampler = MPerClassSampler(y, batch_size=batch_size, samples_per_class=4, seed=seed)
    epochs = -(-steps // len(sampler))
    index = np.concatenate([sampler.batches(epoch) for epoch in range(epochs)])[:steps]
    return tf.data.Dataset.from_tensor_slices((x[index], y[index]))


def evaluate(model, x, y):
    embeddings = model.predict(x, batch_size=512, verbose=0)
    return retrieval_metrics(embeddings, y, ks=(1, 2, 4, 8))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--batch-size", type=int, default=40, help="10 classes x 4 images (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = load_digits_split(args.seed)
    print(f"digits: {len(x_train)} training images, {len(x_test)} held-out images, 10 classes in both")

    model = build_embedder(x_train.shape[1])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ROADMAPLoss(), jit_compile=True)
    before = evaluate(model, x_test, y_test)
    history = model.fit(balanced_batches(x_train, y_train, args.steps, args.batch_size, args.seed), epochs=1, shuffle=False, verbose=0)
    after = evaluate(model, x_test, y_test)

    print(f"trained {args.steps} steps with ROADMAPLoss: loss {history.history['loss'][0]:.3f} (mean over the run)")
    print("\nheld-out retrieval (exact, faiss)   before   after")
    for key in ("recall@1", "recall@4", "map@r", "map"):
        print(f"  {key:<33}{before[key]:7.3f}  {after[key]:6.3f}")
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
    return before, after


if __name__ == "__main__":
    main()
