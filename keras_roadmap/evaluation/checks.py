"""Input checks shared by the evaluation functions: clear errors instead of deep crashes.

Array checks live here; scalar arguments go through :mod:`keras_roadmap.validation`, the
package's one rule for them (TypeError for a wrong type, ValueError for a wrong value).
"""

import numbers

import numpy as np

from keras_roadmap import validation

METRICS = ("inner_product", "l2")


def as_embeddings(x, name: str) -> np.ndarray:
    """Return `x` as a C-contiguous float32 (N, D) array with N, D >= 1 and finite values.

    Raises TypeError naming `name` when `x` is not an array of real numbers, ValueError when it
    is not a non-empty 2-D array or holds NaN/inf.
    """
    try:
        arr = np.asarray(x)
    except Exception as err:  # e.g. ragged nested lists
        raise ValueError(f"`{name}` must be a 2-D array of shape (N, D); got {type(x).__name__}: {err}") from err
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"`{name}` must hold real numbers (float or int); got dtype {arr.dtype} ({type(x).__name__}).")
    if arr.ndim != 2:
        raise ValueError(
            f"`{name}` must be 2-D (N, D); got shape {arr.shape}. "
            "Reshape a single vector with x[None, :] or flatten features first."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {arr.shape}); it needs at least one row and one column.")
    with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.count_nonzero(~np.isfinite(out).all(axis=1)))
        raise ValueError(
            f"`{name}` holds NaN or inf in {bad} row(s) (after casting to float32; values beyond "
            "+-3.4e38 overflow). Check the model output (e.g. a diverged loss) before evaluating."
        )
    return out


def as_labels(y, n: int, name: str) -> np.ndarray:
    """Return `y` as an int64 (n,) array; accepts shape (n,) or (n, 1) with an integer dtype."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D (N,) integer class ids; got shape {arr.shape}.")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"`{name}` must have an integer dtype (class ids); got {arr.dtype}. "
            "Map class names to ids first, or cast integral floats with labels.astype(np.int64)."
        )
    if arr.shape[0] != n:
        raise ValueError(f"`{name}` has {arr.shape[0]} entries but its embeddings have {n} rows; they must match.")
    return arr.astype(np.int64, copy=False)


def positive_int(value, name: str) -> int:
    """Return `value` as an int >= 1: TypeError for a non-integer (bools too), ValueError below 1."""
    return validation.integer(name, value, minimum=1)


def as_ks(ks) -> tuple:
    """Return `ks` as a sorted tuple of distinct ints >= 1 (a single int is accepted)."""
    if isinstance(ks, numbers.Integral) and not isinstance(ks, bool):
        ks = (ks,)
    try:
        items = list(ks)
    except TypeError:
        raise TypeError(
            f"`ks` must be an int or a sequence of positive ints; got {ks!r} ({type(ks).__name__})."
        ) from None
    if not items:
        raise ValueError("`ks` is empty; give at least one k, e.g. ks=(1, 10).")
    return tuple(sorted({positive_int(k, "ks entries") for k in items}))


def as_metric(metric: str) -> str:
    """Return `metric` if it is one of METRICS, else raise ValueError."""
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}; got {metric!r}.")
    return metric
