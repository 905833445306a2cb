"""Pictures of retrieval results: a query / top-k grid and Recall@K curves (extra `viz`)."""

import re

import numpy as np

from keras_roadmap.evaluation import checks
from keras_roadmap.evaluation.knn import exact_knn

QUERY_COLOUR = (40, 90, 200)
CORRECT_COLOUR = (0, 170, 0)
WRONG_COLOUR = (210, 0, 0)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (20, 20, 20)
# Caption under each tile (two lines: rank/score, class) and legend above the grid, in pixels.
FONT_SIZE = 12
CAPTION_HEIGHT = 2 * (FONT_SIZE + 3) + 2
HEADER_HEIGHT = FONT_SIZE + 14


def _import_pil():
    try:
        from PIL import Image, ImageDraw
    except ImportError as err:
        raise ImportError("save_retrieval_grid needs Pillow: pip install 'keras-roadmap[viz]'") from err
    return Image, ImageDraw


def _import_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("save_recall_curve needs matplotlib: pip install 'keras-roadmap[viz]'") from err
    return Figure, FigureCanvasAgg


def grid_cell_origin(
    row: int, col: int, tile_size: int, border: int, gap: int, annotate: bool = False
) -> tuple[int, int]:
    """(x, y) pixel of the top-left corner of grid cell (row, col), border included.

    A cell is `tile_size + 2 * border` pixels square; cells are separated (and surrounded) by
    `gap` pixels of white. Column 0 holds the query, columns 1..k its neighbours. With
    `annotate`, a legend of `HEADER_HEIGHT` pixels sits above the grid and a caption of
    `CAPTION_HEIGHT` pixels under each cell.
    """
    step_x = tile_size + 2 * border + gap
    step_y = step_x + (CAPTION_HEIGHT if annotate else 0)
    return gap + col * step_x, gap + (HEADER_HEIGHT if annotate else 0) + row * step_y


def _font(size: int):
    """DejaVu Sans (matplotlib's, which covers Latin, Greek and Cyrillic), else Pillow's default."""
    from PIL import ImageFont

    try:
        import os

        import matplotlib

        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis so that it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _class_text(label, class_names) -> str:
    if class_names is None:
        return f"class {label}"
    return str(class_names[int(label)])


def _draw_legend(draw, font, x, y):
    """Coloured squares with what each border colour means; returns the right end in pixels."""
    box = FONT_SIZE
    for colour, text in (
        (QUERY_COLOUR, "query"),
        (CORRECT_COLOUR, "same class as the query"),
        (WRONG_COLOUR, "other class"),
        (None, "#rank  cosine score"),
    ):
        if colour is not None:
            draw.rectangle([x, y, x + box - 1, y + box - 1], fill=colour)
            x += box + 4
        draw.text((x, y - 1), text, fill=TEXT_COLOUR, font=font)
        x += int(draw.textlength(text, font=font)) + 14
    return x


