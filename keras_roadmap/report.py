"""`report.html`: one self-contained page about a retrieval run, for a person to open in a browser.

Everything is inside the file: plots (matplotlib, Agg) and image thumbnails (Pillow) are PNG data
URIs, the style sheet is inline, and nothing is fetched from anywhere, so the page can be mailed
or archived as is. Needs the `viz` extra (matplotlib, Pillow).
"""

from __future__ import annotations

import base64
import collections
import csv
import html
import io
import math
import pathlib

import numpy as np

from keras_roadmap import atomic
from keras_roadmap.errors import OutputDirError

# Longest side of a thumbnail in the worst-query strips, in pixels: bounds the file size
# (a few kB per tile) whatever the size of the source images.
THUMBNAIL_PX = 96
# Queries shown in the worst-queries section.
DEFAULT_NUM_WORST = 10
# Recall@K columns of the per-category table.
CATEGORY_KS = (1, 2, 4, 8)
# Metric rows of the main table, in this order (others that the dicts hold follow, sorted).
_MAIN_ORDER = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "map", "precision@1", "mrr")
_COUNT_KEYS = ("num_queries", "num_lone_queries", "num_references")
_NAMES = {"map@r": "mAP@R", "r_precision": "R-precision", "map": "mAP", "precision@1": "P@1", "mrr": "MRR"}

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;\
max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .7em;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #999}
.pos{color:#080}.neg{color:#c00}.note{color:#666;font-style:italic}
.strip{display:flex;gap:6px;align-items:flex-start;margin:.6em 0;padding:.4em;background:#fafafa;border-radius:4px}
.tile{margin:0;width:104px;font-size:11px;text-align:center;word-break:break-all}
.tile img,.tile .noimg{width:96px;height:96px;object-fit:contain;border:4px solid #999;background:#fff;display:block}
.tile .noimg{display:flex;align-items:center;justify-content:center;color:#888}
.tile.query img,.tile.query .noimg{border-color:rgb(40,90,200)}
.tile.right img,.tile.right .noimg{border-color:rgb(0,170,0)}\
.tile.wrong img,.tile.wrong .noimg{border-color:rgb(210,0,0)}
.mark{font-weight:bold;font-size:13px}.right .mark{color:rgb(0,150,0)}.wrong .mark{color:rgb(200,0,0)}
.meta{font-size:12px;color:#444;margin:.2em 0}
"""


def write_report(
    path,
    *,
    metrics: dict,
    history_csv=None,
    query: dict | None = None,
    gallery: dict | None = None,
    categories: dict | None = None,
    class_sizes: dict | None = None,
    k: int = 5,
    title: str = "keras-roadmap run report",
    num_worst: int = DEFAULT_NUM_WORST,
    metric: str = "inner_product",
) -> pathlib.Path:
    """Write a self-contained HTML report of a retrieval run (no external resources).

    Sections: the metrics table (trained vs untrained and the gain), training curves from
    `history_csv`, per-category metrics, the class-size histogram, and the `num_worst` queries
    of lowest average precision as strips (the query, then its top-`k` with right/wrong marked).
    A section whose input is missing says so instead.

    Args:
        path: the `.html` file to write (atomically; parent folders are created).
        metrics: `{"trained": {...}, "untrained": {...}}`, each a `retrieval_metrics` dict
            (`untrained` may be absent: no gain column then).
        history_csv: optional `history.csv` of a recipe run (`epoch`, then loss and `val_*`
            columns, one row per epoch).
        query: optional `{"embeddings": (Nq, D) float32, "labels": (Nq,) int, "paths": [str] * Nq}`
            of the trained model (`paths` may be absent or None: strips without images).
        gallery: the same for the references; None (default) evaluates leave-one-out within
            `query`, as `retrieval_metrics` does without `query_embeddings`.
        categories: optional mapping label -> category name, for the per-category table.
        class_sizes: optional mapping label -> number of images (default: counted from the
            labels of the evaluation set, and said so).
        k: neighbours shown per worst query (default 5; fewer when fewer references exist).
        title: page title.
        num_worst: queries shown in the worst-queries section (default 10).
        metric: "inner_product" (default) or "l2", for the neighbour search.

    Returns:
        the path written.

    Raises:
        ValueError / TypeError: malformed `metrics`, `query` or `gallery` (shapes, labels).
        OutputDirError: `path` cannot be written (e.g. a parent is a regular file).
    """
    from keras_roadmap.evaluation import checks

    k = checks.positive_int(k, "k")
    num_worst = checks.positive_int(num_worst, "num_worst")
    metric = checks.as_metric(metric)
    trained, untrained = _check_metrics(metrics)
    evaluation = _Evaluation.build(query, gallery, metric)

    body = [f"<h1>{_e(title)}</h1>"]
    if evaluation is not None:
        body.append(f"<p class='meta'>{evaluation.describe()}</p>")
    body += _section("Retrieval metrics", _metrics_table(trained, untrained), "metrics")
    body += _section("Training curves", _curves(history_csv), "curves")
    body += _section("Per-category metrics", _per_category(evaluation, categories), "categories")
    body += _section("Class sizes", _class_sizes(class_sizes, evaluation), "class-sizes")
    body += _section("Worst queries", _worst_queries(evaluation, k, num_worst), "worst")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    path = pathlib.Path(path)
    try:
        atomic.write_text(path, page)
    except (FileExistsError, NotADirectoryError) as err:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise OutputDirError(f"report {path}: {blocker} is a file, not a folder; choose another path.") from err
    return path


# ---------------------------------------------------------------------------------------------
# inputs


def _check_metrics(metrics):
    if not isinstance(metrics, dict) or not isinstance(metrics.get("trained"), dict):
        raise ValueError('`metrics` must be {"trained": {...}, "untrained": {...}} with retrieval_metrics dicts.')
    untrained = metrics.get("untrained")
    if untrained is not None and not isinstance(untrained, dict):
        raise ValueError('`metrics["untrained"]` must be a retrieval_metrics dict (or absent).')
    return metrics["trained"], untrained


class _Evaluation:
    """Query/gallery embeddings, labels and paths, with the per-query numbers of our evaluator."""

    def __init__(self, q, q_labels, q_paths, g, g_labels, g_paths, metric):
        from keras_roadmap.evaluation.metrics import retrieval_metrics

        self.q, self.q_labels, self.q_paths = q, q_labels, q_paths
        self.g, self.g_labels, self.g_paths = g, g_labels, g_paths
        self.same_source = g is None
        self.metric = metric
        if self.same_source:
            _, self.per_query = retrieval_metrics(
                q, q_labels, metric=metric, ks=CATEGORY_KS, return_per_query=True, progress=False
            )
        else:
            _, self.per_query = retrieval_metrics(
                g,
                g_labels,
                query_embeddings=q,
                query_labels=q_labels,
                metric=metric,
                ks=CATEGORY_KS,
                return_per_query=True,
                progress=False,
            )

    @classmethod
    def build(cls, query, gallery, metric):
        if query is None:
            if gallery is not None:
                raise ValueError("`gallery` was given without `query`; pass the query set too.")
            return None
        q, q_labels, q_paths = _unpack(query, "query")
        if gallery is None:
            return cls(q, q_labels, q_paths, None, None, None, metric)
        g, g_labels, g_paths = _unpack(gallery, "gallery")
        if g.shape[1] != q.shape[1]:
            raise ValueError(
                f"query embeddings have dimension {q.shape[1]} but gallery {g.shape[1]}; "
                "they must come from the same model."
            )
        return cls(q, q_labels, q_paths, g, g_labels, g_paths, metric)

    @property
    def references(self):
        return (self.q, self.q_labels, self.q_paths) if self.same_source else (self.g, self.g_labels, self.g_paths)

    def describe(self) -> str:
        if self.same_source:
            return f"Evaluation set: {len(self.q_labels)} images, each a query against all the others (leave-one-out)."
        return f"Evaluation set: {len(self.q_labels)} queries against a gallery of {len(self.g_labels)} images."


def _unpack(data, name):
    from keras_roadmap.evaluation import checks

    if not isinstance(data, dict) or "embeddings" not in data or "labels" not in data:
        raise ValueError(f'`{name}` must be a dict {{"embeddings": (N, D), "labels": (N,), "paths": [...]}}.')
    emb = checks.as_embeddings(data["embeddings"], f"{name}['embeddings']")
    labels = checks.as_labels(data["labels"], emb.shape[0], f"{name}['labels']")
    paths = data.get("paths")
    if paths is not None:
        paths = [str(p) for p in paths]
        if len(paths) != emb.shape[0]:
            raise ValueError(
                f"{name}['paths'] has {len(paths)} entries but {name}['embeddings'] {emb.shape[0]} rows; "
                "they must match."
            )
    return emb, labels, paths


# ---------------------------------------------------------------------------------------------
# sections


def _section(heading, content, anchor):
    return [f"<section id='{anchor}'><h2>{_e(heading)}</h2>", content, "</section>"]


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _note(text) -> str:
    return f"<p class='note'>{_e(text)}</p>"


def _number(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        value = float(value)
    except (TypeError, ValueError):
        return _e(value)
    return "n/a" if not math.isfinite(value) else f"{value:.4f}"


def _cell(value, css: str = "") -> str:
    attr = f" class='{css}'" if css else ""
    data = "" if value is None else f" data-value='{_e(repr(_plain(value)))}'"
    return f"<td{attr}{data}>{'—' if value is None else _number(value)}</td>"


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def _metric_name(key) -> str:
    if key.startswith("recall@"):
        return "R@" + key.split("@", 1)[1]
    return _NAMES.get(key, key)


def _metrics_table(trained, untrained):
    keys = [key for key in _MAIN_ORDER if key in trained]
    keys += sorted(key for key in trained if key not in keys and key not in _COUNT_KEYS)
    keys += [key for key in _COUNT_KEYS if key in trained]
    if untrained:
        keys += sorted(key for key in untrained if key not in keys)
    if not keys:
        return _note("The metrics dict is empty.")
    head = (
        "<tr><th>metric</th><th>trained</th>"
        + ("<th>untrained</th><th>gain</th>" if untrained is not None else "")
        + "</tr>"
    )
    rows = []
    for key in keys:
        cells = [f"<td>{_e(_metric_name(key))}</td>", _cell(trained.get(key))]
        if untrained is not None:
            cells.append(_cell(untrained.get(key)))
            gain = None
            if key not in _COUNT_KEYS and _is_number(trained.get(key)) and _is_number(untrained.get(key)):
                gain = float(trained[key]) - float(untrained[key])
            css = "" if gain is None or not math.isfinite(gain) or gain == 0 else ("pos" if gain > 0 else "neg")
            cells.append(_cell(gain, css) if gain is not None else "<td>—</td>")
        rows.append(f"<tr data-key='{_e(key)}'>" + "".join(cells) + "</tr>")
    legend = "" if untrained is not None else _note("No untrained metrics were given, so no gain is shown.")
    explain = _note(
        "R@K: share of queries whose nearest image of the same class is among the first K; mAP@R and R-precision "
        "over the R images of the query's class; mAP over the whole ranking. Gain = trained − untrained."
    )
    return f"<table class='metrics'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>{legend}{explain}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _read_history(path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = [f for f in (reader.fieldnames or []) if f != "epoch"]
        rows = list(reader)
    epochs, series = [], {f: [] for f in fields}
    for i, row in enumerate(rows):
        try:
            epochs.append(int(row.get("epoch") or i))
        except ValueError:
            epochs.append(i)
        for f in fields:
            try:
                series[f].append(float(row.get(f)))
            except (TypeError, ValueError):
                series[f].append(float("nan"))
    series = {f: v for f, v in series.items() if np.isfinite(v).any()}
    return np.asarray(epochs), series


def _curves(history_csv):
    if history_csv is None:
        return _note("No training history (history.csv) was given.")
    path = pathlib.Path(history_csv)
    if not path.is_file():
        return _note(f"No training history: {path} does not exist.")
    try:
        epochs, series = _read_history(path)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return _note(f"The training history {path} cannot be read ({err}).")
    if not len(epochs) or not series:
        return _note(f"The training history {path} holds no epoch with numbers.")
    groups = {
        "loss": {f: v for f, v in series.items() if "loss" in f},
        "validation metrics": {f: v for f, v in series.items() if "loss" not in f and f not in ("lr", "learning_rate")},
        "learning rate": {f: v for f, v in series.items() if f in ("lr", "learning_rate")},
    }
    groups = {name: group for name, group in groups.items() if group}
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=(4.2 * len(groups), 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    for i, (name, group) in enumerate(groups.items(), start=1):
        axes = figure.add_subplot(1, len(groups), i)
        for field, values in group.items():
            axes.plot(epochs, values, marker="o" if len(epochs) < 30 else None, markersize=3, label=field)
        axes.set_xlabel("epoch")
        axes.set_title(name)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    return _img(_png(figure), "training curves", "curves") + _note(f"{len(epochs)} epochs from {path.name}.")


def _per_category(evaluation, categories):
    if categories is None:
        return _note("No categories were given (a flat folder or a CSV without a category column).")
    if evaluation is None:
        return _note("No query embeddings were given, so metrics per category cannot be computed.")
    from keras_roadmap.evaluation.metrics import summarise_per_query

    lookup = {_key(label): category for label, category in dict(categories).items()}
    names = np.asarray([str(lookup.get(_key(label), "(no category)")) for label in evaluation.q_labels], dtype=object)
    head = "<tr><th>category</th><th>queries</th><th>classes</th>" + "".join(f"<th>R@{kk}</th>" for kk in CATEGORY_KS)
    head += "<th>mAP@R</th><th>R-precision</th><th>mAP</th></tr>"
    rows = []
    for name in sorted(set(names)):
        mask = names == name
        summary = summarise_per_query(evaluation.per_query, CATEGORY_KS, rows=mask)
        cells = [
            f"<td>{_e(name)}</td>",
            _cell(summary["num_queries"]),
            _cell(int(np.unique(evaluation.q_labels[mask]).size)),
        ]
        cells += [_cell(summary[f"recall@{kk}"]) for kk in CATEGORY_KS]
        cells += [_cell(summary[key]) for key in ("map@r", "r_precision", "map")]
        rows.append(f"<tr data-category='{_e(name)}'>" + "".join(cells) + "</tr>")
    return f"<table class='categories'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>" + _note(
        "Trained model; each category's queries against the whole gallery (the same rankings as the table above)."
    )


def _key(label):
    try:
        return int(label)
    except (TypeError, ValueError):
        return str(label)


def _class_sizes(class_sizes, evaluation):
    source = "as given"
    if class_sizes is None:
        if evaluation is None:
            return _note("No class sizes were given.")
        labels = (
            evaluation.q_labels
            if evaluation.same_source
            else np.concatenate([evaluation.q_labels, evaluation.g_labels])
        )
        class_sizes = collections.Counter(int(label) for label in labels)
        source = "counted from the evaluation set's labels"
    sizes = np.asarray([int(v) for v in dict(class_sizes).values()], dtype=np.int64)
    if sizes.size == 0:
        return _note("The class-size mapping is empty.")
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=(6.0, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    top = int(sizes.max())
    bins = np.arange(0.5, top + 1.5) if top <= 60 else 40
    axes.hist(sizes, bins=bins, color="#4a78c8")
    axes.set_xlabel("images per class")
    axes.set_ylabel("classes")
    axes.grid(True, alpha=0.3, axis="y")
    singles = int((sizes == 1).sum())
    summary = (
        f"<p class='meta' data-classes='{sizes.size}' data-images='{int(sizes.sum())}'>{sizes.size} classes, "
        f"{int(sizes.sum())} images ({_e(source)}); images per class: min {int(sizes.min())}, median "
        f"{float(np.median(sizes)):g}, max {top}; {singles} classes with a single image"
        f"{' (they cannot be queries: no other image of their class to find)' if singles else ''}.</p>"
    )
    return summary + _img(_png(figure), "histogram of class sizes", "class-sizes")


def _worst_queries(evaluation, k, num_worst):
    if evaluation is None:
        return _note("No query embeddings were given, so the worst queries cannot be shown.")
    ap = evaluation.per_query["ap"]
    valid = np.flatnonzero(np.isfinite(ap))
    lone = len(ap) - valid.size
    if valid.size == 0:
        return _note(
            "Every query is alone in its class (no other image to find), so no query has an average precision."
        )
    refs, ref_labels, ref_paths = evaluation.references
    k = min(k, refs.shape[0] - int(evaluation.same_source))
    worst = valid[np.argsort(ap[valid], kind="stable")[:num_worst]]
    neighbours, scores = _top_k(
        evaluation.q[worst], refs, worst if evaluation.same_source else None, k, evaluation.metric
    )
    notes = []
    if evaluation.q_paths is None or ref_paths is None:
        notes.append(_note("No image paths were given: the strips show labels only."))
    if lone:
        notes.append(
            _note(f"{lone} queries are alone in their class and have no average precision; they are not ranked here.")
        )
    thumbs: dict = {}
    strips = []
    for row, qi in enumerate(worst):
        q_label = evaluation.q_labels[qi]
        tiles = [_tile(_path(evaluation.q_paths, qi), thumbs, "query", "query", f"class {q_label}")]
        for rank, (j, score) in enumerate(zip(neighbours[row], scores[row], strict=True), start=1):
            right = ref_labels[j] == q_label
            mark = "✓" if right else "✗"
            tiles.append(
                _tile(
                    _path(ref_paths, j),
                    thumbs,
                    "right" if right else "wrong",
                    f"#{rank} {mark} {float(score):.3f}",
                    f"class {ref_labels[j]}",
                )
            )
        info = (
            f"<p class='meta'>query {int(qi)}{_path_text(evaluation.q_paths, qi)} · class {_e(q_label)} · "
            f"AP {ap[qi]:.4f} · {int(evaluation.per_query['num_relevant'][qi])} other images of its class · "
            f"nearest of its class at rank {int(evaluation.per_query['first_pos_rank'][qi])}</p>"
        )
        strips.append(
            f"<div class='strip-block' data-query='{int(qi)}' data-ap='{float(ap[qi])!r}'>{info}"
            f"<div class='strip'>{''.join(tiles)}</div></div>"
        )
    intro = _note(
        f"The {len(worst)} queries of lowest average precision (trained model), each followed by its top {k}: "
        "green ✓ = same class as the query, red ✗ = another class; the number is the similarity score."
    )
    return intro + "".join(notes) + "".join(strips)


def _top_k(queries, references, own_rows, k, metric):
    """Top-`k` references of each query with `exact_knn`; `own_rows` (leave-one-out mode): the
    reference row that is each query itself, left out of its list as `retrieval_metrics` does."""
    from keras_roadmap.evaluation.knn import exact_knn

    if own_rows is None:
        return exact_knn(queries, references, k, metric=metric)
    found, scores = exact_knn(queries, references, k + 1, metric=metric)
    drop = found == np.asarray(own_rows)[:, None]
    drop[~drop.any(axis=1), -1] = True  # the query is not in its list (duplicates): drop the last
    return found[~drop].reshape(len(found), k), scores[~drop].reshape(len(found), k)


def _path(paths, i):
    return None if paths is None else paths[int(i)]


def _path_text(paths, i):
    return "" if paths is None else f" ({_e(pathlib.Path(paths[int(i)]).name)})"


def _tile(path, cache, css, head, label):
    if path is None:
        picture = "<div class='noimg'>no image</div>"
    else:
        if path not in cache:
            cache[path] = _thumbnail(path)
        uri, problem = cache[path]
        picture = (
            f"<img src='{uri}' alt='{_e(pathlib.Path(path).name)}' title='{_e(path)}'>"
            if uri
            else f"<div class='noimg' title='{_e(problem)}'>unreadable</div>"
        )
    return (
        f"<figure class='tile {css}'>{picture}<figcaption>"
        f"<div class='mark'>{_e(head)}</div>{_e(label)}</figcaption></figure>"
    )


def _thumbnail(path):
    """`(data URI, None)` of a downscaled PNG of the image at `path`, or `(None, reason)`."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # JPEG: decode at reduced size
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                image = Image.new("RGB", rgba.size, (255, 255, 255))
                image.paste(rgba, mask=rgba.getchannel("A"))
            else:
                image = image.convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
    except Exception as err:  # any unreadable file becomes a placeholder tile, never a crash
        return None, f"{path}: {type(err).__name__}: {err}"
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), None


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("write_report needs matplotlib and Pillow: pip install 'keras-roadmap[viz]'") from err
    return Figure, FigureCanvasAgg


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri, alt, css):
    return f"<img class='plot {css}' src='{uri}' alt='{_e(alt)}' style='max-width:100%'>"
