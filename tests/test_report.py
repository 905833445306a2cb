"""`keras_roadmap.write_report`: one self-contained HTML page, checked by parsing it."""

import csv
import html.parser
import re

import numpy as np
import pytest
from PIL import Image

from keras_roadmap import write_report
from keras_roadmap.errors import OutputDirError
from keras_roadmap.evaluation import exact_knn, retrieval_metrics

COLOURS = [(220, 30, 30), (30, 160, 30), (30, 30, 220), (200, 200, 30), (160, 30, 160)]


class Page(html.parser.HTMLParser):
    """Collects what the assertions need: metric cells, strips and their tiles, every URL."""

    def __init__(self):
        super().__init__()
        self.stack, self.urls, self.images = [], [], []
        self.metric_cells = {}  # key -> [data-value of each cell]
        self.category_rows = {}
        self.strips = []  # [{"query": int, "ap": float, "tiles": [class of each tile]}]
        self._row, self._name_cell = None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href", "srcset", "action", "data"):
            if name in attrs and tag != "tr":
                self.urls.append(attrs[name])
        if tag == "link" or tag == "script":
            self.urls.append(attrs.get("href") or attrs.get("src") or tag)
        if tag == "img":
            self.images.append(attrs["src"])
        self._name_cell = self._name_cell if tag != "tr" else True
        if tag == "tr" and "data-key" in attrs:
            self._row = self.metric_cells.setdefault(attrs["data-key"], [])
        elif tag == "tr" and "data-category" in attrs:
            self._row = self.category_rows.setdefault(attrs["data-category"], [])
        elif tag == "tr":
            self._row = None
        if tag == "td" and self._row is not None:
            if self._name_cell:  # the first cell names the row
                self._name_cell = False
            else:
                self._row.append(attrs.get("data-value"))
        if tag == "div" and "data-query" in attrs:
            self.strips.append({"query": int(attrs["data-query"]), "ap": float(attrs["data-ap"]), "tiles": []})
        if tag == "figure":
            self.strips[-1]["tiles"].append(attrs["class"].split()[1])

    def handle_data(self, data):
        # A CSS url(...) or an @import would load something from outside.
        self.urls += re.findall(r"url\(([^)]*)\)|@import\s+(\S+)", data)


def val(text):
    """A cell's exact value (its data-value attribute: the repr of the number)."""
    return float(text)


def parse(path):
    page = Page()
    text = path.read_text(encoding="utf-8")
    page.feed(text)
    return page, text


def make_set(tmp_path, n_classes=5, per_class=4, dim=8, seed=0, with_paths=True):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = rng.normal(size=(n_classes, dim))
    emb = centres[labels] + 0.9 * rng.normal(size=(len(labels), dim))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    paths = None
    if with_paths:
        paths = []
        for i, label in enumerate(labels):
            path = tmp_path / f"img {i}é.png"  # a space and a non-ASCII letter in the name
            Image.new("RGB", (300, 200), COLOURS[label % len(COLOURS)]).save(path)
            paths.append(str(path))
    return {"embeddings": emb, "labels": labels, "paths": paths}


def history(path, epochs=3):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "loss", "val_map@r", "val_recall@1"])
        for e in range(epochs):
            writer.writerow([e, 1.0 - 0.1 * e, 0.2 + 0.1 * e, "NA" if e == 0 else 0.3 + 0.1 * e])
    return path


def test_report_values_strips_and_self_contained(tmp_path):
    query = make_set(tmp_path)
    trained = retrieval_metrics(query["embeddings"], query["labels"], ks=(1, 2, 4, 8))
    rng = np.random.default_rng(1)
    random = rng.normal(size=query["embeddings"].shape).astype(np.float32)
    untrained = retrieval_metrics(random, query["labels"], ks=(1, 2, 4, 8))
    categories = {0: "shoes", 1: "shoes", 2: "bags", 3: "bags", 4: "hats"}
    out = write_report(
        tmp_path / "run" / "report.html",
        metrics={"trained": trained, "untrained": untrained},
        history_csv=history(tmp_path / "history.csv"),
        query=query,
        categories=categories,
        class_sizes={c: 4 for c in range(5)},
        k=3,
        num_worst=4,
    )
    page, text = parse(out)

    # Metrics table: each row holds trained, untrained and their difference, exactly.
    assert set(page.metric_cells) == set(trained)
    for key, cells in page.metric_cells.items():
        assert val(cells[0]) == trained[key] and val(cells[1]) == untrained[key]
        if key.startswith("num_"):
            assert cells[2] is None
        else:
            assert val(cells[2]) == pytest.approx(trained[key] - untrained[key], abs=1e-12)

    # Per-category rows: our evaluator on each category's queries (leave-one-out over all).
    _, per_query = retrieval_metrics(query["embeddings"], query["labels"], ks=(1, 2, 4, 8), return_per_query=True)
    assert sorted(page.category_rows) == ["bags", "hats", "shoes"]
    hats = query["labels"] == 4
    assert val(page.category_rows["hats"][0]) == 4
    assert val(page.category_rows["hats"][-1]) == pytest.approx(np.nanmean(per_query["ap"][hats]))

    # Worst queries: the 4 of lowest AP, in that order, each with the query and its top 3 marked
    # right/wrong exactly as the labels of its leave-one-out neighbours say.
    worst = np.argsort(per_query["ap"], kind="stable")[:4]
    assert [s["query"] for s in page.strips] == list(worst)
    found, _ = exact_knn(query["embeddings"], None, 3)
    for strip in page.strips:
        qi = strip["query"]
        assert strip["ap"] == pytest.approx(per_query["ap"][qi])
        expected = ["right" if query["labels"][j] == query["labels"][qi] else "wrong" for j in found[qi]]
        assert strip["tiles"] == ["query", *expected]
    assert {"right", "wrong"} <= {t for s in page.strips for t in s["tiles"]}

    # Self-contained: 2 plots (curves, histogram) + 16 thumbnails, all PNG data URIs, small; no URL anywhere.
    assert len(page.images) == 2 + 4 * 4
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert not [u for u in page.urls if not str(u).startswith("data:")]
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    thumb = page.images[-1]
    import base64
    import io

    with Image.open(io.BytesIO(base64.b64decode(thumb.split(",", 1)[1]))) as image:
        assert max(image.size) == 96  # 300 x 200 downscaled to the bounded thumbnail size
    assert out.stat().st_size < 200_000
    assert not list(out.parent.glob(".partial-*"))