def save_retrieval_grid(
    path,
    query_images,
    query_labels,
    gallery_images,
    gallery_labels,
    *,
    neighbours=None,
    query_embeddings=None,
    gallery_embeddings=None,
    k: int = 5,
    exclude=None,
    metric: str = "inner_product",
    tile_size: int = 96,
    border: int = 4,
    gap: int = 4,
    scores=None,
    class_names=None,
    annotate: bool = True,
) -> np.ndarray:
    """Write a PNG grid: one row per query, the query in column 0 (blue border) and its top-k
    gallery neighbours in columns 1..k, with a green border when the neighbour shares the
    query's label and a red one otherwise. With `annotate` (default) a legend of the colours
    sits on top and each tile has a caption: "query" or "#rank score", and its class.

    Args:
        path: output PNG path.
        query_images: (N, H, W, 3), (N, H, W, 1) or (N, H, W) arrays, or sequences of such
            per-image arrays (sizes may differ; each is resized to a square tile). uint8 in
            [0, 255] or floats in [0, 1].
        gallery_images: the same, for the gallery.
        query_labels: (Nq,) integer class ids.
        gallery_labels: (Ng,) integer class ids.
        neighbours: (Nq, >= k) int gallery indices, best first. If None, computed by exact search
            of `query_embeddings` ((Nq, D)) against `gallery_embeddings` ((Ng, D)).
        k: neighbours shown per query (default 5).
        exclude: optional (Nq,) int: the gallery index to leave out of each query's neighbours
            (its own copy when the queries come from the gallery), -1 for none. Only used when
            `neighbours` is None.
        metric: "inner_product" (default) or "l2", for the search.
        tile_size: pixels of each image tile (96); see `grid_cell_origin` for the layout.
        border: pixels of each tile's coloured border (4).
        gap: pixels of white space between cells (4).
        scores: optional (Nq, >= k) similarity of each shown neighbour (captions); computed
            with the neighbours when they are searched here.
        class_names: optional sequence (or mapping) label -> the name shown in captions;
            default "class <label>".
        annotate: draw the legend and the captions (default True).

    Returns:
        (Nq, k) int64 array: the neighbours shown.
    """
    Image, ImageDraw = _import_pil()
    k = checks.positive_int(k, "k")
    tile_size = checks.positive_int(tile_size, "tile_size")
    border = checks.positive_int(border, "border")
    gap = int(gap)
    queries = _as_image_list(query_images, "query_images")
    gallery = _as_image_list(gallery_images, "gallery_images")
    q_labels = checks.as_labels(query_labels, len(queries), "query_labels")
    g_labels = checks.as_labels(gallery_labels, len(gallery), "gallery_labels")
    if neighbours is None:
        neighbours, scores = _search(
            query_embeddings, gallery_embeddings, len(queries), len(gallery), k, exclude, metric
        )
    else:
        neighbours = np.asarray(neighbours)
        if not np.issubdtype(neighbours.dtype, np.integer) or neighbours.ndim != 2:
            raise ValueError(
                f"`neighbours` must be a 2-D integer array (Nq, >= k); got {neighbours.dtype} {neighbours.shape}."
            )
        if neighbours.shape[0] != len(queries) or neighbours.shape[1] < k:
            raise ValueError(f"`neighbours` has shape {neighbours.shape}; need ({len(queries)}, >= {k}).")
        neighbours = neighbours[:, :k].astype(np.int64)
        if neighbours.min() < 0 or neighbours.max() >= len(gallery):
            raise ValueError(f"`neighbours` holds indices outside [0, {len(gallery)}) of the gallery.")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[0] != len(queries) or scores.shape[1] < k:
            raise ValueError(f"`scores` has shape {scores.shape}; need ({len(queries)}, >= {k}).")
        scores = scores[:, :k]

    width, height = grid_cell_origin(len(queries), k + 1, tile_size, border, gap, annotate)
    font = _font(FONT_SIZE) if annotate else None
    if annotate:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        width = max(width, _draw_legend(probe, font, gap, 0))
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if annotate:
        _draw_legend(draw, font, gap, gap + 4)
    cell = tile_size + 2 * border
    for row in range(len(queries)):
        cells = [(queries[row], QUERY_COLOUR, "query", q_labels[row])]
        for rank, j in enumerate(neighbours[row], start=1):
            colour = CORRECT_COLOUR if g_labels[j] == q_labels[row] else WRONG_COLOUR
            head = f"#{rank}" if scores is None else f"#{rank}  {scores[row, rank - 1]:.3f}"
            cells.append((gallery[j], colour, head, g_labels[j]))
        for col, (image, colour, head, label) in enumerate(cells):
            x, y = grid_cell_origin(row, col, tile_size, border, gap, annotate)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
            tile = Image.fromarray(image).convert("RGB").resize((tile_size, tile_size))
            canvas.paste(tile, (x + border, y + border))
            if annotate:
                draw.text((x + 1, y + cell + 1), _fit(draw, head, font, cell - 2), fill=TEXT_COLOUR, font=font)
                name = _fit(draw, _class_text(label, class_names), font, cell - 2)
                draw.text((x + 1, y + cell + FONT_SIZE + 4), name, fill=colour if col else TEXT_COLOUR, font=font)
    canvas.save(path, format="PNG")
    return neighbours


