"""retrieval_metrics, exact_knn and average_precision: official fixtures, hand-computed cases,
chunking invariance, tie handling and input validation."""

import numpy as np
import pytest
from conftest import load_fixture

from keras_roadmap.evaluation import average_precision, exact_knn, retrieval_metrics

PML_KEYS = {
    "precision@1": "pml_precision_at_1",
    "r_precision": "pml_r_precision",
    "map@r": "pml_mean_average_precision_at_r",
    "map": "pml_mean_average_precision",
    "mrr": "pml_mean_reciprocal_rank",
}
FIXTURES = ["metrics_same_n500_d64_c50", "metrics_same_n5000_d128_c500", "metrics_split_n3000_d64_c300"]


def _run_fixture(z, **kwargs):
    if bool(z["same_source"]):
        return retrieval_metrics(z["embeddings"], z["labels"], ks=tuple(z["recall_ks"]), **kwargs)
    return retrieval_metrics(
        z["reference"],
        z["reference_labels"],
        query_embeddings=z["query"],
        query_labels=z["query_labels"],
        ks=tuple(z["recall_ks"]),
        **kwargs,
    )


@pytest.mark.parametrize("metric", ["inner_product", "l2"])
@pytest.mark.parametrize("name", FIXTURES)
def test_matches_official_fixture(name, metric):
    z = load_fixture(name + ".npz")
    metrics, per_query = _run_fixture(z, metric=metric, return_per_query=True)
    for ours, theirs in PML_KEYS.items():
        assert metrics[ours] == pytest.approx(float(z[theirs]), abs=1e-6), ours
    recall = [metrics[f"recall@{k}"] for k in z["recall_ks"]]
    np.testing.assert_allclose(recall, z["recall_at_k"], rtol=0, atol=1e-6)
    n_queries = len(z["n_relevant"])
    assert metrics["num_queries"] == n_queries
    assert metrics["num_lone_queries"] == int((z["n_relevant"] == 0).sum()) > 0
    np.testing.assert_array_equal(per_query["num_relevant"], z["n_relevant"])
    np.testing.assert_array_equal(per_query["first_pos_rank"], z["first_pos_rank"])
    for key in ("ap", "ap_at_r", "r_precision"):
        ours, theirs = per_query[key], z["per_query_" + key]
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        off = np.abs(np.nan_to_num(ours - theirs)) > 1e-9
        # float32 search can swap references closer than float32 resolution (README section 2).
        assert off.sum() <= n_queries // 200, (key, off.sum())
        assert np.nanmax(np.abs(ours - theirs)) < 1e-3


