"""Input checks shared by the evaluation functions: clear errors instead of deep crashes."""

import numbers

import numpy as np

METRICS = ("inner_product", "l2")


def as_embeddings(x, name: str) -> np.ndarray:
    """Return `x` as a C-contiguous float32 (N, D) array with N, D >= 1 and finite values.

    Raises ValueError naming `name` when `x` is not a non-empty 2-D real array or holds NaN/inf.
    """
    try:
        arr = np.asarray(x)
    except Exception as err:  # e.g. ragged nested lists
        raise ValueError(f"`{name}` must be a 2-D array of shape (N, D); got {type(x).__name__}: {err}")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"`{name}` must hold real numbers (float or int); got dtype {arr.dtype}.")
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
    """Return `value` as an int >= 1, or raise ValueError (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def as_ks(ks) -> tuple:
    """Return `ks` as a sorted tuple of distinct ints >= 1 (a single int is accepted)."""
    if isinstance(ks, numbers.Integral) and not isinstance(ks, bool):
        ks = (ks,)
    try:
        items = list(ks)
    except TypeError:
        raise ValueError(f"`ks` must be an int or a sequence of positive ints; got {ks!r}.")
    if not items:
        raise ValueError("`ks` is empty; give at least one k, e.g. ks=(1, 10).")
    return tuple(sorted({positive_int(k, "ks entries") for k in items}))


def as_metric(metric: str) -> str:
    """Return `metric` if it is one of METRICS, else raise ValueError."""
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}; got {metric!r}.")
    return metric
