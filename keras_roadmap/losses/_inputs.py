"""Checks and conversions shared by every loss (clear errors at trace time, exact labels), and
the few backend ops the loss kernels need with a guarantee Keras' own lacks (dtype kept, loops
run one step at a time, rows accumulated in place)."""

import numpy as np
from keras import backend, ops

# Keras' own Loss.__call__ casts y_true to the loss dtype; in float32, integer ids >= 2**24 stop
# being distinct (16777217 == 16777216), silently merging classes. Our losses keep labels integer.
FLOAT32_EXACT_INT_LIMIT = 2**24


def _static_shape(x):
    return tuple(x.shape)


def _dtype_name(x):
    return backend.standardize_dtype(x.dtype)


def _is_integer_dtype(dtype):
    return dtype.startswith("int") or dtype.startswith("uint")


def _is_float_dtype(dtype):
    return dtype.startswith("float") or dtype.startswith("bfloat")


def prepare_labels(labels, *, batch_size=None, what="y_true"):
    """Integer labels of shape ``(B,)`` from ``(B,)`` or ``(B, 1)``.

    Raises ValueError (naming ``what`` and the shape) for another rank or a float/bool dtype.
    """
    if isinstance(labels, (list, tuple, np.ndarray)):
        labels = np.asarray(labels)
    labels = ops.convert_to_tensor(labels)
    dtype = _dtype_name(labels)
    shape = _static_shape(labels)
    if not _is_integer_dtype(dtype):
        hint = ""
        if _is_float_dtype(dtype):
            hint = (
                " Float labels lose distinct ids above 2**24 (Keras casts y_true to float32 in "
                "its default losses); cast your class ids with `labels.astype('int64')` or "
                "`tf.cast(labels, tf.int64)` in the data pipeline."
            )
        raise ValueError(f"{what} must hold integer class ids, got dtype {dtype} (shape {shape}).{hint}")
    if len(shape) == 2 and shape[1] == 1:
        labels = ops.reshape(labels, (-1,))
    elif len(shape) != 1:
        raise ValueError(f"{what} must have shape (batch,) or (batch, 1) with integer class ids, got shape {shape}.")
    n = labels.shape[0]
    if batch_size is not None and n is not None and n != batch_size:
        raise ValueError(
            f"{what} has {n} labels but the embeddings have {batch_size} rows: give one label per embedding."
        )
    return labels


def prepare_embeddings(embeddings, dtype, *, what="y_pred"):
    """Float embeddings ``(B, D)`` cast to the loss dtype, with shape errors named."""
    if isinstance(embeddings, (list, tuple, np.ndarray)):
        embeddings = np.asarray(embeddings)
    embeddings = ops.convert_to_tensor(embeddings)
    in_dtype = _dtype_name(embeddings)
    shape = _static_shape(embeddings)
    if not _is_float_dtype(in_dtype):
        raise ValueError(
            f"{what} must be float embeddings of shape (batch, dim), got dtype {in_dtype} (shape {shape})."
        )
    if len(shape) != 2:
        raise ValueError(
            f"{what} must be embeddings of shape (batch, dim), got shape {shape}. "
            "Flatten or pool your model's output to one vector per example."
        )
    if shape[0] == 0:
        raise ValueError(f"{what} is an empty batch (shape {shape}): a ranking loss needs at least one query.")
    if shape[1] == 0:
        raise ValueError(f"{what} has embedding dimension 0 (shape {shape}).")
    return ops.cast(embeddings, dtype)


def prepare_batch(y_true, y_pred, dtype):
    """``(labels (B,) int, embeddings (B, D) dtype)`` for the batch form of a loss."""
    embeddings = prepare_embeddings(y_pred, dtype)
    labels = prepare_labels(y_true, batch_size=embeddings.shape[0])
    _check_eager_values(labels, embeddings, "y_pred")
    return labels, embeddings


