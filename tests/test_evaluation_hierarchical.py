"""hierarchical_retrieval_metrics (H-AP, ASI, NDCG) against the official HAPPIER metrics
(``tests/data/official_happier/metrics_*.npz``, written by ``make_fixtures.py`` there)."""

import pathlib

import numpy as np
import pytest

from keras_roadmap.evaluation.hierarchical import (
    hierarchical_retrieval_metrics,  # no Keras import
    ranking_metrics,
)

DATA = pathlib.Path(__file__).parent / "data" / "official_happier"
CASES = sorted(p.stem for p in DATA.glob("metrics_*.npz"))


def load(name):
    return dict(np.load(DATA / f"{name}.npz"))


@pytest.mark.parametrize("name", CASES)
def test_matches_official(name):
    z = load(name)
    results, per_query = hierarchical_retrieval_metrics(z["embeddings"], z["labels"], return_per_query=True)
    lone = np.isnan(z["asi"])  # no item of level >= 1: the official code gives NaN
    assert lone.any() and (z["labels"] < 0).any()
    np.testing.assert_array_equal(np.isnan(per_query["hap"]), lone)
    for ours, official in (("asi", "asi"), ("ndcg", "ndcg"), ("hap", "hap_once")):
        np.testing.assert_allclose(per_query[ours][~lone], z[official][~lone], atol=1e-6)
    # where no two levels share a relevance value, the official H-AP itself
    same = ~z["collision"] & ~lone
    np.testing.assert_allclose(per_query["hap"][same], z["hap"][same], atol=1e-6)
    for key, values in (("H-AP", per_query["hap"]), ("ASI", per_query["asi"]), ("NDCG", per_query["ndcg"])):
        np.testing.assert_allclose(results[key], np.mean(values[~lone]), atol=1e-12)
    assert results["num_lone_queries"] == lone.sum()


def test_official_hap_counts_equal_relevance_levels_twice():
    z = load("metrics_tree3_n40")
    collide = z["collision"] & ~np.isnan(z["asi"])
    assert collide.any()
    assert np.all(z["hap"][collide] > z["hap_once"][collide] + 1e-9)  # the difference we list


def test_perfect_ranking_scores_one_and_ties_follow_index_order():
    levels = np.array([[2, 2, 1, 1, 0, 0]])
    relevance = np.array([[0.0, 0.5, 1.0]])
    perfect = ranking_metrics(levels, relevance)
    for key in ("hap", "asi", "ndcg"):
        np.testing.assert_allclose(perfect[key], 1.0)
    worst = ranking_metrics(levels[:, ::-1].copy(), relevance)
    assert all(worst[key][0] < 0.7 for key in ("hap", "asi", "ndcg"))
    # equal scores: the lower gallery index ranks first (the stable policy of retrieval_metrics)
    query = np.array([[1.0, 0.0]])
    gallery = np.array([[1.0, 0.0], [1.0, 0.0]])
    first_relevant = hierarchical_retrieval_metrics(query, [[0, 0]], gallery, [[0, 0], [1, 1]])
    second_relevant = hierarchical_retrieval_metrics(query, [[0, 0]], gallery, [[1, 1], [0, 0]])
    assert first_relevant["H-AP"] == 1.0 and second_relevant["H-AP"] == 0.5


def test_gallery_mode_blocks_and_errors():
    z = load("metrics_tree2_n30")
    emb, labels = z["embeddings"], z["labels"]
    full = hierarchical_retrieval_metrics(emb[:10], labels[:10], emb[10:], labels[10:])
    blocked = hierarchical_retrieval_metrics(emb[:10], labels[:10], emb[10:], labels[10:], block_bytes=1)
    assert full == blocked and full["num_references"] == 20
    with pytest.raises(ValueError, match="query_labels"):
        hierarchical_retrieval_metrics(emb, labels[:5])
    with pytest.raises(ValueError, match="levels"):
        hierarchical_retrieval_metrics(emb[:10], labels[:10], emb[10:], labels[10:, :1])
    with pytest.raises(ValueError, match="alpha"):
        hierarchical_retrieval_metrics(emb, labels, alpha=0)
