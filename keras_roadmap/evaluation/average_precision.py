"""Exact (non-smooth) average precision from a dense score matrix, in numpy.

A slow, obviously-correct reference: it sorts whole rows, so use it on small matrices (tests,
loss checks). `retrieval_metrics` computes the same quantity at scale without an N x N matrix.
"""

import numpy as np

TIES = ("stable", "pessimistic")


def average_precision(scores, relevant, *, ignore=None, ties: str = "stable"):
    """Textbook average precision of each query row.

    AP(q) = (1 / |P_q|) * sum over relevant items j of rank+(j) / rank(j), where rank(j) is j's
    1-based position among the non-ignored items sorted by decreasing score and rank+(j) the
    number of relevant items at or before that position.

    Args:
        scores: (Nr,) or (Nq, Nr) real array; higher means more similar (pass negated distances).
        relevant: bool array of the same shape: True where the item is relevant to the query.
        ignore: optional bool array of the same shape; True items are removed from the ranking
            altogether (e.g. the query itself in same-source evaluation). Default: none.
        ties: "stable" (default): equal scores are ordered by column index, as a stable sort (and
            faiss) does. "pessimistic": every other item tied with a relevant item counts as
            ranked before it, i.e. Heaviside with H(0) = 1 as in the official HeavisideAP.

    Returns:
        float64 (Nq,) array (a python float for 1-D input); NaN for rows without relevant items.

    Raises:
        ValueError: shapes differ, scores hold NaN/inf on non-ignored items, masks are not bool,
            or `ties` is unknown.
    """
    if ties not in TIES:
        raise ValueError(f"`ties` must be one of {TIES}; got {ties!r}.")
    s = np.asarray(scores, dtype=np.float64)
    one_row = s.ndim == 1
    s = np.atleast_2d(s)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"`scores` must be a non-empty (Nr,) or (Nq, Nr) array; got shape {np.shape(scores)}.")
    rel = _bool_mask(relevant, s.shape, "relevant", one_row)
    valid = ~_bool_mask(ignore, s.shape, "ignore", one_row) if ignore is not None else np.ones(s.shape, bool)
    if not np.isfinite(s[valid]).all():
        raise ValueError("`scores` holds NaN or inf on items that are not ignored.")
    rel = rel & valid
    s = np.where(valid, s, -np.inf)

    order = np.argsort(-s, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=1)
    rel_sorted = np.take_along_axis(rel, order, axis=1)
    rank = np.cumsum(np.take_along_axis(valid, order, axis=1), axis=1)
    rank_plus = np.cumsum(rel_sorted, axis=1)
    if ties == "pessimistic":
        # Everything tied with an item is counted before it: read the counts at the end of
        # each run of equal scores.
        last_of_run = np.ones(s.shape, bool)
        last_of_run[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
        candidate = np.where(last_of_run, np.arange(s.shape[1]), s.shape[1])
        run_end = np.minimum.accumulate(candidate[:, ::-1], axis=1)[:, ::-1]
        rank = np.take_along_axis(rank, run_end, axis=1)
        rank_plus = np.take_along_axis(rank_plus, run_end, axis=1)
    n_rel = rel.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(rel_sorted, rank_plus / np.maximum(rank, 1), 0.0).sum(axis=1) / n_rel
    ap = np.where(n_rel > 0, ap, np.nan)
    return float(ap[0]) if one_row else ap


def _bool_mask(mask, shape, name, one_row):
    arr = np.asarray(mask)
    if arr.dtype != bool:
        raise ValueError(f"`{name}` must be a bool array; got dtype {arr.dtype}.")
    arr = np.atleast_2d(arr) if one_row else arr
    if arr.shape != shape:
        raise ValueError(f"`{name}` has shape {np.shape(mask)} but `scores` has {shape if not one_row else shape[1:]}.")
    return arr
