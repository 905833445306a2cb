"""build_index flat / ivf / hnsw: settings stored with the index, recall, and retrieval_metrics(index=)."""

import numpy as np
import pytest

from keras_roadmap.evaluation import retrieval_metrics
from keras_roadmap.indexing import build_index, index_params, load_index, save_index


def clustered(n=2000, dim=16, classes=40, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim))
    x = centres[y] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


@pytest.mark.parametrize(
    "kind, extra", [("flat", {}), ("ivf", {"nlist": 16, "nprobe": 4}), ("hnsw", {"hnsw_m": 8, "ef_search": 32})]
)
def test_settings_survive_save_and_load_and_search_agrees(tmp_path, kind, extra):
    x, y = clustered()
    index = build_index(x, kind, **extra)
    params = index_params(index)
    assert params["index_type"] == kind and params["ntotal"] == len(x) and params["metric"] == "inner_product"
    for key, value in extra.items():
        assert params[key] == value
    path = str(tmp_path / "gallery.faiss")
    sidecar = save_index(index, path)
    loaded = load_index(path)
    assert index_params(loaded) == {**params, **({"train_size": params["train_size"]} if kind == "ivf" else {})}
    _, exact = build_index(x).search(x[:200], 10)
    _, got = loaded.search(x[:200], 10)
    recall10 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact, strict=False)])
    assert recall10 == 1.0 if kind == "flat" else recall10 > 0.8
    assert sidecar.endswith(".json")


def test_retrieval_metrics_with_an_index_measures_the_approximation():
    x, y = clustered()
    exact = retrieval_metrics(x, y, ks=(1, 10))
    flat = retrieval_metrics(x, y, ks=(1, 10), index=build_index(x), search_k=2000)
    for key in ("recall@1", "recall@10", "map@r", "map", "mrr"):
        assert flat[key] == pytest.approx(exact[key], abs=1e-9)
    coarse = retrieval_metrics(x, y, ks=(1, 10), index=build_index(x, "ivf", nlist=32, nprobe=1))
    assert coarse["map"] < exact["map"]  # positives outside the lists count as missed
    assert abs(coarse["recall@1"] - exact["recall@1"]) < 0.1


def test_bad_arguments():
    x, _ = clustered(n=100)
    with pytest.raises(ValueError, match="`index_type` must be one of"):
        build_index(x, "lsh")
    with pytest.raises(ValueError, match="IVF cells need at least"):
        build_index(x, "ivf", nlist=500)
    with pytest.raises(ValueError, match="holds 100 vectors"):
        retrieval_metrics(np.vstack([x, x]), np.arange(200) % 5, index=build_index(x))
