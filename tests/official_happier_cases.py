"""Shared by the HAPPIER and RS@k parity tests: the official_happier fixtures, a TF value and gradient."""

import pathlib

import numpy as np
import tensorflow as tf

DATA = pathlib.Path(__file__).parent / "data" / "official_happier"


def load(name):
    return dict(np.load(DATA / f"{name}.npz"))


def value_and_grad(fn, emb):
    x = tf.Variable(emb)
    with tf.GradientTape() as tape:
        value = fn(x)
    return float(value), tape.gradient(value, x).numpy()