def _search(query_embeddings, gallery_embeddings, n_q, n_g, k, exclude, metric):
    if query_embeddings is None or gallery_embeddings is None:
        raise ValueError("Pass either `neighbours` or both `query_embeddings` and `gallery_embeddings`.")
    q = checks.as_embeddings(query_embeddings, "query_embeddings")
    g = checks.as_embeddings(gallery_embeddings, "gallery_embeddings")
    if q.shape[0] != n_q or g.shape[0] != n_g:
        raise ValueError(
            f"query_embeddings/gallery_embeddings have {q.shape[0]}/{g.shape[0]} rows but there are "
            f"{n_q}/{n_g} images; they must match."
        )
    extra = 0 if exclude is None else 1
    if k + extra > n_g:
        raise ValueError(f"k={k} needs at least {k + extra} gallery items; there are {n_g}.")
    found, found_scores = exact_knn(q, g, k + extra, metric=metric)
    if exclude is None:
        return found, found_scores
    exclude = np.asarray(exclude)
    if exclude.shape != (n_q,) or not np.issubdtype(exclude.dtype, np.integer):
        raise ValueError(f"`exclude` must be an int array of shape ({n_q},); got {exclude.dtype} {exclude.shape}.")
    drop = found == exclude[:, None]
    drop[~drop.any(axis=1), -1] = True
    return found[~drop].reshape(n_q, k), np.asarray(found_scores)[~drop].reshape(n_q, k)


def _as_image_list(images, name):
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ValueError(f"`{name}` must be (N, H, W), (N, H, W, 1) or (N, H, W, 3); got shape {images.shape}.")
        images = list(images)
    out = []
    for i, image in enumerate(images):
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)) or arr.size == 0:
            raise ValueError(f"`{name}`[{i}] must be an (H, W), (H, W, 1) or (H, W, 3) image; got shape {arr.shape}.")
        if np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
                raise ValueError(f"`{name}`[{i}] is float: values must be finite and in [0, 1] (or pass uint8).")
            arr = np.round(arr * 255)
        elif arr.dtype != np.uint8 and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"`{name}`[{i}] has integer values outside [0, 255].")
        out.append(arr.astype(np.uint8))
    if not out:
        raise ValueError(f"`{name}` is empty.")
    return out


def save_recall_curve(path, runs, *, title: str = "Recall@K", figsize=(6.0, 4.0), dpi: int = 100) -> None:
    """Plot Recall@K against K (log2 axis) for one or several runs and write a PNG.

    Args:
        path: output PNG path; the image is `figsize * dpi` pixels (600 x 400 by default).
        runs: a metrics dict with `recall@K` keys (as returned by `retrieval_metrics`), or a
            dict mapping run names to such dicts (one line each).
        title: axes title.
        figsize: figure size in inches.
        dpi: resolution.
    """
    Figure, FigureCanvasAgg = _import_matplotlib()
    if not isinstance(runs, dict) or not runs:
        raise ValueError("`runs` must be a non-empty metrics dict or a dict of run name -> metrics dict.")
    if any(_recall_k(key) for key in runs):
        runs = {"": runs}
    figure = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    all_ks = set()
    for name, metrics in runs.items():
        if not isinstance(metrics, dict):
            raise ValueError(f"run {name!r} must be a metrics dict; got {type(metrics).__name__}.")
        points = sorted((_recall_k(key), float(value)) for key, value in metrics.items() if _recall_k(key))
        if not points:
            raise ValueError(f"run {name!r} has no 'recall@K' entries.")
        ks, values = zip(*points, strict=False)
        all_ks.update(ks)
        axes.plot(ks, values, marker="o", label=name or None)
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    axes.minorticks_off()
    axes.set_xlabel("K")
    axes.set_ylabel("Recall@K")
    axes.set_ylim(0.0, 1.02)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if len(runs) > 1 or next(iter(runs)):
        axes.legend(loc="lower right")
    figure.savefig(path, format="png", dpi=dpi)


def _recall_k(key):
    match = re.fullmatch(r"recall@(\d+)", str(key))
    return int(match.group(1)) if match else 0
