"""The one ranking routine (evaluation + diagnostics): exact ranks against a dense sort, progress."""

import io

import numpy as np
import pytest

from keras_roadmap.evaluation import average_precision, retrieval_metrics
from keras_roadmap.evaluation.progress import Progress
from keras_roadmap.evaluation.ranks import iter_positive_ranks


def dense_ranks(scores, relevant, ties):
    """Sorted 1-based ranks and rank+ of the relevant items of one row, by a full stable sort."""
    order = np.argsort(-scores, kind="stable")
    pos = np.flatnonzero(relevant[order]) + 1
    if ties == "stable":
        return pos, np.arange(1, len(pos) + 1)
    s = scores[relevant]
    rank = np.array([np.count_nonzero(scores >= v) for v in np.sort(s)[::-1]])
    plus = np.array([np.count_nonzero(s >= v) for v in np.sort(s)[::-1]])
    return rank, plus


@pytest.mark.parametrize("ties", ["stable", "pessimistic"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ranks_match_a_dense_sort_with_ties_and_small_blocks(ties, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(dtype)
    x[7] = x[3]  # exact ties between items of different and equal classes
    x[11] = x[3]
    y = rng.integers(0, 6, 60)
    y[50] = 99  # a lone query
    rows = np.array([3, 7, 50, 0, 59, 11])
    scores = x @ x.T
    got = list(iter_positive_ranks(x, x, y, y, rows=rows, exclude_self=True, ties=ties, block_bytes=2 * 60 * 8))
    assert len(got) > 1  # several blocks
    for block_rows, offsets, rank, plus in got:
        for i, q in enumerate(block_rows):
            keep = np.arange(60) != q
            want_rank, want_plus = dense_ranks(scores[q, keep], (y == y[q])[keep], ties)
            # Stable ranks count positions among the other items (the query left out).
            np.testing.assert_array_equal(rank[offsets[i] : offsets[i + 1]], want_rank)
            np.testing.assert_array_equal(plus[offsets[i] : offsets[i + 1]], want_plus)
            if q == 50:
                assert offsets[i] == offsets[i + 1]


def test_pessimistic_ap_equals_the_dense_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4))
    x[5] = x[6]
    y = np.repeat(np.arange(8), 5)
    ap = np.full(40, np.nan)
    for rows, offsets, rank, plus in iter_positive_ranks(x, x, y, y, exclude_self=True, ties="pessimistic"):
        for i, q in enumerate(rows):
            ap[q] = np.mean(plus[offsets[i] : offsets[i + 1]] / rank[offsets[i] : offsets[i + 1]])
    expected = average_precision(x @ x.T, y[:, None] == y[None], ignore=np.eye(40, dtype=bool), ties="pessimistic")
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)


def test_l2_ranks_like_negated_distances():
    rng = np.random.default_rng(2)
    refs, queries = rng.normal(size=(30, 3)).astype(np.float32), rng.normal(size=(9, 3)).astype(np.float32)
    ry, qy = rng.integers(0, 3, 30), rng.integers(0, 3, 9)
    dist = ((queries[:, None] - refs[None]) ** 2).sum(-1)
    for rows, offsets, rank, _ in iter_positive_ranks(queries, refs, qy, ry, metric="l2"):
        for i, q in enumerate(rows):
            want, _ = dense_ranks(-dist[q].astype(np.float64), ry == qy[q], "stable")
            np.testing.assert_array_equal(rank[offsets[i] : offsets[i + 1]], want)


def test_unknown_ties_is_refused():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="`ties` must be one of"):
        next(iter_positive_ranks(x, x, np.arange(3), np.arange(3), ties="optimistic"))


def test_progress_is_silent_when_short_and_prints_when_asked():
    quiet, loud = io.StringIO(), io.StringIO()
    bar = Progress(10, "eval", None, stream=quiet)
    bar.update(10)
    bar.close()
    assert quiet.getvalue() == ""
    bar = Progress(10, "eval", True, interval=0.0, stream=loud)
    bar.update(4)
    bar.update(6)
    bar.close()
    assert "eval: 4/10 (40%)" in loud.getvalue() and "eval: 10/10 (100%)" in loud.getvalue()


def test_retrieval_metrics_progress_goes_to_stderr(capsys):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = np.repeat(np.arange(10), 5)
    silent = retrieval_metrics(x, y, progress=False)
    assert capsys.readouterr().err == ""
    shown = retrieval_metrics(x, y, progress=True, chunk_size=10)
    assert "retrieval_metrics: 50/50 (100%)" in capsys.readouterr().err
    assert silent == shown