def test_report_query_gallery_mode_matches_evaluator(tmp_path):
    data = make_set(tmp_path, n_classes=4, per_class=5, with_paths=False)
    q_rows = np.arange(0, 20, 5)  # one query per class, the rest is the gallery
    g_rows = np.setdiff1d(np.arange(20), q_rows)
    query = {"embeddings": data["embeddings"][q_rows], "labels": data["labels"][q_rows]}
    gallery = {"embeddings": data["embeddings"][g_rows], "labels": data["labels"][g_rows]}
    metrics = retrieval_metrics(
        gallery["embeddings"],
        gallery["labels"],
        query_embeddings=query["embeddings"],
        query_labels=query["labels"],
        ks=(1, 2, 4, 8),
    )
    out = write_report(
        tmp_path / "r.html",
        metrics={"trained": metrics},
        query=query,
        gallery=gallery,
        categories={0: "a", 1: "a", 2: "b", 3: "b"},
        k=4,
    )
    page, text = parse(out)
    # Category "a" equals our evaluator run on only those queries against the same gallery.
    in_a = query["labels"] < 2
    direct = retrieval_metrics(
        gallery["embeddings"],
        gallery["labels"],
        query_embeddings=query["embeddings"][in_a],
        query_labels=query["labels"][in_a],
        ks=(1, 2, 4, 8),
    )
    cells = [val(c) for c in page.category_rows["a"]]
    assert cells == [
        2,
        2,
        *(direct[f"recall@{k}"] for k in (1, 2, 4, 8)),
        direct["map@r"],
        direct["r_precision"],
        direct["map"],
    ]
    found, _ = exact_knn(query["embeddings"], gallery["embeddings"], 4)
    for strip in page.strips:
        qi = strip["query"]
        assert strip["tiles"] == [
            "query",
            *("right" if gallery["labels"][j] == query["labels"][qi] else "wrong" for j in found[qi]),
        ]
    assert len(page.strips) == 4
    assert "No image paths were given" in text and "no untrained metrics" in text.lower()
    # Class sizes counted from the labels when not given: 4 classes, 20 images.
    assert "data-classes='4' data-images='20'" in text and "counted from the evaluation set" in text


def test_report_missing_pieces_say_so(tmp_path):
    trained = {"recall@1": 0.5, "map@r": float("nan"), "num_queries": 3}
    out = write_report(
        tmp_path / "r.html",
        metrics={"trained": trained, "untrained": {"recall@1": 0.25}},
        history_csv=tmp_path / "absent.csv",
    )
    page, text = parse(out)
    assert "does not exist" in text and "No categories were given" in text
    assert "No class sizes were given" in text and "worst queries cannot be shown" in text
    assert page.images == [] and page.strips == []
    assert val(page.metric_cells["recall@1"][2]) == 0.25
    assert "n/a" in text  # NaN shown as n/a, not "nan"
    # Unreadable image -> a placeholder tile, not a crash; a broken history -> a note.
    query = make_set(tmp_path, n_classes=2, per_class=2)
    open(query["paths"][1], "wb").write(b"not an image")
    (tmp_path / "h.csv").write_text("epoch,loss\n")
    out = write_report(tmp_path / "r2.html", metrics={"trained": trained}, query=query, history_csv=tmp_path / "h.csv")
    page, text = parse(out)
    assert "unreadable" in text and "holds no epoch" in text
    # A parent of the output that is a file: one clear error naming it.
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(OutputDirError, match="blocker is a file"):
        write_report(tmp_path / "blocker" / "r.html", metrics={"trained": trained})
    with pytest.raises(ValueError, match="trained"):
        write_report(tmp_path / "r3.html", metrics={"recall@1": 0.5})


def test_docs_example_runs_as_written(tmp_path, monkeypatch):
    import pathlib

    doc = (pathlib.Path(__file__).parent.parent / "docs" / "report.md").read_text(encoding="utf-8")
    (snippet,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "docs/report.md", "exec"), {})
    page, text = parse(tmp_path / "report.html")
    assert len(page.strips) == 10 and sorted(page.category_rows) == ["round", "square"]
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