@pytest.mark.parametrize("name", FIXTURES)
def test_recall_without_lone_queries_matches_fixture(name):
    z = load_fixture(name + ".npz")
    metrics = _run_fixture(z, exclude_lone_from_recall=True)
    recall = [metrics[f"recall@{k}"] for k in z["recall_ks"]]
    np.testing.assert_allclose(recall, z["recall_at_k_nonlone"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("search_k", [1, 5])
def test_short_neighbour_list_matches_fixture(search_k):
    # With 1 or 5 listed neighbours nearly every query goes through the exact full-row recount.
    z = load_fixture("metrics_split_n3000_d64_c300.npz")
    metrics, per_query = retrieval_metrics(
        z["reference"],
        z["reference_labels"],
        query_embeddings=z["query"],
        query_labels=z["query_labels"],
        ks=tuple(z["recall_ks"]),
        search_k=search_k,
        return_per_query=True,
    )
    for ours, theirs in PML_KEYS.items():
        assert metrics[ours] == pytest.approx(float(z[theirs]), abs=1e-6), ours
    recall = [metrics[f"recall@{k}"] for k in z["recall_ks"]]
    np.testing.assert_allclose(recall, z["recall_at_k"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(per_query["first_pos_rank"], z["first_pos_rank"])
    np.testing.assert_allclose(per_query["ap_at_r"], z["per_query_ap_at_r"], rtol=0, atol=1e-12, equal_nan=True)


def test_average_precision_helper_matches_fixture_exactly():
    z = load_fixture("metrics_same_n500_d64_c50.npz")
    e = z["embeddings"].astype(np.float64)
    sq = (e * e).sum(1)
    scores = -(sq[:, None] + sq[None, :] - 2 * e @ e.T)
    relevant = z["labels"][:, None] == z["labels"][None, :]
    ap = average_precision(scores, relevant, ignore=np.eye(len(e), dtype=bool))
    np.testing.assert_array_equal(np.isnan(ap), np.isnan(z["per_query_ap"]))
    np.testing.assert_allclose(ap, z["per_query_ap"], rtol=0, atol=1e-12, equal_nan=True)


def _circle(degrees):
    rad = np.deg2rad(np.asarray(degrees, np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], 1).astype(np.float32)


# Same source, by hand (angles in degrees; nearer angle = nearer neighbour):
# 0:A@0, 1:A@8, 2:B@20, 3:A@30, 4:C@90. B and C are lone.
# q0: 1+ 2- 3+ 4- -> AP (1 + 2/3)/2 = 5/6, P@1 1, Rprec 1/2, AP@R 1/2, first 1
# q1: 0+ 2- 3+ 4- -> the same
# q3: 2- 1+ 0+ 4- -> AP (1/2 + 2/3)/2 = 7/12, P@1 0, Rprec 1/2, AP@R (1/2)/2 = 1/4, first 2
HAND_SAME = dict(
    embeddings=_circle([0, 8, 20, 30, 90]),
    labels=np.array([7, 7, 3, 7, 11]),
)


@pytest.mark.parametrize("metric", ["inner_product", "l2"])
@pytest.mark.parametrize("ks, search_k", [((1, 2, 4, 1000), None), ((1,), 1), ((1, 2), 2)])
def test_hand_computed_same_source(metric, ks, search_k):
    # search_k 1 or 2 leaves positives out of the k-NN list: the exact recount path answers.
    metrics, per_query = retrieval_metrics(**HAND_SAME, ks=ks, metric=metric, search_k=search_k, return_per_query=True)
    assert metrics["precision@1"] == pytest.approx(2 / 3)
    assert metrics["r_precision"] == pytest.approx(1 / 2)
    assert metrics["map@r"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 4) / 3)
    assert metrics["map"] == pytest.approx((5 / 6 + 5 / 6 + 7 / 12) / 3)
    assert metrics["mrr"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert metrics["recall@1"] == pytest.approx(2 / 5)
    if len(ks) > 1:
        assert metrics["recall@2"] == pytest.approx(3 / 5)
    if len(ks) > 2:
        assert metrics["recall@4"] == pytest.approx(3 / 5)
        assert metrics["recall@1000"] == pytest.approx(3 / 5)
    assert (metrics["num_queries"], metrics["num_lone_queries"], metrics["num_references"]) == (5, 2, 5)
    np.testing.assert_allclose(per_query["ap"], [5 / 6, 5 / 6, np.nan, 7 / 12, np.nan])
    np.testing.assert_allclose(per_query["ap_at_r"], [1 / 2, 1 / 2, np.nan, 1 / 4, np.nan])
    np.testing.assert_array_equal(per_query["first_pos_rank"], [1, 1, 0, 2, 0])
    np.testing.assert_array_equal(per_query["num_relevant"], [2, 2, 0, 2, 0])
    nonlone = retrieval_metrics(**HAND_SAME, ks=(1,), metric=metric, exclude_lone_from_recall=True)
    assert nonlone["recall@1"] == pytest.approx(2 / 3)


# Query / gallery, by hand. Gallery: g0 A@0, g1 B@45, g2 A@90, g3 B@135.
# qA@40: g1- g0+ g2+ g3- -> AP 7/12, P@1 0, Rprec 1/2, AP@R 1/4, first 2
# qB@140: g3+ g2- g1+ g0- -> AP 5/6, P@1 1, Rprec 1/2, AP@R 1/2, first 1
# qC@0: no reference of class C -> lone
@pytest.mark.parametrize("search_k", [None, 1])
def test_hand_computed_query_gallery(search_k):
    metrics, per_query = retrieval_metrics(
        _circle([0, 45, 90, 135]),
        np.array([1, 2, 1, 2]),
        query_embeddings=_circle([40, 140, 0]),
        query_labels=np.array([1, 2, 3]),
        ks=(1, 2),
        search_k=search_k,
        return_per_query=True,
    )
    assert metrics["precision@1"] == pytest.approx(1 / 2)
    assert metrics["r_precision"] == pytest.approx(1 / 2)
    assert metrics["map@r"] == pytest.approx(3 / 8)
    assert metrics["map"] == pytest.approx(17 / 24)
    assert metrics["mrr"] == pytest.approx(3 / 4)
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@2"] == pytest.approx(2 / 3)
    assert (metrics["num_queries"], metrics["num_lone_queries"], metrics["num_references"]) == (3, 1, 4)
    np.testing.assert_array_equal(per_query["first_pos_rank"], [2, 1, 0])


@pytest.mark.parametrize("metric", ["inner_product", "l2"])
@pytest.mark.parametrize("search_k", [None, 1, 2])
def test_exact_ties_are_broken_by_reference_index(metric, search_k):
    # Rows 1 (class B) and 2 (class A) are identical. For query 0 they tie and the B row comes
    # first (smaller index): ranking B+ ... -> A at rank 2, AP 1/2. For query 2 (tied with 1,
    # its exact duplicate, ranked first) the A row 0 and the C row 3 tie: 0 first -> rank 2.
    e = np.array([[1, 0], [0, 1], [0, 1], [-1, 0]], np.float32)
    metrics, per_query = retrieval_metrics(
        e, [0, 1, 0, 2], ks=(1,), metric=metric, search_k=search_k, return_per_query=True
    )
    np.testing.assert_allclose(per_query["ap"], [0.5, np.nan, 0.5, np.nan])
    np.testing.assert_array_equal(per_query["first_pos_rank"], [2, 0, 2, 0])
    assert metrics["precision@1"] == 0.0


def _clustered(n_classes, per_class, dim, noise, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(rng.permutation(1000)[:n_classes], per_class)
    x = np.repeat(centres, per_class, 0) + noise * rng.normal(size=(len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(len(labels))
    return x[order].astype(np.float32), labels[order]


@pytest.mark.parametrize("search_k", [None, 2])
def test_chunk_size_does_not_change_results(search_k):
    x, y = _clustered(12, 5, 8, 1.0, seed=3)
    y[:2] = [5000, 5001]  # two lone queries
    runs = [
        retrieval_metrics(x, y, ks=(1, 2, 4, 8, 100), chunk_size=c, search_k=search_k, return_per_query=True)
        for c in (1, 7, len(x))
    ]
    for metrics, per_query in runs[1:]:
        assert metrics == runs[0][0]
        for key, value in per_query.items():
            np.testing.assert_array_equal(value, runs[0][1][key])
    assert runs[0][0]["num_lone_queries"] == 2


def test_full_map_agrees_with_dense_average_precision():
    x, y = _clustered(20, 6, 16, 1.5, seed=4)
    q, qy = _clustered(20, 2, 16, 1.5, seed=4)  # same centres, fresh noise
    metrics, per_query = retrieval_metrics(
        x, y, query_embeddings=q, query_labels=qy, ks=(1,), search_k=3, return_per_query=True
    )
    dense = average_precision(q.astype(np.float64) @ x.T.astype(np.float64), qy[:, None] == y[None, :])
    np.testing.assert_allclose(per_query["ap"], dense, rtol=0, atol=1e-12)
    assert metrics["map"] == pytest.approx(float(np.mean(dense)))


def test_all_lone_queries_give_nan_and_zero_recall():
    metrics = retrieval_metrics(_circle([0, 10, 20]), [1, 2, 3], ks=(1,))
    assert metrics["recall@1"] == 0.0
    assert metrics["num_lone_queries"] == 3
    for key in ("precision@1", "r_precision", "map@r", "map", "mrr"):
        assert np.isnan(metrics[key])


def test_returns_python_numbers():
    metrics = retrieval_metrics(**HAND_SAME, ks=(1, 2))
    assert all(type(v) is float for k, v in metrics.items() if not k.startswith("num_"))
    assert all(type(v) is int for k, v in metrics.items() if k.startswith("num_"))


def test_average_precision_ties_options():
    scores = np.array([1.0, 1.0, 0.5])
    # stable: rows 0, 1, 2 -> relevant at 1 and 3: (1 + 2/3) / 2
    assert average_precision(scores, np.array([True, False, True])) == pytest.approx(5 / 6)
    # pessimistic: row 0 is tied with row 1, so counted at rank 2: (1/2 + 2/3) / 2
    assert average_precision(scores, np.array([True, False, True]), ties="pessimistic") == pytest.approx(7 / 12)
    # ignoring row 1 removes it from the ranking: both relevant items at the top.
    ignore = np.array([False, True, False])
    assert average_precision(scores, np.array([True, False, True]), ignore=ignore) == pytest.approx(1.0)
    assert np.isnan(average_precision(scores, np.zeros(3, bool)))


def test_exact_knn_same_source_and_gallery():
    e = _circle([0, 8, 20, 30, 90])
    idx, sim = exact_knn(e, k=2)
    np.testing.assert_array_equal(idx, [[1, 2], [0, 2], [3, 1], [2, 1], [3, 2]])
    assert np.all(np.diff(sim, axis=1) <= 0)
    idx, dist = exact_knn(_circle([40]), e, k=3, metric="l2")
    np.testing.assert_array_equal(idx, [[3, 2, 1]])
    assert np.all(np.diff(dist, axis=1) >= 0)


# --- input validation -------------------------------------------------------------------------

GOOD_X = _circle([0, 8, 20, 30])
GOOD_Y = np.array([1, 1, 2, 2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(embeddings=GOOD_X[:, 0], labels=GOOD_Y), "must be 2-D"),
        (dict(embeddings=np.zeros((0, 2), np.float32), labels=np.zeros(0, int)), "is empty"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y[:3]), "has 3 entries but its embeddings have 4 rows"),
        (dict(embeddings=np.where(np.eye(4, 2) > 0, np.nan, GOOD_X), labels=GOOD_Y), "NaN or inf"),
        (dict(embeddings=np.where(np.eye(4, 2) > 0, np.inf, GOOD_X), labels=GOOD_Y), "NaN or inf"),
        (dict(embeddings=GOOD_X.astype(np.float64) * 1e39, labels=GOOD_Y), "NaN or inf"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y.astype(np.float32)), "integer dtype"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y > 1), "integer dtype"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y[:, None, None]), "must be 1-D"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, ks=(0, 1)), "`ks entries` must be an integer >= 1, got 0"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, ks=(-5,)), "must be an integer >= 1, got -5"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, ks=()), "`ks` is empty"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, metric="cosine"), "`metric` must be one of"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, chunk_size=0), "`chunk_size` must be an integer >= 1"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, search_k=0), "`search_k` must be an integer >= 1"),
        (dict(embeddings=GOOD_X[:1], labels=GOOD_Y[:1]), "at least 2 embeddings"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, query_embeddings=GOOD_X), "needs `query_labels`"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, query_labels=GOOD_Y), "without `query_embeddings`"),
        (
            dict(embeddings=GOOD_X, labels=GOOD_Y, query_embeddings=np.ones((2, 3), np.float32), query_labels=[1, 2]),
            "dimension 3 but embeddings 2",
        ),
        (
            dict(embeddings=GOOD_X, labels=GOOD_Y, query_embeddings=GOOD_X[:2], query_labels=[1, 2, 3]),
            "`query_labels` has 3 entries",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("`", "`")):
        retrieval_metrics(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(embeddings=np.array([["a", "b"]] * 4), labels=GOOD_Y), "must hold real numbers"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, ks=(1.5,)), r"`ks entries` must be an integer, got 1.5 \(float\)"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, ks=(True,)), "must be an integer, got True"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, ks=None), "`ks` must be an int or a sequence"),
        (dict(embeddings=GOOD_X, labels=GOOD_Y, chunk_size="big"), "`chunk_size` must be an integer, got 'big'"),
    ],
)
def test_wrong_types_raise_type_errors(kwargs, message):
    # The package's error policy (keras_roadmap.validation): a wrong type is a TypeError.
    with pytest.raises(TypeError, match=message):
        retrieval_metrics(**kwargs)


def test_labels_of_shape_n_by_1_are_accepted():
    a = retrieval_metrics(GOOD_X, GOOD_Y[:, None], ks=(1,))
    b = retrieval_metrics(GOOD_X, GOOD_Y, ks=(1,))
    assert a == b


def test_exact_knn_and_average_precision_bad_inputs():
    with pytest.raises(ValueError, match="exceeds the 3 references"):
        exact_knn(GOOD_X, k=4)
    with pytest.raises(ValueError, match="dimension 2 but references 3"):
        exact_knn(GOOD_X, np.ones((3, 3)), k=1)
    with pytest.raises(ValueError, match="must be a bool array"):
        average_precision(np.ones(3), np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="has shape"):
        average_precision(np.ones((2, 3)), np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="NaN or inf"):
        average_precision(np.array([1.0, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="`ties` must be one of"):
        average_precision(np.ones(2), np.ones(2, bool), ties="optimistic")


@pytest.mark.parametrize("metric", ["inner_product", "l2"])
def test_exact_knn_lists_ties_in_reference_order(metric):
    e = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [-1, 0]], np.float32)
    idx, _ = exact_knn(e[:1], e, k=4, metric=metric)
    np.testing.assert_array_equal(idx, [[0, 1, 2, 3]])