def prepare_reference(ref_y_true, ref_y_pred, dtype, query_embeddings):
    """Reference labels and embeddings, with the same checks, as constants (no gradient)."""
    embeddings = prepare_embeddings(ref_y_pred, dtype, what="ref_y_pred")
    dim, ref_dim = query_embeddings.shape[1], embeddings.shape[1]
    if dim is not None and ref_dim is not None and dim != ref_dim:
        raise ValueError(
            f"ref_y_pred has dimension {ref_dim} but y_pred has dimension {dim}: the reference "
            "must be embedded by the same model."
        )
    labels = prepare_labels(ref_y_true, batch_size=embeddings.shape[0], what="ref_y_true")
    _check_eager_values(labels, embeddings, "ref_y_pred")
    return labels, ops.stop_gradient(embeddings)


def _check_eager_values(labels, embeddings, what):
    """Value checks that are only possible when the tensors are concrete (eager mode)."""
    try:
        emb = ops.convert_to_numpy(embeddings)
    except Exception:  # symbolic tensor inside tf.function / XLA: nothing to inspect
        return
    if emb.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch: a ranking loss needs at least one query.")
    if not np.all(np.isfinite(emb)):
        bad = int(np.sum(~np.all(np.isfinite(emb), axis=1)))
        raise ValueError(f"{what} holds NaN or Inf in {bad} row(s): the model diverged or the input is corrupt.")


def floor_at(x, minimum):
    """``max(x, minimum)`` in ``x``'s dtype.

    ``keras.ops.maximum`` goes through Keras' type promotion, which turns float64 into float32 on
    the JAX and torch backends (Keras 3.15 ``result_type``); ``where`` of two float64 tensors keeps
    float64, so ``dtype="float64"`` really computes in float64 there.
    """
    return ops.where(ops.greater(x, minimum), x, ops.full_like(x, minimum))


def pairwise_dot(a, b):
    """``(B, N)`` dot products ``a @ b.T`` of ``(B, D)`` and ``(N, D)`` rows, in their dtype.

    Keras 3.15's torch ``matmul`` computes float64 inputs in float32 (its ``result_type``
    promotes to floatx); ``einsum`` keeps the inputs' dtype there.
    """
    if backend.backend() == "torch":
        return ops.einsum("bd,nd->bn", a, b)
    return ops.matmul(a, ops.transpose(b))


def matmul(a, b):
    """``a @ b`` of two 2-D tensors in their dtype (see :func:`pairwise_dot` for why)."""
    if backend.backend() == "torch":
        return ops.einsum("ij,jk->ik", a, b)
    return ops.matmul(a, b)


def add_rows(target, rows, updates):
    """``target`` with ``updates[i]`` added to row ``rows[i]`` (repeated rows add up).

    Unlike ``target + ops.segment_sum(updates, rows, len(target))`` this builds no second
    ``target``-sized tensor (TensorFlow's and XLA's scatter-add update the buffer in place) and
    keeps ``target``'s dtype (Keras 3.15's torch ``segment_sum`` computes in float32).
    """
    name = backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        return tf.tensor_scatter_nd_add(target, ops.expand_dims(rows, 1), updates)
    if name == "jax":
        return target.at[rows].add(updates)
    if name == "torch":
        return target.index_add(0, rows.long(), updates)
    return target + ops.segment_sum(updates, rows, num_segments=ops.shape(target)[0])


def sequential_while_loop(cond, body, loop_vars, maximum_iterations=None):
    """``ops.while_loop`` whose iterations never overlap.

    A chunked kernel bounds memory only if one chunk is alive at a time; TensorFlow's
    ``tf.while_loop`` runs up to 10 independent iterations at once by default (10x the
    temporaries: 1.3 GB instead of 0.6 GB for SupAP at B = 4096). JAX and torch loops are
    sequential already.
    """
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.while_loop(
            cond,
            lambda *args: tuple(body(*args)),
            tuple(loop_vars),
            maximum_iterations=maximum_iterations,
            parallel_iterations=1,
        )
    return ops.while_loop(cond, body, tuple(loop_vars), maximum_iterations=maximum_iterations)


def stable_argsort(x):
    """``ops.argsort`` of a 1-D tensor with ties in index order on every backend (torch's
    default sort is not stable; TensorFlow's and JAX's are)."""
    if backend.backend() == "torch":
        import torch

        return torch.argsort(x, stable=True)
    return ops.argsort(x)
